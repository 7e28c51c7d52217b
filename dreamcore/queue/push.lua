-- A: job_id, queue, front. Puts a job in the fair queue; its owner, cost, tier, batch key and tries come from
-- the RQ job's meta (written in the same MULTI just before). Returns 1, or -1 when the job is waiting already
-- (nothing changes: a push is idempotent). A job pushed at the front (RQ's requeue of a job a dead worker
-- left) runs next in its queue.
local job_id = A.job_id
if redis.call('HEXISTS', C.JOBS, job_id) == 1 then return -1 end
local owner, cost, batch, tries, tier, images = job_id, 0, '', '', C.PLAIN_TIER, 1
local meta = redis.call('HGET', C.JOB_PREFIX .. job_id, 'meta')
if meta then
  local ok, m = pcall(cjson.decode, meta)
  if ok and type(m) == 'table' then
    if type(m['owner']) == 'string' and m['owner'] ~= '' then owner = m['owner'] end
    if tonumber(m['images']) then images = math.max(1, math.floor(tonumber(m['images']))) end
    if tonumber(m['cost']) then cost = math.max(1, math.floor(tonumber(m['cost']) + 0.5)) end
    if type(m['batch']) == 'string' then batch = m['batch'] end
    if tonumber(m['tries']) then tries = tostring(math.floor(tonumber(m['tries']))) end
    if tostring(m['tier']) == C.PRIORITY_TIER then tier = C.PRIORITY_TIER end
  end
end
owner = string.gsub(owner, '[\t\r\n]', ' ')
batch = string.gsub(batch, '[\t\r\n]', ' ')
-- Compatibility: a job an older release's bot queued has no cost in its meta, so one unit an image; goes when
-- no job queued by a release before d105bc6 can still be waiting.
if cost == 0 then cost = C.CENTS * images end
local seq = redis.call('INCR', C.SEQ)
local member = string.format(C.ENTRY, seq, job_id)
place(job_id, A.queue, member, owner, server_of(owner), cost, batch, tries, tier, images, A.front)
redis.call('LPUSH', C.BELL, '1')
redis.call('LTRIM', C.BELL, 0, 63)
return 1
