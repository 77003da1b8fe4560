-- Raises an account's spend to what storage holds when Redis holds less (it
-- lost settlements: a failover to a replica behind, settlements dropped in a
-- long outage); never lowers it, since storage lags by the usage that nodes
-- have not written yet. An account Redis does not hold is left absent.
--
-- KEYS: the account's hash. ARGV: 1 the spend in storage.
-- Returns the spend before when it was raised, else ''.

local stored = tonumber(ARGV[1])
local spent = redis.call('HGET', KEYS[1], 'spent')
if spent and tonumber(spent) < stored then
  redis.call('HSET', KEYS[1], 'spent', fmt(stored))
  return spent
end
return ''
