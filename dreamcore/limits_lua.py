"""The two Lua scripts behind dreamcore.limits: every counting limit is checked and consumed in one step.

Redis runs a script alone, start to end, so ten bot processes (or one process's threads) asking at once
see each other's effects in some order and never both squeeze through the last free slot.

Time: ARGV now is the caller's clock (seconds, a float; the tests drive it) or "" for the Redis server's
TIME, which every bot host then shares. All scores and bounds are written with %.17g so a double survives
the trip to and from Redis exactly.

Usage sorted sets hold one member per accepted job, "<images>:<job_id>", scored by the time it was
accepted; a rolling window of `span` seconds counts the members scored > now - span, so the member
accepted at t stops counting at t + span. Active sets hold job ids scored by acceptance time.
"""

# KEYS: 1 cooldown, 2 user usage, 3 guild usage, 4 user active, 5 guild active, 6 job record
# ARGV: 1 now ("" = server TIME), 2 job_id, 3 images, 4 exempt ("1"/"0"), 5 cooldown_s,
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
local job_id = ARGV[2]
local images = tonumber(ARGV[3])
local exempt = ARGV[4] == '1'
local cooldown = tonumber(ARGV[5])
local active_ttl = tonumber(ARGV[12])
local slack = tonumber(ARGV[13])

if redis.call('EXISTS', KEYS[6]) == 1 then
  return {'dup', '', '', '', '', fmt(now)}
end

-- Forget what no window can see any more (and active jobs a crashed bot never released).
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now - DAY))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(now - DAY))
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', fmt(now - active_ttl))
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', fmt(now - active_ttl))

if not exempt then
  -- The refusal reported is the one that lasts longest: never > the longest timed wait > "a job must
  -- finish first"; on a tie, the first checked.
  local best_kind, best_rank, best_used, best_limit, best_retry = nil, -2, '', '', ''
  local function consider(kind, retry, used, limit)
    local rank = -1
    if retry then rank = retry end
    if rank > best_rank then
      best_kind, best_rank, best_used, best_limit = kind, rank, tostring(used), tostring(limit)
      if retry then best_retry = fmt(retry) else best_retry = '' end
    end
  end

  local function load(key)
    local raw = redis.call('ZRANGEBYSCORE', key, '(' .. fmt(now - DAY), '+inf', 'WITHSCORES')
    local items = {}
    for i = 1, #raw, 2 do
      items[#items + 1] = {tonumber(string.match(raw[i], '^(%d+):')) or 0, tonumber(raw[i + 1])}
    end
    return items
  end

  -- Returns nil when this request fits, else (seconds until enough has expired, images used).
  local function quota(items, span, limit)
    local since = now - span
    local used = 0
    for _, it in ipairs(items) do
      if it[2] > since then used = used + it[1] end
    end
    if used + images <= limit then return nil, used end
    if images > limit then return INF, used end
    local need, freed = used + images - limit, 0
    for _, it in ipairs(items) do
      if it[2] > since then
        freed = freed + it[1]
        if freed >= need then return it[2] + span - now, used end
      end
    end
    return INF, used
  end

  local at = tonumber(redis.call('GET', KEYS[1]) or '')
  if cooldown > 0 and at and now < at + cooldown then
    consider('cooldown', at + cooldown - now, '', cooldown)
  end

  local active = redis.call('ZCARD', KEYS[4])
  local max_active = tonumber(ARGV[6])
  if active >= max_active then consider('user_active', nil, active, max_active) end

  local uitems = load(KEYS[2])
  local checks = {
    {'user_hour', uitems, HOUR, tonumber(ARGV[7])},
    {'user_day', uitems, DAY, tonumber(ARGV[8])},
  }
  local gitems = load(KEYS[3])
  checks[3] = {'guild_hour', gitems, HOUR, tonumber(ARGV[9])}
  checks[4] = {'guild_day', gitems, DAY, tonumber(ARGV[10])}
  for _, c in ipairs(checks) do
    local retry, used = quota(c[2], c[3], c[4])
    if retry then consider(c[1], retry, used, c[4]) end
  end

  local queued = redis.call('ZCARD', KEYS[5])
  local max_queued = tonumber(ARGV[11])
  if queued >= max_queued then consider('guild_queued', nil, queued, max_queued) end

  if best_kind then
    return {'no', best_kind, best_used, best_limit, best_retry, fmt(now)}
  end
end

-- Everything passed: consume it all.
local member = ARGV[3] .. ':' .. job_id
local t = fmt(now)
redis.call('ZADD', KEYS[2], t, member)
redis.call('ZADD', KEYS[3], t, member)
redis.call('ZADD', KEYS[4], t, job_id)
redis.call('ZADD', KEYS[5], t, job_id)
redis.call('HSET', KEYS[6], 'user', ARGV[14], 'images', ARGV[3], 'at', t, 'exempt', ARGV[4])
local keep = DAY + slack
redis.call('EXPIRE', KEYS[2], keep)
redis.call('EXPIRE', KEYS[3], keep)
redis.call('EXPIRE', KEYS[6], keep)
redis.call('EXPIRE', KEYS[4], math.ceil(active_ttl + slack))
redis.call('EXPIRE', KEYS[5], math.ceil(active_ttl + slack))
if not exempt and cooldown > 0 then
  redis.call('SET', KEYS[1], t, 'EX', tonumber(ARGV[15]))
end
return {'ok', '', '', '', '', t}
"""

# KEYS: 1 job record, 2 user usage, 3 guild usage, 4 user active, 5 guild active
# ARGV: 1 job_id, 2 refund ("1"/"0"), 3 user_id
# Returns 0: unknown job (never accepted, already released, or long expired): nothing done;
# -1: the job belongs to another user: nothing done; 1: released; 2: released and its images refunded.
RELEASE_LUA = r"""
local rec = redis.call('HMGET', KEYS[1], 'images', 'user')
if not rec[1] then return 0 end
if rec[2] ~= ARGV[3] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
if ARGV[2] == '1' then
  local member = rec[1] .. ':' .. ARGV[1]
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
  return 2
end
return 1
"""
