-- Gives back what a charge took from the rate limits (RateLimiter::release
-- of LocalCounters): the in-flight slot, and everything when the request was
-- never sent or the difference between estimated and actual tokens.
--
-- KEYS: per subject its bucket hash and its in-flight set.
-- ARGV: 1 hold id ('' when none), 2 estimated tokens, 3 actual tokens ('':
--   never sent), then per subject '1' when it counts requests in flight.

local hold = ARGV[1]
local est = tonumber(ARGV[2])
local actual = ARGV[3]
for i = 1, #KEYS / 2 do
  local bucket, flight = KEYS[2 * i - 1], KEYS[2 * i]
  if hold ~= '' and ARGV[3 + i] == '1' then
    redis.call('ZREM', flight, hold)
  end
  -- A bucket that expired is full again: nothing to give back.
  local f = redis.call('HMGET', bucket, 'rl', 'tl')
  if actual == '' then
    if f[1] then redis.call('HSET', bucket, 'rl', fmt(tonumber(f[1]) + 1)) end
    if f[2] then redis.call('HSET', bucket, 'tl', fmt(tonumber(f[2]) + est)) end
  elseif f[2] then
    redis.call('HSET', bucket, 'tl', fmt(tonumber(f[2]) + (est - tonumber(actual))))
  end
end
return 1
