-- Shared by every script of keyward's shared counters (prepended to each).
--
-- Lease times are Redis server time, so every node judges a lease on one
-- clock. Numbers are Lua doubles: integers are exact below 2^53, and the
-- caller keeps every amount below 2^52 (see shared.rs).

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A number as text that reads back as the same double.
local function fmt(x)
  return string.format('%.17g', x)
end

local function opt(x)
  if x then return fmt(x) end
  return ''
end

-- A budget hold in an account's lease set: its id and the amount it holds,
-- so that ending or purging it needs no other field.
local function member(hold, amount)
  return hold .. '~' .. fmt(tonumber(amount))
end

local function amount_of(m)
  return tonumber(string.match(m, '~(%-?[%d.e+]+)$')) or 0
end

-- Gives back the budget holds whose lease ran out: their node stopped
-- renewing them (it died, or lost Redis for longer than a lease). Returns
-- whether there were any.
local function purge(acct, leases, now)
  local gone = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  if #gone == 0 then return false end
  local total = 0
  for _, m in ipairs(gone) do
    total = total + amount_of(m)
  end
  -- 0 - x, not -x: Redis reads "-0" as no integer.
  redis.call('HINCRBY', acct, 'reserved', 0 - total)
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  return true
end

-- floor(x / p) for integers x >= 0 and p > 0 whose products stay below 2^53.
local function idiv(x, p)
  local q = math.floor(x / p)
  if q * p > x then
    q = q - 1
  elseif (q + 1) * p <= x then
    q = q + 1
  end
  return q
end

-- Slots held as shares of a subject's in-flight limit (shares.rs): members
-- '<hold>/s~<slots>' of '<in-flight set>:s', scored by their lease's end;
-- those whose lease ran out are not counted.
local function shared_slots(flight, now)
  local n = 0
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', flight .. ':s', '(' .. fmt(now), '+inf')) do
    n = n + amount_of(m)
  end
  return n
end
