-- Loads an account with the spend read from storage unless it is there
-- already (another request or node loaded it): set if absent. Holds left
-- from an account that expired or was lost went with it.
--
-- KEYS: the account's hash and its lease set. ARGV: 1 spend, 2 idle ms.

if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
