-- Limiter.release's step (limiter.py declares K, A and C): the job ended, its active slots are freed, and
-- its units given back (refund) or settled to what it really cost. How the quotas count: buckets.py.
--
-- K: job (the record acquire.lua wrote), user_hour, user_day, guild_hour, guild_day (bucket hashes),
--    user_active, guild_active, old_user_usage, old_guild_usage (acquire.lua's Compatibility note)
-- A: job_id, user_id (a string), refund (true: cancelled or failed, its units come back), settle (absent,
--    or the units the job really cost: the difference from what was charged goes to or comes back from the
--    buckets it was charged in)
-- Returns 0: unknown job (never accepted, already released, or long expired): nothing done;
-- -1: the job belongs to another user: nothing done; 1: released; 2: released and its units refunded;
-- 3: released and its charge settled to what it cost.

local rec = redis.call('HMGET', K.job, 'images', 'user', 'at')
if not rec[1] then return 0 end
if rec[2] ~= A.user_id then return -1 end
redis.call('DEL', K.job)
redis.call('ZREM', K.user_active, A.job_id)
redis.call('ZREM', K.guild_active, A.job_id)
local units, at = tonumber(rec[1]), tonumber(rec[3]) or 0
-- A bucket already gone (its window moved past it) has nothing left to refund or settle.
local function adjust(key, width, delta)
  local field = string.format(C.BUCKET_FIELD, math.floor(at / width))
  local n = tonumber(redis.call('HGET', key, field) or '')
  if not n then return end
  if n + delta > C.UNITS_EPS then redis.call('HINCRBYFLOAT', key, field, delta) else redis.call('HDEL', key, field) end
end
local function adjust_all(delta)
  adjust(K.user_hour, C.HOUR_BUCKET_S, delta)
  adjust(K.user_day, C.DAY_BUCKET_S, delta)
  adjust(K.guild_hour, C.HOUR_BUCKET_S, delta)
  adjust(K.guild_day, C.DAY_BUCKET_S, delta)
end
if A.refund then
  adjust_all(-units)
  -- Compatibility: a job an older release accepted is also removed from its usage zsets (not folded into
  -- the buckets yet); goes when every deployment is over 24 h past its upgrade to bucket counters (74a9068).
  local member = rec[1] .. C.OLD_USAGE_SEP .. A.job_id
  redis.call('ZREM', K.old_user_usage, member)
  redis.call('ZREM', K.old_guild_usage, member)
  return 2
end
-- A job charged nothing (relax) is settled at nothing.
if A.settle and units > 0 and math.abs(A.settle - units) > C.UNITS_EPS then
  adjust_all(A.settle - units)
  return 3
end
return 1
