-- Ends a batch of requests in one call: gives back what their charges took
-- from the rate limits (RateLimiter::release of LocalCounters) and ends their
-- budget holds (BudgetLedger::settle and ::release), in the order given.
--
-- A rate op gives back the in-flight slot, and everything when the request
-- was never sent or else the difference between estimated and actual tokens.
-- A budget op removes the hold if it is still there (its lease may have run
-- out and been purged, which gave it back already) and, when settling, adds
-- the actual cost to the spend. An account this Redis does not hold is left
-- absent, not created with a partial spend: the next charge finds it
-- unloaded and it is read from storage, which has this request's usage.
--
-- ARGV: 1 account idle ms, 2 lease ms, then the ops, each with its keys in KEYS in turn:
--   'r', n subjects, slot hold id ('' none), estimated tokens, actual tokens
--     ('' never sent), then per subject '1' when it counts requests in
--     flight; keys: per subject its bucket hash and its in-flight set.
--   'b', n accounts, hold id ('' none), amount held, actual cost ('' to
--     release only); keys: per account its hash and its lease set.
--   'g', share name, slots registered, slots to register now, requests,
--     tokens, requests a minute (-1: none), tokens a minute (-1: none): gives
--     back what is left of a share (shared.rs, "Shares"), the levels kept
--     within the limits; keys: the bucket hash and the in-flight set.
--   's', slab member, amount registered, amount to register now, spend to
--     add: brings a budget share up to date; keys: the account hash and its
--     lease set.
-- Returns per budget op, per account, the spend before and after ('' ''
--   when absent or only released); per 's' op, the spend before and after
--   ('' '' when absent) and '1' when the slab was still held, else '0'.

local idle = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[2])
local a, k = 3, 1
local out = {}

local function rate()
  local n, hold, est, actual = tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 4]
  for i = 1, n do
    local bucket, flight = KEYS[k], KEYS[k + 1]
    k = k + 2
    if hold ~= '' and ARGV[a + 4 + i] == '1' then
      redis.call('ZREM', flight, hold)
    end
    -- A bucket that expired is full again: nothing to give back.
    if actual == '' then
      local f = redis.call('HMGET', bucket, 'rl', 'tl')
      if f[1] and f[2] then
        redis.call('HSET', bucket, 'rl', fmt(tonumber(f[1]) + 1), 'tl', fmt(tonumber(f[2]) + est))
      elseif f[1] then
        redis.call('HSET', bucket, 'rl', fmt(tonumber(f[1]) + 1))
      elseif f[2] then
        redis.call('HSET', bucket, 'tl', fmt(tonumber(f[2]) + est))
      end
    elseif est ~= tonumber(actual) then
      local tl = redis.call('HGET', bucket, 'tl')
      if tl then
        redis.call('HSET', bucket, 'tl', fmt(tonumber(tl) + (est - tonumber(actual))))
      end
    end
  end
  a = a + 5 + n
end

local function budget()
  local n, hold, held, actual = tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local m = hold ~= '' and member(hold, held)
  for _ = 1, n do
    local acct, leases = KEYS[k], KEYS[k + 1]
    k = k + 2
    local before, after = '', ''
    if redis.call('EXISTS', acct) == 1 then
      local give_back = 0
      if m and redis.call('ZREM', leases, m) == 1 then
        give_back = tonumber(held)
      end
      if actual ~= '' then
        local cost = math.max(tonumber(actual), 0)
        if give_back ~= 0 then
          redis.call('HINCRBY', acct, 'reserved', 0 - give_back)
        end
        local spent = redis.call('HINCRBY', acct, 'spent', cost)
        before, after = fmt(spent - cost), fmt(spent)
        redis.call('PEXPIRE', acct, idle)
      elseif give_back ~= 0 then
        redis.call('HINCRBY', acct, 'reserved', 0 - give_back)
      end
    end
    out[#out + 1] = before
    out[#out + 1] = after
  end
  a = a + 5
end

local function give_back()
  local name, was, now = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local req, tok = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local rpm, tpm = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
  local bucket, flight = KEYS[k], KEYS[k + 1]
  k = k + 2
  local slots = flight .. ':s'
  if tonumber(was) > 0 and redis.call('ZREM', slots, member(name, was)) == 1 and now > 0 then
    redis.call('ZADD', slots, server_ms() + lease_ms, member(name, now))
  end
  -- A bucket that expired is full again: nothing to give back.
  local f = redis.call('HMGET', bucket, 'rl', 'tl')
  if f[1] and rpm >= 0 and req > 0 then
    redis.call('HSET', bucket, 'rl', fmt(math.min(tonumber(f[1]) + req, rpm)))
  end
  if f[2] and tpm >= 0 and tok > 0 then
    redis.call('HSET', bucket, 'tl', fmt(math.min(tonumber(f[2]) + tok, tpm)))
  end
  a = a + 8
end

local function slab()
  local name, was, now, spend = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local acct, leases = KEYS[k], KEYS[k + 1]
  k = k + 2
  local before, after, held = '', '', '0'
  if redis.call('EXISTS', acct) == 1 then
    if redis.call('ZREM', leases, member(name, was)) == 1 then
      held = '1'
      if now > 0 then
        redis.call('ZADD', leases, server_ms() + lease_ms, member(name, now))
      end
      local less = tonumber(was) - now
      if less ~= 0 then
        redis.call('HINCRBY', acct, 'reserved', 0 - less)
      end
    end
    if spend ~= 0 then
      local spent = redis.call('HINCRBY', acct, 'spent', spend)
      before, after = fmt(spent - spend), fmt(spent)
      redis.call('PEXPIRE', acct, idle)
    end
  end
  out[#out + 1] = before
  out[#out + 1] = after
  out[#out + 1] = held
  a = a + 5
end

while a <= #ARGV do
  local op = ARGV[a]
  if op == 'r' then
    rate()
  elseif op == 'b' then
    budget()
  elseif op == 'g' then
    give_back()
  else
    slab()
  end
end
return out
