"""The fair queue's Lua scripts (see dreamcore.fairq for the rule they keep). Each runs in O(log n) for a
queue of n waiting jobs (the batch claim in O(window log n)): no script reads the whole queue.

Every script gets the key prefix (dreamcore.keys.FQ) as ARGV[1] and RQ's job-hash prefix as ARGV[2], and
builds its keys from them, as the batch claim always has (a Redis Cluster would need them declared; this
queue lives on one primary).
"""

# Shared by every script: the index entry of a waiting job, and the one way a job leaves the queue.
_PRELUDE = r"""
local FQ, JOBP = ARGV[1], ARGV[2]
local IDX, CNT, REC = FQ .. 'jobs', FQ .. 'count', FQ .. 'recount'

local function info_of(job_id)
  local raw = redis.call('HGET', IDX, job_id)
  if not raw then return nil end
  local q, member, owner, guild, images, batch, tries =
    string.match(raw, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$')
  if not q then return nil end
  return {q = q, member = member, owner = owner, guild = guild, images = tonumber(images) or 1,
          batch = batch, tries = tonumber(tries)}
end

-- A reconcile in progress tallies every job it has walked past; a change to such a job updates the tally
-- too, so the tally is exact when the walk ends however busy the queue was meanwhile.
-- st: the reconcile's state as seen from queue i.q (recount_state), read once by each script.
local function recount_state(q) return redis.call('HMGET', REC, 'done:' .. q, 'at', 'cursor') end

local function fence(i, sign, st)
  if not st[2] then return end
  local passed = st[1] ~= false
  if not passed and st[2] == i.q and st[3] and st[3] ~= '' then
    local cs = redis.call('ZSCORE', FQ .. i.q, st[3])
    local s = redis.call('ZSCORE', FQ .. i.q, i.member)
    if cs and s then
      cs, s = tonumber(cs), tonumber(s)
      passed = s < cs or (s == cs and i.member <= st[3])
    end
  end
  if passed then
    redis.call('HINCRBY', REC, 'images:' .. i.q, sign * i.images)
    redis.call('HINCRBY', REC, 'guild:' .. i.guild, sign)
  end
end

local function take(job_id, i)
  local st = recount_state(i.q)
  fence(i, -1, st)
  if st[2] == i.q and st[3] == i.member then
    -- The reconcile's cursor is leaving: step it back to the member before it.
    local r = redis.call('ZRANK', FQ .. i.q, i.member)
    local prev = ''
    if r and r > 0 then prev = redis.call('ZRANGE', FQ .. i.q, r - 1, r - 1)[1] end
    redis.call('HSET', REC, 'cursor', prev)
  end
  redis.call('ZREM', FQ .. i.q, i.member)
  redis.call('ZREM', FQ .. i.q .. ':o:' .. i.owner, i.member)
  redis.call('HDEL', IDX, job_id)
  if redis.call('HINCRBY', CNT, 'images:' .. i.q, -i.images) <= 0 then redis.call('HDEL', CNT, 'images:' .. i.q) end
  if redis.call('HINCRBY', CNT, 'guild:' .. i.guild, -1) <= 0 then redis.call('HDEL', CNT, 'guild:' .. i.guild) end
end

local function id_of(member) return string.sub(member, 18) end
"""

# ARGV: 3 job id, 4 queue name, 5 at_front ("1"/"0"). Reads owner, images, batch key and tries from the RQ
# job's meta (written in the same MULTI just before). Returns the job's rank in its queue, or -1 when it
# is waiting already (nothing changes: a push is idempotent).
PUSH = _PRELUDE + r"""
local job_id, qname, front = ARGV[3], ARGV[4], ARGV[5] == '1'
local q = FQ .. qname
if redis.call('HEXISTS', IDX, job_id) == 1 then return -1 end
local owner, images, batch, tries = job_id, 1, '', ''
local meta = redis.call('HGET', JOBP .. job_id, 'meta')
if meta then
  local ok, m = pcall(cjson.decode, meta)
  if ok and type(m) == 'table' then
    if type(m['owner']) == 'string' and m['owner'] ~= '' then owner = m['owner'] end
    images = math.max(1, math.floor(tonumber(m['images']) or 1))
    if type(m['batch']) == 'string' then batch = m['batch'] end
    if tonumber(m['tries']) then tries = tostring(math.floor(tonumber(m['tries']))) end
  end
end
owner = string.gsub(owner, '[\t\r\n]', ' ')
batch = string.gsub(batch, '[\t\r\n]', ' ')
local guild = string.match(owner, '^([^:]*):') or '0'
local head = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
local v = 0
if head[2] then v = tonumber(head[2]) end
local round = v
if front then
  round = v - 1
else
  local last = redis.call('ZRANGE', q .. ':o:' .. owner, -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) + 1 > v then round = tonumber(last[2]) + 1 end
end
local member = string.format('%016d', redis.call('INCR', FQ .. 'seq')) .. ':' .. job_id
redis.call('ZADD', q, round, member)
redis.call('ZADD', q .. ':o:' .. owner, round, member)
local i = {q = qname, member = member, owner = owner, guild = guild, images = images, batch = batch}
redis.call('HSET', IDX, job_id, table.concat({qname, member, owner, guild, images, batch, tries}, '\t'))
redis.call('HINCRBY', CNT, 'images:' .. qname, images)
redis.call('HINCRBY', CNT, 'guild:' .. guild, 1)
fence(i, 1, recount_state(qname))
redis.call('LPUSH', FQ .. 'bell', '1')
redis.call('LTRIM', FQ .. 'bell', 0, 63)
return redis.call('ZRANK', q, member)
"""

# ARGV: 3 RQ's queue-key prefix, 4.. queue names in priority order. Takes the next job: within a priority,
# first anything in RQ's own list (jobs an older release queued, and RQ's retries), then the fair queue's
# head. The id goes to RQ's intermediate list, as RQ's own LMOVE dequeue does, so a worker that dies
# before RQ's started registry holds the job still loses nothing (IntermediateQueue.cleanup requeues it).
# Returns {RQ queue key, job id} or nil.
CLAIM_NEXT = _PRELUDE + r"""
local QP = ARGV[3]
for k = 4, #ARGV do
  local name = ARGV[k]
  local list = QP .. name
  local inter = list .. ':intermediate'
  local id = redis.call('LMOVE', list, inter, 'LEFT', 'RIGHT')
  if id then return {list, id} end
  while true do
    local head = redis.call('ZRANGE', FQ .. name, 0, 0)[1]
    if not head then break end
    local job_id = id_of(head)
    local i = info_of(job_id)
    if i then
      take(job_id, i)
      redis.call('RPUSH', inter, job_id)
      return {list, job_id}
    end
    redis.call('ZREM', FQ .. name, head)  -- a member with no index entry: nothing can run it
  end
end
return nil
"""

# ARGV: 3 RQ's queue-key prefix, 4 batch key, 5 image budget, 6 window, 7.. queue names. Takes waiting
# dreams with this batch key from the first `window` waiting jobs (high priority first) while their images
# fit the budget. A job being retried (its worker died while it ran) is never taken: if it is what kills
# workers, it must not take a batch of other members' jobs down with it again. Returns {queue key, id, ...}.
CLAIM_BATCH = _PRELUDE + r"""
local QP, key = ARGV[3], ARGV[4]
local budget, window = tonumber(ARGV[5]), tonumber(ARGV[6])
local claimed, seen = {}, 0
for k = 7, #ARGV do
  if budget <= 0 or seen >= window then break end
  local name = ARGV[k]
  local members = redis.call('ZRANGE', FQ .. name, 0, window - seen - 1)
  for _, member in ipairs(members) do
    seen = seen + 1
    local job_id = id_of(member)
    local i = info_of(job_id)
    if i and i.batch == key and i.images <= budget then
      local left = tonumber(redis.call('HGET', JOBP .. job_id, 'retries_left'))
      if left == nil or i.tries == nil or left >= i.tries - 1 then
        take(job_id, i)
        redis.call('RPUSH', QP .. name .. ':intermediate', job_id)
        budget = budget - i.images
        claimed[#claimed + 1] = QP .. name
        claimed[#claimed + 1] = job_id
        if budget <= 0 then break end
      end
    end
  end
end
return claimed
"""

# ARGV: 3 job id. A waiting job leaves the queue (cancelled). Returns 1, or 0 when it was not waiting here.
REMOVE = _PRELUDE + r"""
local i = info_of(ARGV[3])
if not i then return 0 end
take(ARGV[3], i)
return 1
"""

# ARGV: 3 RQ's queue-key prefix, 4 job id, 5.. queue names in priority order. Returns {jobs ahead, images
# ahead, own images}, or nil when the job is not waiting in the fair queue. Images ahead in the job's own
# queue are summed exactly for a job within 32 of the head; further back, rank x that queue's mean.
POSITION = _PRELUDE + r"""
local EXACT_AHEAD = 32
local QP, job_id = ARGV[3], ARGV[4]
local i = info_of(job_id)
if not i then return nil end
local ahead, images = 0, 0
for k = 5, #ARGV do
  local name = ARGV[k]
  local legacy = redis.call('LLEN', QP .. name)
  ahead, images = ahead + legacy, images + legacy
  local n = redis.call('ZCARD', FQ .. name)
  local imgs = tonumber(redis.call('HGET', CNT, 'images:' .. name) or '0')
  if name == i.q then
    local rank = redis.call('ZRANK', FQ .. name, i.member) or 0
    -- Exact for the jobs nearest the head (where an ETA is short and read closely), the queue's mean
    -- images per job for the rest.
    local exact = 0
    if rank <= EXACT_AHEAD then exact = rank end
    local mine = 0
    if exact > 0 then
      for _, member in ipairs(redis.call('ZRANGE', FQ .. name, 0, exact - 1)) do
        local o = info_of(id_of(member))
        mine = mine + ((o and o.images) or 1)
      end
    end
    local mean = 1
    if n > 0 then mean = imgs / n end
    return {ahead + rank, images + mine + math.floor((rank - exact) * mean + 0.5), i.images}
  end
  ahead, images = ahead + n, images + imgs
end
return nil
"""

# The reconcile, one chunk at a time (each chunk one short script). ARGV: 3 queue name, 4 chunk size,
# 5 the next queue name ("" after the last). Walks `chunk` members past the cursor adding their images and
# guilds to the tally; at the queue's end marks it done and moves on. Returns 1 while there is more to walk.
RECOUNT_STEP = _PRELUDE + r"""
local name, chunk, nxt = ARGV[3], tonumber(ARGV[4]), ARGV[5]
if redis.call('HGET', REC, 'at') ~= name then return -1 end
local cursor = redis.call('HGET', REC, 'cursor') or ''
local start = 0
if cursor ~= '' then
  local r = redis.call('ZRANK', FQ .. name, cursor)
  if not r then return -1 end
  start = r + 1
end
local members = redis.call('ZRANGE', FQ .. name, start, start + chunk - 1)
for _, member in ipairs(members) do
  local i = info_of(id_of(member))
  if i then
    redis.call('HINCRBY', REC, 'images:' .. name, i.images)
    redis.call('HINCRBY', REC, 'guild:' .. i.guild, 1)
  end
end
if #members > 0 then redis.call('HSET', REC, 'cursor', members[#members]) end
if #members < chunk then
  redis.call('HSET', REC, 'done:' .. name, '1', 'at', nxt, 'cursor', '')
  return 0
end
return 1
"""

# Ends a reconcile: the tally becomes the counters. Returns the fields that changed, as
# {field, old, new, ...}.
RECOUNT_FINISH = _PRELUDE + r"""
if redis.call('HGET', REC, 'at') ~= '' then return -1 end
local tally = redis.call('HGETALL', REC)
local new = {}
for k = 1, #tally, 2 do
  local f = tally[k]
  if (string.sub(f, 1, 7) == 'images:' or string.sub(f, 1, 6) == 'guild:') and tonumber(tally[k + 1]) > 0 then
    new[f] = tally[k + 1]
  end
end
local old = redis.call('HGETALL', CNT)
local changed, seen = {}, {}
for k = 1, #old, 2 do
  local f, v = old[k], old[k + 1]
  seen[f] = true
  if new[f] ~= v then
    changed[#changed + 1] = f; changed[#changed + 1] = v; changed[#changed + 1] = new[f] or '0'
  end
end
for f, v in pairs(new) do
  if not seen[f] then changed[#changed + 1] = f; changed[#changed + 1] = '0'; changed[#changed + 1] = v end
end
redis.call('DEL', CNT)
for f, v in pairs(new) do redis.call('HSET', CNT, f, v) end
redis.call('DEL', REC)
return changed
"""
