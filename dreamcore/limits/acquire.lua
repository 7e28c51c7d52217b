-- Limiter.acquire's step (limiter.py declares K, A and C): every counting limit checked and, if all pass,
-- consumed, at once. Redis runs a script alone, start to end, so ten bot processes (or one process's
-- threads) asking at once see each other's effects in some order and never both squeeze through the last
-- free slot. How the quotas count: buckets.py.
--
-- K: cooldown (string: when the member's last dream was accepted), user_hour, user_day, guild_hour,
--    guild_day (bucket hashes), user_active, guild_active (zsets: job id scored by acceptance time), job (the
--    job's record), old_user_usage, old_guild_usage (see the Compatibility note below)
-- A: now (seconds; absent: the Redis server's TIME), job_id, user_id (a string), units (0: a relax dream,
--    which no quota counts), exempt (the member's own limits are skipped, the guild's still hold), the
--    limits cooldown_s, user_max_active, user_images_hour, user_images_day, guild_images_hour,
--    guild_images_day, guild_max_queued, and active_ttl_s (an active job older than this is taken as lost
--    by a crashed bot)
-- Returns {status, kind, used, limit, retry, now}: status "ok" (consumed), "dup" (this job id was already
-- accepted; nothing consumed again) or "no" (refused, nothing consumed); retry "" = unknown (a job must
-- finish first), "inf" = never (the request alone is larger than the quota), else seconds.

local function fmt(x) return string.format('%.17g', x) end
local now = A.now
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local HOUR, DAY, INF = C.HOUR, C.DAY, math.huge
local HW, DW = C.HOUR_BUCKET_S, C.DAY_BUCKET_S
local EPS = C.UNITS_EPS
local units = A.units
local exempt = A.exempt
local function bucket(t, width) return string.format(C.BUCKET_FIELD, math.floor(t / width)) end
local function counts_until(b, width, span) return (b + 1) * width + span end

if redis.call('EXISTS', K.job) == 1 then
  return {'dup', '', '', '', '', fmt(now)}
end

-- Compatibility: an older release's usage zsets (one "<images>:<job id>" member per dream) folded into the
-- buckets, what a window can still see, once, then deleted; goes when every deployment is over 24 h past
-- its upgrade to bucket counters (74a9068).
local function migrate(old, hkey, dkey)
  if redis.call('EXISTS', old) == 0 then return end
  local raw = redis.call('ZRANGEBYSCORE', old, '(' .. fmt(now - DAY), '+inf', 'WITHSCORES')
  for i = 1, #raw, 2 do
    local n = tonumber(string.match(raw[i], '^(%d+)' .. C.OLD_USAGE_SEP)) or 0
    local t = tonumber(raw[i + 1])
    if counts_until(math.floor(t / HW), HW, HOUR) > now then redis.call('HINCRBYFLOAT', hkey, bucket(t, HW), n) end
    redis.call('HINCRBYFLOAT', dkey, bucket(t, DW), n)
  end
  redis.call('DEL', old)
end
migrate(K.old_user_usage, K.user_hour, K.user_day)
migrate(K.old_guild_usage, K.guild_hour, K.guild_day)

-- The buckets a window still sees, soonest to expire first, as {expires_at, units}; the dead ones go.
local function live(key, width, span)
  local raw = redis.call('HGETALL', key)
  local out, dead = {}, {}
  for i = 1, #raw, 2 do
    local e = counts_until(tonumber(raw[i]), width, span)
    local n = tonumber(raw[i + 1])
    if e > now and n > EPS then out[#out + 1] = {e, n} else dead[#dead + 1] = raw[i] end
  end
  if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  table.sort(out, function(a, b) return a[1] < b[1] end)
  return out
end
-- Every member's buckets are pruned, exempt ones too: their work still counts for the guild.
-- {kind, live buckets, quota, the member's own}
local windows = {
  {'user_hour', live(K.user_hour, HW, HOUR), A.user_images_hour, true},
  {'user_day', live(K.user_day, DW, DAY), A.user_images_day, true},
  {'guild_hour', live(K.guild_hour, HW, HOUR), A.guild_images_hour, false},
  {'guild_day', live(K.guild_day, DW, DAY), A.guild_images_day, false},
}
redis.call('ZREMRANGEBYSCORE', K.user_active, '-inf', fmt(now - A.active_ttl_s))
redis.call('ZREMRANGEBYSCORE', K.guild_active, '-inf', fmt(now - A.active_ttl_s))

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
  local at = tonumber(redis.call('GET', K.cooldown) or '')
  if A.cooldown_s > 0 and at and now < at + A.cooldown_s then
    consider('cooldown', at + A.cooldown_s - now, 0, A.cooldown_s)
  end
  local active = redis.call('ZCARD', K.user_active)
  if active >= A.user_max_active then consider('user_active', nil, active, A.user_max_active) end
end

for _, w in ipairs(windows) do
  if units > 0 and not (exempt and w[4]) then
    local retry, used = quota(w[2], w[3])
    if retry then consider(w[1], retry, used, w[3]) end
  end
end

local queued = redis.call('ZCARD', K.guild_active)
if queued >= A.guild_max_queued then consider('guild_queued', nil, queued, A.guild_max_queued) end

if best_kind then
  return {'no', best_kind, best_used, best_limit, best_retry, fmt(now)}
end

-- Everything passed: consume it all.
local t = fmt(now)
local hb, db = bucket(now, HW), bucket(now, DW)
if units > 0 then
  redis.call('HINCRBYFLOAT', K.user_hour, hb, units)
  redis.call('HINCRBYFLOAT', K.user_day, db, units)
  redis.call('HINCRBYFLOAT', K.guild_hour, hb, units)
  redis.call('HINCRBYFLOAT', K.guild_day, db, units)
end
redis.call('ZADD', K.user_active, t, A.job_id)
redis.call('ZADD', K.guild_active, t, A.job_id)
redis.call('HSET', K.job, 'user', A.user_id, 'images', fmt(units), 'at', t, 'exempt', exempt and '1' or '0')  -- 'images': units
local keep_hour, keep_day = HOUR + HW + C.KEY_SLACK_S, DAY + DW + C.KEY_SLACK_S
redis.call('EXPIRE', K.user_hour, keep_hour)
redis.call('EXPIRE', K.user_day, keep_day)
redis.call('EXPIRE', K.guild_hour, keep_hour)
redis.call('EXPIRE', K.guild_day, keep_day)
redis.call('EXPIRE', K.job, keep_day)
redis.call('EXPIRE', K.user_active, math.ceil(A.active_ttl_s + C.KEY_SLACK_S))
redis.call('EXPIRE', K.guild_active, math.ceil(A.active_ttl_s + C.KEY_SLACK_S))
if not exempt and A.cooldown_s > 0 then
  redis.call('SET', K.cooldown, t, 'EX', C.COOLDOWN_KEY_TTL_S)
end
return {'ok', '', '', '', '', t}
