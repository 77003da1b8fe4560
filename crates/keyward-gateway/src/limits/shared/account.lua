-- An account's spend and holds, after giving back the holds whose lease ran
-- out. KEYS: the account's hash and its lease set. Returns {} when absent.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
purge(KEYS[1], KEYS[2], server_ms())
local a = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
return { a[1] or '0', a[2] or '0' }
