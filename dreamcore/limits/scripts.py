"""The two Lua scripts behind limiter.py: every counting limit is checked and consumed in one step.

Redis runs a script alone, start to end, so ten bot processes (or one process's threads) asking at once
see each other's effects in some order and never both squeeze through the last free slot.

Time: ARGV now is the caller's clock (seconds, a float; the tests drive it) or "" for the Redis server's
TIME, which every bot host then shares. All scores and bounds are written with %.17g so a double survives
the trip to and from Redis exactly.

Quotas count units of cost (dreamcore.cost: one standard image is one unit, so the image-count limits keep
their meaning for a standard dream; HINCRBYFLOAT, so counters an older release wrote in whole images read
on). They are bucket counters, so a submit costs the same for a guild that made 20,000 images today as for
one that made none: a hash per (window, member or guild) maps a bucket number (floor(t / width)) to the
units accepted in it, 1-minute buckets for the hour window and 10-minute buckets for the day window,
at most 61 and 145 live fields. A bucket b counts until (b + 1) * width + span, the end of its bucket plus
the window: never earlier than any of its images would in an exact rolling window, so no span-long window
ever holds more than the quota; the price is a wait up to one bucket (1 min / 10 min) longer than exact.
Active sets hold job ids scored by acceptance time.
"""

HOUR_BUCKET_S = 60  # bucket width of the hour window's counters
DAY_BUCKET_S = 600  # and of the day window's


def _widths(script: str) -> str:
    return script.replace("@HW@", str(HOUR_BUCKET_S)).replace("@DW@", str(DAY_BUCKET_S))


# KEYS: 1 cooldown, 2 user hour buckets, 3 user day buckets, 4 guild hour buckets, 5 guild day buckets,
#       6 user active, 7 guild active, 8 job record, 9 user usage zset and 10 guild usage zset of an older
#       release (folded into the buckets once, then deleted)
# ARGV: 1 now ("" = server TIME), 2 job_id, 3 units (0: a relax dream, which no quota counts), 4 exempt ("1"/"0": the member's own limits are
#       skipped, the guild's still hold), 5 cooldown_s,
#       6 user_max_active, 7 user_images_hour, 8 user_images_day, 9 guild_images_hour,
#       10 guild_images_day, 11 guild_max_queued, 12 active_ttl_s (an active job older than this is
#       taken as lost by a crashed bot), 13 slack_s (added to every TTL), 14 user_id, 15 cooldown key TTL
# Returns {status, kind, used, limit, retry, now}: status "ok" (consumed), "dup" (this job id was already
# accepted; nothing consumed again) or "no" (refused, nothing consumed); retry "" = unknown (a job must
# finish first), "inf" = never (the request alone is larger than the quota), else seconds.
ACQUIRE_LUA = r"""
local function fmt(x) return string.format('%.17g', x) end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local HOUR, DAY, INF = 3600, 86400, math.huge
local HW, DW = @HW@, @DW@
local job_id = ARGV[2]
local units = tonumber(ARGV[3])
local EPS = 1e-6
local exempt = ARGV[4] == '1'
local cooldown = tonumber(ARGV[5])
local active_ttl = tonumber(ARGV[12])
local slack = tonumber(ARGV[13])
local function bucket(t, width) return string.format('%d', math.floor(t / width)) end

if redis.call('EXISTS', KEYS[8]) == 1 then
  return {'dup', '', '', '', '', fmt(now)}
end

-- An older release kept one zset entry per job; fold what a window can still see into the buckets, once.
local function migrate(old, hkey, dkey)
  if redis.call('EXISTS', old) == 0 then return end
  local raw = redis.call('ZRANGEBYSCORE', old, '(' .. fmt(now - DAY), '+inf', 'WITHSCORES')
  for i = 1, #raw, 2 do
    local n = tonumber(string.match(raw[i], '^(%d+):')) or 0
    local t = tonumber(raw[i + 1])
    if (math.floor(t / HW) + 1) * HW + HOUR > now then redis.call('HINCRBYFLOAT', hkey, bucket(t, HW), n) end
    redis.call('HINCRBYFLOAT', dkey, bucket(t, DW), n)
  end
  redis.call('DEL', old)
end
migrate(KEYS[9], KEYS[2], KEYS[3])
migrate(KEYS[10], KEYS[4], KEYS[5])

-- The buckets a window still sees, soonest to expire first, as {expires_at, images}; the dead ones go.
local function live(key, width, span)
  local raw = redis.call('HGETALL', key)
  local out, dead = {}, {}
  for i = 1, #raw, 2 do
    local e = (tonumber(raw[i]) + 1) * width + span
    local n = tonumber(raw[i + 1])
    if e > now and n > EPS then out[#out + 1] = {e, n} else dead[#dead + 1] = raw[i] end
  end
  if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  table.sort(out, function(a, b) return a[1] < b[1] end)
  return out
end
-- Every member's buckets are pruned, exempt ones too: their work still counts for the guild.
local windows = {
  {'user_hour', live(KEYS[2], HW, HOUR), tonumber(ARGV[7]), true},
  {'user_day', live(KEYS[3], DW, DAY), tonumber(ARGV[8]), true},
  {'guild_hour', live(KEYS[4], HW, HOUR), tonumber(ARGV[9]), false},
  {'guild_day', live(KEYS[5], DW, DAY), tonumber(ARGV[10]), false},
}
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', fmt(now - active_ttl))
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', fmt(now - active_ttl))

-- The refusal reported is the one that lasts longest: never > the longest timed wait > "a job must
-- finish first"; on a tie, the first checked.
local best_kind, best_rank, best_used, best_limit, best_retry = nil, -2, '', '', ''
local function consider(kind, retry, used, limit)
  local rank = -1
  if retry then rank = retry end
  if rank > best_rank then
    best_kind, best_rank, best_used, best_limit = kind, rank, fmt(used), tostring(limit)
    if retry then best_retry = fmt(retry) else best_retry = '' end
  end
end

-- Returns nil when this request fits, else (seconds until enough has expired, units used).
local function quota(items, limit)
  local used = 0
  for _, it in ipairs(items) do used = used + it[2] end
  if used + units <= limit + EPS then return nil, used end
  if units > limit + EPS then return INF, used end
  local need, freed = used + units - limit - EPS, 0
  for _, it in ipairs(items) do
    freed = freed + it[2]
    if freed >= need then return it[1] - now, used end
  end
  return INF, used
end

if not exempt then
  local at = tonumber(redis.call('GET', KEYS[1]) or '')
  if cooldown > 0 and at and now < at + cooldown then
    consider('cooldown', at + cooldown - now, 0, cooldown)
  end
  local active = redis.call('ZCARD', KEYS[6])
  local max_active = tonumber(ARGV[6])
  if active >= max_active then consider('user_active', nil, active, max_active) end
end

for _, w in ipairs(windows) do
  if units > 0 and not (exempt and w[4]) then
    local retry, used = quota(w[2], w[3])
    if retry then consider(w[1], retry, used, w[3]) end
  end
end

local queued = redis.call('ZCARD', KEYS[7])
local max_queued = tonumber(ARGV[11])
if queued >= max_queued then consider('guild_queued', nil, queued, max_queued) end

if best_kind then
  return {'no', best_kind, best_used, best_limit, best_retry, fmt(now)}
end

-- Everything passed: consume it all.
local t = fmt(now)
local hb, db = bucket(now, HW), bucket(now, DW)
if units > 0 then
  redis.call('HINCRBYFLOAT', KEYS[2], hb, units)
  redis.call('HINCRBYFLOAT', KEYS[3], db, units)
  redis.call('HINCRBYFLOAT', KEYS[4], hb, units)
  redis.call('HINCRBYFLOAT', KEYS[5], db, units)
end
redis.call('ZADD', KEYS[6], t, job_id)
redis.call('ZADD', KEYS[7], t, job_id)
redis.call('HSET', KEYS[8], 'user', ARGV[14], 'images', ARGV[3], 'at', t, 'exempt', ARGV[4])  -- 'images': units
local keep_hour, keep_day = HOUR + HW + slack, DAY + DW + slack
redis.call('EXPIRE', KEYS[2], keep_hour)
redis.call('EXPIRE', KEYS[3], keep_day)
redis.call('EXPIRE', KEYS[4], keep_hour)
redis.call('EXPIRE', KEYS[5], keep_day)
redis.call('EXPIRE', KEYS[8], keep_day)
redis.call('EXPIRE', KEYS[6], math.ceil(active_ttl + slack))
redis.call('EXPIRE', KEYS[7], math.ceil(active_ttl + slack))
if not exempt and cooldown > 0 then
  redis.call('SET', KEYS[1], t, 'EX', tonumber(ARGV[15]))
end
return {'ok', '', '', '', '', t}
"""

# KEYS: 1 job record, 2 user hour buckets, 3 user day buckets, 4 guild hour buckets, 5 guild day buckets,
#       6 user active, 7 guild active, 8 / 9 an older release's user / guild usage zset
# ARGV: 1 job_id, 2 refund ("1"/"0"), 3 user_id, 4 settle ("" or the units the job really cost: the
#       difference from what was charged goes to or comes back from the buckets it was charged in)
# Returns 0: unknown job (never accepted, already released, or long expired): nothing done;
# -1: the job belongs to another user: nothing done; 1: released; 2: released and its images refunded;
# 3: released and its charge settled to what it cost.
RELEASE_LUA = r"""
local rec = redis.call('HMGET', KEYS[1], 'images', 'user', 'at')
if not rec[1] then return 0 end
if rec[2] ~= ARGV[3] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
local units, at = tonumber(rec[1]), tonumber(rec[3]) or 0
-- A bucket already gone (its window moved past it) has nothing left to refund or settle.
local function adjust(key, width, delta)
  local field = string.format('%d', math.floor(at / width))
  local n = tonumber(redis.call('HGET', key, field) or '')
  if not n then return end
  if n + delta > 1e-6 then redis.call('HINCRBYFLOAT', key, field, delta) else redis.call('HDEL', key, field) end
end
local function adjust_all(delta)
  adjust(KEYS[2], @HW@, delta)
  adjust(KEYS[3], @DW@, delta)
  adjust(KEYS[4], @HW@, delta)
  adjust(KEYS[5], @DW@, delta)
end
if ARGV[2] == '1' then
  adjust_all(-units)
  local member = rec[1] .. ':' .. ARGV[1]
  redis.call('ZREM', KEYS[8], member)
  redis.call('ZREM', KEYS[9], member)
  return 2
end
local cost = tonumber(ARGV[4] or '')
-- A job charged nothing (relax) is settled at nothing.
if cost and units > 0 and math.abs(cost - units) > 1e-6 then
  adjust_all(cost - units)
  return 3
end
return 1
"""

ACQUIRE_LUA = _widths(ACQUIRE_LUA)
RELEASE_LUA = _widths(RELEASE_LUA)
