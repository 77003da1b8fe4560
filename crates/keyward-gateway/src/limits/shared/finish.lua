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
-- ARGV: 1 account idle ms, then the ops, each with its keys in KEYS in turn:
--   'r', n subjects, slot hold id ('' none), estimated tokens, actual tokens
--     ('' never sent), then per subject '1' when it counts requests in
--     flight; keys: per subject its bucket hash and its in-flight set.
--   'b', n accounts, hold id ('' none), amount held, actual cost ('' to
--     release only); keys: per account its hash and its lease set.
-- Returns per budget op, per account, the spend before and after ('' ''
--   when absent or only released).

local idle = tonumber(ARGV[1])
local a, k = 2, 1
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

while a <= #ARGV do
  if ARGV[a] == 'r' then rate() else budget() end
end
return out
