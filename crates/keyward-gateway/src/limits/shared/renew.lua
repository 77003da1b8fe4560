-- Renews the leases of the holds a live node has open, and puts back any that
-- are missing (Redis lost them, or the lease ran out while Redis was out of
-- reach): what is still in flight is held again. Slots of dead nodes (leases
-- run out) are removed from the in-flight sets on the way.
--
-- KEYS: pairs: ('f') an in-flight set twice, ('s') the set of its shares'
--   slots twice, or ('b') an account hash and its lease set. ARGV: 1 lease ms, 2 account idle ms, then per pair: kind, hold
--   id, amount held (budget holds).

local lease = tonumber(ARGV[1])
local idle = tonumber(ARGV[2])
local t = server_ms()
for i = 1, #KEYS / 2 do
  local a, b = KEYS[2 * i - 1], KEYS[2 * i]
  local kind, hold = ARGV[3 * i], ARGV[3 * i + 1]
  if kind == 'f' then
    redis.call('ZREMRANGEBYSCORE', a, '-inf', t)
    redis.call('ZADD', a, t + lease, hold)
    redis.call('PEXPIRE', a, 2 * lease)
  elseif kind == 's' then
    -- A share's slots (shares.rs): '<hold>/s~<slots>' in '<in-flight set>:s'.
    redis.call('ZREMRANGEBYSCORE', a, '-inf', t)
    redis.call('ZADD', a, t + lease, member(hold, ARGV[3 * i + 2]))
    redis.call('PEXPIRE', a, 2 * lease)
  elseif redis.call('EXISTS', a) == 1 then
    -- An account that is absent is read from storage at its next charge;
    -- the hold is put back at the renewal after that.
    local amount = ARGV[3 * i + 2]
    if redis.call('ZADD', b, t + lease, member(hold, amount)) == 1 then
      redis.call('HINCRBY', a, 'reserved', tonumber(amount))
    end
    redis.call('PEXPIRE', a, idle)
    redis.call('PEXPIRE', b, idle)
  end
end
return 1
