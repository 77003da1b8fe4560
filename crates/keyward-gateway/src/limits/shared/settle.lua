-- Ends a budget hold (BudgetLedger::settle and ::release of LocalCounters):
-- removes the hold if it is still there (its lease may have run out and been
-- purged, which gave it back already) and, when settling, adds the actual
-- cost to the spend. An account this Redis does not hold is left absent, not
-- created with a partial spend: the next charge finds it unloaded and it is
-- read from storage, which has this request's usage.
--
-- KEYS: per account its hash and its lease set.
-- ARGV: 1 hold id ('' when none), 2 actual cost ('' to release only),
--   3 account idle ms.
-- Returns per account the spend before and after ('' '' when absent).

local hold = ARGV[1]
local actual = ARGV[2]
local idle = tonumber(ARGV[3])
local out = {}
for j = 1, #KEYS / 2 do
  local acct, leases = KEYS[2 * j - 1], KEYS[2 * j]
  if redis.call('EXISTS', acct) == 1 then
    if hold ~= '' and redis.call('ZREM', leases, hold) == 1 then
      local amount = redis.call('HGET', acct, 'h:' .. hold)
      if amount then
        redis.call('HINCRBY', acct, 'reserved', 0 - tonumber(amount))
        redis.call('HDEL', acct, 'h:' .. hold)
      end
    end
    if actual ~= '' then
      local cost = math.max(tonumber(actual), 0)
      local after = redis.call('HINCRBY', acct, 'spent', cost)
      out[#out + 1] = fmt(after - cost)
      out[#out + 1] = fmt(after)
      redis.call('PEXPIRE', acct, idle)
      redis.call('PEXPIRE', leases, idle)
    else
      out[#out + 1] = ''
      out[#out + 1] = ''
    end
  else
    out[#out + 1] = ''
    out[#out + 1] = ''
  end
end
return out
