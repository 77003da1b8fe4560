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

-- Gives back the budget holds whose lease ran out: their node stopped
-- renewing them (it died, or lost Redis for longer than a lease).
local function purge(acct, leases, now)
  local gone = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  for _, id in ipairs(gone) do
    local amount = redis.call('HGET', acct, 'h:' .. id)
    if amount then
      -- 0 - x, not -x: Redis reads "-0" as no integer.
      redis.call('HINCRBY', acct, 'reserved', 0 - tonumber(amount))
      redis.call('HDEL', acct, 'h:' .. id)
    end
  end
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  end
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
