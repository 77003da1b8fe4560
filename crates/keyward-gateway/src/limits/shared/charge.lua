-- Checks every rate limit and budget of one request and, only if all pass,
-- charges them all (RateLimiter::check/charge and Accounts::check/charge of
-- LocalCounters, in the same order, with the same arithmetic).
--
-- KEYS: per subject its bucket hash and its in-flight set (the slots of
--   shares are in '<in-flight set>:s', members '<hold>/s~<slots>': not
--   Redis Cluster); then per account
--   its hash (spent, reserved) and its lease set (members hold~amount).
-- ARGV: 1 now (caller's ms: the buckets' clock), 2 hold id, 3 lease ms,
--   4 account idle ms, 5 subjects, 6 estimated tokens, 7 accounts,
--   8 mode ('fixed': 9 = amount to hold; 'auto': 9 = a, 10 = b, 11 = p,
--   12 = the most output tokens, 13 = amount to hold for that many; see
--   shared.rs), then per subject rpm, tpm, max in flight (-1: none),
--   then per account its budget's amount, then '1' when the caller takes
--   shares.
-- Returns {'rate', subject, requests level, tokens level, in flight},
--   {'unloaded', account...}, {'exhausted', remaining...} or
--   {'ok', held, per subject: requests level, tokens level; remaining...;
--   when asked for shares, per subject: requests, tokens, slots granted,
--   then per account: amount granted (all 0 when none is)}.

local now = tonumber(ARGV[1])
local hold = ARGV[2]
local lease = tonumber(ARGV[3])
local idle = tonumber(ARGV[4])
local ns = tonumber(ARGV[5])
local est = math.max(tonumber(ARGV[6]), 0)
local nb = tonumber(ARGV[7])
local mode = ARGV[8]
local limits_at = 13
local amounts_at = limits_at + 3 * ns
local t = server_ms()

local function refill(level, at, cap)
  local rate = cap / 60000
  local elapsed = math.max(now - at, 0)
  return math.min(level + elapsed * rate, cap), math.max(now, at)
end

-- Writes a subject's buckets back. Like LocalCounters, a check keeps the
-- refill (and a new bucket) even when the request is refused, so both
-- implementations hold the very same levels.
local function save(bucket, s)
  local lowest = 0
  if s.rl and s.tl then
    redis.call('HSET', bucket, 'rl', fmt(s.rl), 'ra', fmt(s.ra), 'tl', fmt(s.tl), 'ta', fmt(s.ta))
    lowest = math.min(lowest, s.rl, s.tl)
  elseif s.rl then
    redis.call('HSET', bucket, 'rl', fmt(s.rl), 'ra', fmt(s.ra))
    lowest = math.min(lowest, s.rl)
  elseif s.tl then
    redis.call('HSET', bucket, 'tl', fmt(s.tl), 'ta', fmt(s.ta))
    lowest = math.min(lowest, s.tl)
  end
  if s.rl or s.tl then
    -- Full again, whatever the capacity (at least 1 a minute), within
    -- 1 - lowest minutes; a minute more for clocks that differ, and at most
    -- 30 days (a bucket forgotten comes back full).
    redis.call('PEXPIRE', bucket, math.min(math.ceil(60000 * (2 - lowest)), 2592000000))
  end
end

local subjects = {}
local function save_all(n)
  for i = 1, n do
    save(KEYS[2 * i - 1], subjects[i])
  end
end

-- Rate limits: subject by subject, the first limit reached refuses.
for i = 1, ns do
  local bucket, flight = KEYS[2 * i - 1], KEYS[2 * i]
  local rpm = tonumber(ARGV[limits_at + 3 * i - 2])
  local tpm = tonumber(ARGV[limits_at + 3 * i - 1])
  local maxc = tonumber(ARGV[limits_at + 3 * i])
  local f = redis.call('HMGET', bucket, 'rl', 'ra', 'tl', 'ta')
  local s = { in_flight = 0, maxc = maxc }
  if f[1] then s.rl, s.ra = tonumber(f[1]), tonumber(f[2]) end
  if f[3] then s.tl, s.ta = tonumber(f[3]), tonumber(f[4]) end
  if rpm >= 0 then
    if not s.rl then s.rl, s.ra = rpm, now end
    s.rl, s.ra = refill(s.rl, s.ra, rpm)
  end
  if tpm >= 0 then
    if not s.tl then s.tl, s.ta = tpm, now end
    s.tl, s.ta = refill(s.tl, s.ta, tpm)
  end
  if maxc >= 0 then
    -- Slots whose lease ran out are not counted (renewals remove them).
    s.in_flight = redis.call('ZCOUNT', flight, '(' .. fmt(t), '+inf') + shared_slots(flight, t)
  end
  subjects[i] = s
  if (rpm >= 0 and s.rl < 1)
    or (tpm >= 0 and s.tl < math.min(est, tpm))
    or (maxc >= 0 and s.in_flight >= maxc) then
    save_all(i)
    return { 'rate', fmt(i), opt(s.rl), opt(s.tl), fmt(s.in_flight) }
  end
end

-- Accounts this Redis does not hold (a loaded account always has its
-- spend): the caller loads them from storage.
local spent_reserved = {}
local missing = {}
for j = 1, nb do
  local a = redis.call('HMGET', KEYS[2 * ns + 2 * j - 1], 'spent', 'reserved')
  if not a[1] then
    missing[#missing + 1] = fmt(j)
  end
  spent_reserved[j] = a
end
if #missing > 0 then
  save_all(ns)
  return { 'unloaded', unpack(missing) }
end

-- Budgets: what remains of each, and whether the bound fits all of them.
local remaining = {}
local function measure()
  local tightest = nil
  for j = 1, nb do
    local a = spent_reserved[j]
    local rem = tonumber(ARGV[amounts_at + j]) - tonumber(a[1]) - tonumber(a[2] or '0')
    remaining[j] = rem
    if not tightest or rem < tightest then tightest = rem end
  end
  return tightest
end

-- How much to hold, or nil when the bound does not fit every budget.
local function decide(tightest)
  local held
  if mode == 'fixed' then
    held = tonumber(ARGV[9])
  else
    -- The request set no output cap: it may use what the tightest budget
    -- can pay for, floor((rem * 1e6 - input) / p) tokens, where
    -- input = a * 1e6 - b. Split so that every product stays exact.
    local a, b, p = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
    local r = tightest - a
    local q, s, m = 0, 0, 0 -- affordable = q * 1e6 + s
    if r >= 0 then
      q = idiv(r, p)
      local x = (r - q * p) * 1000000 + b
      s = idiv(x, p)
      m = x - s * p
    end
    if q * 1000000 + s >= tonumber(ARGV[12]) then
      held = tonumber(ARGV[13])
    elseif q == 0 and s == 0 then
      return nil -- a cap of zero tokens
    else
      -- input + affordable * p = rem * 1e6 - m, rounded up to micro-dollars
      held = tightest - math.floor(m / 1000000)
    end
  end
  for j = 1, nb do
    if held > remaining[j] then return nil end
  end
  return held
end

local held = 0
if nb > 0 then
  held = decide(measure())
  if not held then
    -- Holds whose lease ran out only matter when they would refuse: give
    -- them back, then decide again.
    local purged = false
    for j = 1, nb do
      local acct, leases = KEYS[2 * ns + 2 * j - 1], KEYS[2 * ns + 2 * j]
      if purge(acct, leases, t) then
        purged = true
        spent_reserved[j] = redis.call('HMGET', acct, 'spent', 'reserved')
      end
    end
    if purged then held = decide(measure()) end
  end
  if not held then
    save_all(ns)
    local out = { 'exhausted' }
    for k = 1, nb do out[k + 1] = fmt(remaining[k]) end
    return out
  end
end

-- Everything fits: charge it all.
for i = 1, ns do
  local s = subjects[i]
  if s.rl then s.rl = s.rl - 1 end
  if s.tl then s.tl = s.tl - est end
end

-- Shares (shared.rs, "Shares"): when the caller takes them and every limit
-- and budget is far from its end (a share is at most 1/64 of what is left),
-- a part of each for the node to charge by itself, or nothing at all.
local DIV, MOST = 64, 1024
local function grants()
  local g = {}
  local per = math.max(est, 1)
  for i = 1, ns do
    local s = subjects[i]
    local r, tk, f = 0, 0, 0
    if s.rl then
      r = math.min(MOST, math.floor(s.rl / DIV))
      if r < 4 then return nil end
    end
    if s.tl then
      tk = math.min(MOST * per, math.floor(s.tl / DIV))
      if tk < 4 * per then return nil end
    end
    if s.maxc >= 0 then
      f = math.min(MOST, math.floor((s.maxc - s.in_flight - 1) / DIV))
      if f < 2 then return nil end
    end
    g[i] = { r, tk, f }
  end
  for j = 1, nb do
    local b = math.min(MOST * held, math.floor((remaining[j] - held) / DIV))
    if held <= 0 or b < 4 * held then return nil end
    g[ns + j] = b
  end
  return g
end
local g = nil
local shares = ARGV[amounts_at + nb + 1] == '1'
if shares then g = grants() end

local out = { 'ok', fmt(held) }
for i = 1, ns do
  local s = subjects[i]
  out[#out + 1] = opt(s.rl)
  out[#out + 1] = opt(s.tl)
  if g then
    if s.rl then s.rl = s.rl - g[i][1] end
    if s.tl then s.tl = s.tl - g[i][2] end
  end
  save(KEYS[2 * i - 1], s)
  if s.maxc >= 0 then
    local flight = KEYS[2 * i]
    redis.call('ZADD', flight, t + lease, hold)
    redis.call('PEXPIRE', flight, 2 * lease)
    if g and g[i][3] > 0 then
      redis.call('ZADD', flight .. ':s', t + lease, member(hold .. '/s', g[i][3]))
      redis.call('PEXPIRE', flight .. ':s', 2 * lease)
    end
  end
end
-- The account's expiry is renewed by settlements and lease renewals.
local m = member(hold, held)
for j = 1, nb do
  local acct, leases = KEYS[2 * ns + 2 * j - 1], KEYS[2 * ns + 2 * j]
  if g then
    redis.call('HINCRBY', acct, 'reserved', held + g[ns + j])
    redis.call('ZADD', leases, t + lease, m, t + lease, member(hold .. '/b', g[ns + j]))
  else
    redis.call('HINCRBY', acct, 'reserved', held)
    redis.call('ZADD', leases, t + lease, m)
  end
  redis.call('PEXPIRE', leases, idle)
  out[#out + 1] = fmt(remaining[j])
end
if shares then
  for i = 1, ns do
    for n = 1, 3 do out[#out + 1] = g and fmt(g[i][n]) or '0' end
  end
  for j = 1, nb do out[#out + 1] = g and fmt(g[ns + j]) or '0' end
end
return out
