"""The fair queue's Lua scripts (see dreamcore.fairq for the rule they keep). Each runs in O(log n) for a
queue of n waiting jobs (the batch claim and the exact part of a position in O(window log n)): no script
reads the whole queue.

Every script gets the key prefix (dreamcore.keys.FQ) as ARGV[1] and RQ's job-hash prefix as ARGV[2], and
builds its keys from them (a Redis Cluster would need them declared; this queue lives on one primary).
The key shapes, relative to that prefix (dreamcore.keys documents each):

    jobs, count, seq, bell, recount          the index, the counters, the arrival sequence, the bell, a recount
    <q>:r                                    the servers' slots, by round (member "<seq>:<guild>")
    <q>:gs:<guild>                           one server's slots
    <q>:g:<guild>:<tier>                     one server's waiting jobs of a tier (1: priority roles), by round
    <q>:u:<tier>:<owner>                     one member's waiting jobs of a tier
    <q>:all                                  every waiting job, by arrival (the reconcile walks it)
    <q>, <q>:o:<owner>                       the previous release's one-level layout: drained first, migrated

A job's member string is "<seq>:<job id>" with the sequence zero-padded to 16 digits, so equal rounds
order by arrival; costs are kept in hundredths of a unit (dreamcore.cost) so every counter is an integer.
"""

# Shared by every script: the index entry of a waiting job, where it stands in its server, and the one way a
# job leaves the queue.
_PRELUDE = r"""
local FQ, JOBP = ARGV[1], ARGV[2]
local IDX, CNT, REC = FQ .. 'jobs', FQ .. 'count', FQ .. 'recount'

local function id_of(member) return string.sub(member, 18) end

-- An index entry: queue, member, owner, guild, cost, batch key, tries, tier, images. An older release wrote
-- seven fields (no tier; an image count in place of the cost): such a job waits in the one-level layout.
local function info_of(job_id)
  local raw = redis.call('HGET', IDX, job_id)
  if not raw then return nil end
  local f = {}
  for part in string.gmatch(raw .. '\t', '([^\t]*)\t') do f[#f + 1] = part end
  if #f ~= 7 and #f ~= 9 then return nil end
  local i = {q = f[1], member = f[2], owner = f[3], guild = f[4], cost = tonumber(f[5]) or 100,
             batch = f[6], tries = tonumber(f[7]), tier = f[8], images = tonumber(f[9]) or 1}
  if not i.tier then
    i.images = tonumber(f[5]) or 1
    i.cost = 100 * i.images
  end
  return i
end

local function guild_key(q, g, tier) return FQ .. q .. ':g:' .. g .. ':' .. tier end

-- The server an owner ("<guild>:<user>") counts in: its guild, or in direct messages (guild 0) the member
-- alone ("dm<user>"), so one member's direct messages never queue ahead of another's.
local function server_of(owner)
  local guild = string.match(owner, '^([^:]*):') or '0'
  if guild == '0' then return 'dm' .. string.sub(owner, 3) end
  return guild
end

-- What waits in one queue, in each layout: {list = RQ's own list, flat = the one-level layout's jobs,
-- n = the two-level layout's jobs, units = their cost, flat_cost = the one-level jobs' (all in hundredths)}.
local function queue_counts(QP, name)
  local counts = redis.call('HMGET', CNT, 'units:' .. name, 'images:' .. name)
  return {list = redis.call('LLEN', QP .. name), flat = redis.call('ZCARD', FQ .. name),
          n = redis.call('ZCARD', FQ .. name .. ':all'), units = tonumber(counts[1] or '0'),
          flat_cost = 100 * tonumber(counts[2] or '0')}
end

-- A server's waiting jobs in their run order: its priority tier first, each tier by (round, arrival).
local function guild_job_at(q, g, k)
  local hi = guild_key(q, g, '1')
  local n = redis.call('ZCARD', hi)
  if k < n then return redis.call('ZRANGE', hi, k, k)[1] end
  return redis.call('ZRANGE', guild_key(q, g, '0'), k - n, k - n)[1]
end

local function guild_rank(i)
  local r = redis.call('ZRANK', guild_key(i.q, i.guild, i.tier), i.member)
  if not r then return nil end
  if i.tier == '0' then r = r + redis.call('ZCARD', guild_key(i.q, i.guild, '1')) end
  return r
end

local function add(field, n)
  if redis.call('HINCRBY', CNT, field, n) <= 0 then redis.call('HDEL', CNT, field) end
end

-- A reconcile in progress tallies every job it has walked past (each queue's ':all' in member order); a
-- change to such a job updates the tally too, so the tally is exact when the walk ends however busy the
-- queue was meanwhile. st: recount_state(q), read once by each script.
local function recount_state(q) return redis.call('HMGET', REC, 'done:' .. q, 'at', 'cursor') end

local function fence(i, sign, st)
  if not st[2] or not i.tier then return end
  local passed = st[1] ~= false or (st[2] == i.q and st[3] ~= false and st[3] ~= '' and i.member <= st[3])
  if passed then
    redis.call('HINCRBY', REC, 'units:' .. i.q, sign * i.cost)
    redis.call('HINCRBY', REC, 'guild:' .. i.guild, sign)
    redis.call('HINCRBY', REC, 'gunits:' .. i.guild, sign * i.cost)
  end
end

-- A job leaves the queue. `served`: it is its server's turn (a claim of the head), and the server gives up
-- the slot its turn came on; otherwise (a cancel, a batch companion taken early) the server gives up its
-- last slot, so its other dreams move up and none of them falls behind a later dream of another server.
local function take(job_id, i, served)
  if not i.tier then
    -- The previous release's layout: one sorted set per queue, an image count as the cost.
    redis.call('ZREM', FQ .. i.q, i.member)
    redis.call('ZREM', FQ .. i.q .. ':o:' .. i.owner, i.member)
    add('images:' .. i.q, -math.floor(i.cost / 100))
    add('guild:' .. i.guild, -1)
  else
    fence(i, -1, recount_state(i.q))
    local gs = FQ .. i.q .. ':gs:' .. i.guild
    local r = -1
    if served then r = guild_rank(i) or 0 end
    local slot = redis.call('ZRANGE', gs, r, r)[1]
    if slot then
      redis.call('ZREM', gs, slot)
      redis.call('ZREM', FQ .. i.q .. ':r', slot)
    end
    redis.call('ZREM', guild_key(i.q, i.guild, i.tier), i.member)
    redis.call('ZREM', FQ .. i.q .. ':u:' .. i.tier .. ':' .. i.owner, i.member)
    redis.call('ZREM', FQ .. i.q .. ':all', i.member)
    add('units:' .. i.q, -i.cost)
    add('guild:' .. i.guild, -1)
    add('gunits:' .. i.guild, -i.cost)
  end
  redis.call('HDEL', IDX, job_id)
end

-- Put a job in the two-level queue (the member string already made): its round among its server's jobs
-- of its tier (a member's k-th waiting job in the server's head round + k), then one more slot for the
-- server (its k-th waiting job in the queue's head round + k). `front`: ahead of everything waiting, one
-- round before both heads (RQ's requeue of a job a dead worker left).
-- The round of one more entry in `set` (a server's jobs of a tier, or the queue's slots) for the party whose
-- own entries are `mine` (a member's jobs, or a server's slots): the set's head round, or the round after the
-- party's last entry when that is later; with `front`, one round before the head.
local function next_round(set, mine, front)
  local head = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  local round = 0
  if head[2] then round = tonumber(head[2]) end
  if front then return round - 1 end
  local last = redis.call('ZRANGE', mine, -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) + 1 > round then round = tonumber(last[2]) + 1 end
  return round
end

local function place(job_id, q, member, owner, guild, cost, batch, tries, tier, images, front)
  if front then tier = '1' end
  local gk = guild_key(q, guild, tier)
  local uk = FQ .. q .. ':u:' .. tier .. ':' .. owner
  local round = next_round(gk, uk, front)
  redis.call('ZADD', gk, round, member)
  redis.call('ZADD', uk, round, member)
  redis.call('ZADD', FQ .. q .. ':all', 0, member)

  local slots, gs = FQ .. q .. ':r', FQ .. q .. ':gs:' .. guild
  local sround = next_round(slots, gs, front)
  local slot = string.sub(member, 1, 16) .. ':' .. guild
  redis.call('ZADD', slots, sround, slot)
  redis.call('ZADD', gs, sround, slot)

  redis.call('HSET', IDX, job_id, table.concat({q, member, owner, guild, cost, batch, tries, tier, images}, '\t'))
  add('units:' .. q, cost)
  add('guild:' .. guild, 1)
  add('gunits:' .. guild, cost)
  fence({q = q, member = member, guild = guild, cost = cost, tier = tier}, 1, recount_state(q))
end

-- The job ids of the first `n` slots of a queue, in run order (a slot is its server's k-th job when it is
-- the server's k-th slot).
local function slot_jobs(q, first, n)
  local out, seen = {}, {}
  if n <= 0 then return out end
  local slots = redis.call('ZRANGE', FQ .. q .. ':r', 0, first + n - 1)
  for k, slot in ipairs(slots) do
    local g = string.sub(slot, 18)
    local idx = seen[g] or 0
    seen[g] = idx + 1
    if k > first then
      local m = guild_job_at(q, g, idx)
      out[#out + 1] = {slot = slot, guild = g, member = m}
    end
  end
  return out
end

-- A slot whose server has no job for it (a hand edit, an older bug): it goes, so the queue moves on.
local function drop_slot(q, s)
  redis.call('ZREM', FQ .. q .. ':r', s.slot)
  redis.call('ZREM', FQ .. q .. ':gs:' .. s.guild, s.slot)
  if s.member then
    for _, t in ipairs({'0', '1'}) do redis.call('ZREM', guild_key(q, s.guild, t), s.member) end
    redis.call('ZREM', FQ .. q .. ':all', s.member)
  end
end
"""

# ARGV: 3 job id, 4 queue name, 5 at_front ("1"/"0"). Reads owner, cost, tier, batch key and tries from the
# RQ job's meta (written in the same MULTI just before). Returns 1, or -1 when the job is waiting already
# (nothing changes: a push is idempotent). A job pushed at the front (RQ's requeue of a job a dead worker
# left) runs next in its queue.
PUSH = _PRELUDE + r"""
local job_id, qname, front = ARGV[3], ARGV[4], ARGV[5] == '1'
if redis.call('HEXISTS', IDX, job_id) == 1 then return -1 end
local owner, cost, batch, tries, tier, images = job_id, 0, '', '', '0', 1
local meta = redis.call('HGET', JOBP .. job_id, 'meta')
if meta then
  local ok, m = pcall(cjson.decode, meta)
  if ok and type(m) == 'table' then
    if type(m['owner']) == 'string' and m['owner'] ~= '' then owner = m['owner'] end
    if tonumber(m['images']) then images = math.max(1, math.floor(tonumber(m['images']))) end
    -- A job an older release's bot queued has no cost: one unit an image.
    if tonumber(m['cost']) then cost = math.max(1, math.floor(tonumber(m['cost']) + 0.5)) end
    if type(m['batch']) == 'string' then batch = m['batch'] end
    if tonumber(m['tries']) then tries = tostring(math.floor(tonumber(m['tries']))) end
    if m['tier'] == 1 or m['tier'] == '1' then tier = '1' end
  end
end
owner = string.gsub(owner, '[\t\r\n]', ' ')
batch = string.gsub(batch, '[\t\r\n]', ' ')
if cost == 0 then cost = 100 * images end
local guild = server_of(owner)
local seq = redis.call('INCR', FQ .. 'seq')
local member = string.format('%016d', seq) .. ':' .. job_id
place(job_id, qname, member, owner, guild, cost, batch, tries, tier, images, front)
redis.call('LPUSH', FQ .. 'bell', '1')
redis.call('LTRIM', FQ .. 'bell', 0, 63)
return 1
"""

# ARGV: 3 RQ's queue-key prefix, 4.. queue names in priority order. Takes the next job: within a priority,
# first anything in RQ's own list (jobs an older release queued, and RQ's retries), then the previous
# release's one-level queue, then the head slot's server's next job. The id goes to RQ's intermediate
# list, as RQ's own LMOVE dequeue does, so a worker that dies before RQ's started registry holds the job
# still loses nothing (IntermediateQueue.cleanup requeues it). Returns {RQ queue key, job id} or nil.
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
      take(job_id, i, true)
      redis.call('RPUSH', inter, job_id)
      return {list, job_id}
    end
    redis.call('ZREM', FQ .. name, head)  -- a member with no index entry: nothing can run it
  end
  while true do
    local s = slot_jobs(name, 0, 1)[1]
    if not s then break end
    local i = s.member and info_of(id_of(s.member))
    if i then
      local job_id = id_of(s.member)
      take(job_id, i, true)
      redis.call('RPUSH', inter, job_id)
      return {list, job_id}
    end
    drop_slot(name, s)
  end
end
return nil
"""

# ARGV: 3 RQ's queue-key prefix, 4 batch key, 5 image budget, 6 window, 7.. queue names. Takes waiting
# dreams with this batch key from the first `window` waiting jobs in run order (high priority first) while
# their images fit the budget (what one denoising call holds is a matter of memory, so images). A job being retried (its worker died while it ran) is
# never taken: if it is what kills workers, it must not take a batch of other members' jobs down with it
# again. Returns {queue key, id, ...}.
CLAIM_BATCH = _PRELUDE + r"""
local QP, key = ARGV[3], ARGV[4]
local budget, window = tonumber(ARGV[5]), tonumber(ARGV[6])
local claimed, seen = {}, 0
local function consider(name, job_id)
  local i = info_of(job_id)
  if i and i.batch == key and i.images <= budget then
    local left = tonumber(redis.call('HGET', JOBP .. job_id, 'retries_left'))
    if left == nil or i.tries == nil or left >= i.tries - 1 then
      take(job_id, i, false)
      redis.call('RPUSH', QP .. name .. ':intermediate', job_id)
      budget = budget - i.images
      claimed[#claimed + 1] = QP .. name
      claimed[#claimed + 1] = job_id
    end
  end
end
for k = 7, #ARGV do
  if budget <= 0 or seen >= window then break end
  local name = ARGV[k]
  for _, member in ipairs(redis.call('ZRANGE', FQ .. name, 0, window - seen - 1)) do
    seen = seen + 1
    consider(name, id_of(member))
    if budget <= 0 then break end
  end
  if budget > 0 and seen < window then
    -- Which job each slot stands for is read before any is taken: taking one frees its own slot only.
    for _, s in ipairs(slot_jobs(name, 0, window - seen)) do
      seen = seen + 1
      if s.member then consider(name, id_of(s.member)) end
      if budget <= 0 then break end
    end
  end
end
return claimed
"""

# ARGV: 3 job id. A waiting job leaves the queue (cancelled). Returns 1, or 0 when it was not waiting here.
REMOVE = _PRELUDE + r"""
local i = info_of(ARGV[3])
if not i then return 0 end
take(ARGV[3], i, false)
return 1
"""

# ARGV: 3 RQ's queue-key prefix, 4 job id, 5.. queue names in priority order. Returns {jobs ahead, cost
# ahead, own cost} (costs in hundredths), or nil when the job is not waiting in the fair queue. The cost
# ahead in the job's own queue is summed exactly for a job within 32 of the head; further back, rank x
# that queue's mean.
POSITION = _PRELUDE + r"""
local EXACT_AHEAD = 32
local QP, job_id = ARGV[3], ARGV[4]
local i = info_of(job_id)
if not i then return nil end
local ahead, cost = 0, 0
for k = 5, #ARGV do
  local name = ARGV[k]
  local c = queue_counts(QP, name)
  local flat, n, units, flat_cost = c.flat, c.n, c.units, c.flat_cost
  ahead, cost = ahead + c.list, cost + 100 * c.list
  if name == i.q then
    local rank, exact, mine = 0, 0, 0
    if not i.tier then
      rank = redis.call('ZRANK', FQ .. name, i.member) or 0
      if rank <= EXACT_AHEAD then exact = rank end
      if exact > 0 then
        for _, member in ipairs(redis.call('ZRANGE', FQ .. name, 0, exact - 1)) do
          local o = info_of(id_of(member))
          mine = mine + ((o and o.cost) or 100)
        end
      end
      local mean = 100
      if flat > 0 then mean = flat_cost / flat end
      return {ahead + rank, cost + mine + math.floor((rank - exact) * mean + 0.5), i.cost}
    end
    local r = guild_rank(i) or 0
    local slot = redis.call('ZRANGE', FQ .. name .. ':gs:' .. i.guild, r, r)[1]
    if slot then rank = redis.call('ZRANK', FQ .. name .. ':r', slot) or 0 end
    if rank <= EXACT_AHEAD then exact = rank end
    for _, s in ipairs(slot_jobs(name, 0, exact)) do
      local o = s.member and info_of(id_of(s.member))
      mine = mine + ((o and o.cost) or 100)
    end
    local mean = 100
    if n > 0 then mean = units / n end
    return {ahead + flat + rank, cost + flat_cost + mine + math.floor((rank - exact) * mean + 0.5), i.cost}
  end
  ahead, cost = ahead + flat + n, cost + flat_cost + units
end
return nil
"""

# ARGV: 3 RQ's queue-key prefix, 4 guild, 5 the queue it would go to, 6.. queue names in priority order.
# Where a server's next dream would stand if it were queued now: behind its server's last slot, the way
# round-robin between servers serves it. Returns {jobs ahead, cost ahead (hundredths; the queue's mean
# cost a job past the legacy layouts), the server's waiting dreams in that queue}.
WOULD_WAIT = _PRELUDE + r"""
local QP, guild, target = ARGV[3], ARGV[4], ARGV[5]
local ahead, cost = 0, 0
for k = 6, #ARGV do
  local name = ARGV[k]
  local c = queue_counts(QP, name)
  local n, units = c.n, c.units
  ahead, cost = ahead + c.list + c.flat, cost + 100 * c.list + c.flat_cost
  if name == target then
    local slots, gs = FQ .. name .. ':r', FQ .. name .. ':gs:' .. guild
    local before = redis.call('ZCOUNT', slots, '-inf', next_round(slots, gs, false))
    local mean = 100
    if n > 0 then mean = units / n end
    return {ahead + before, cost + math.floor(before * mean + 0.5), redis.call('ZCARD', gs)}
  end
  ahead, cost = ahead + n, cost + units
end
return {ahead, cost, 0}
"""

# ARGV: 3 RQ's queue-key prefix, 4 queue name, 5 how many. The first job ids of one queue in run order
# (RQ's list, the one-level layout, then the slots): O(n log n) in what it reads, for tests and benches.
RUN_ORDER = _PRELUDE + r"""
local QP, name, n = ARGV[3], ARGV[4], tonumber(ARGV[5])
local out = {}
for _, id in ipairs(redis.call('LRANGE', QP .. name, 0, n - 1)) do out[#out + 1] = id end
if #out < n then
  for _, member in ipairs(redis.call('ZRANGE', FQ .. name, 0, n - #out - 1)) do out[#out + 1] = id_of(member) end
end
if #out < n then
  for _, s in ipairs(slot_jobs(name, 0, n - #out)) do
    if s.member then out[#out + 1] = id_of(s.member) end
  end
end
return out
"""

# ARGV: 3 queue name, 4 chunk. Moves up to `chunk` jobs from the head of the previous release's one-level
# layout into the two-level one, in their run order and keeping their arrival sequence (so they stay
# ahead of later arrivals of their rounds). Returns how many are left to move.
MIGRATE_STEP = _PRELUDE + r"""
local name, chunk = ARGV[3], tonumber(ARGV[4])
for _, member in ipairs(redis.call('ZRANGE', FQ .. name, 0, chunk - 1)) do
  local job_id = id_of(member)
  local i = info_of(job_id)
  redis.call('ZREM', FQ .. name, member)
  if i and not i.tier then
    take(job_id, i, false)
    place(job_id, name, member, i.owner, server_of(i.owner), i.cost, i.batch, i.tries or '', '0', i.images, false)
  end
end
return redis.call('ZCARD', FQ .. name)
"""

# The reconcile, one chunk at a time (each chunk one short script). ARGV: 3 queue name, 4 chunk size,
# 5 the next queue name ("" after the last). Walks `chunk` members of the queue's ':all' past the cursor
# (by member, i.e. arrival) adding their cost and servers to the tally; at the queue's end marks it done
# and moves on. Returns 1 while there is more to walk, 0 when the queue is done, -1 when out of step.
RECOUNT_STEP = _PRELUDE + r"""
local name, chunk, nxt = ARGV[3], tonumber(ARGV[4]), ARGV[5]
if redis.call('HGET', REC, 'at') ~= name then return -1 end
local cursor = redis.call('HGET', REC, 'cursor') or ''
local from = '-'
if cursor ~= '' then from = '(' .. cursor end
local members = redis.call('ZRANGEBYLEX', FQ .. name .. ':all', from, '+', 'LIMIT', 0, chunk)
for _, member in ipairs(members) do
  local i = info_of(id_of(member))
  if i and i.tier then
    redis.call('HINCRBY', REC, 'units:' .. name, i.cost)
    redis.call('HINCRBY', REC, 'guild:' .. i.guild, 1)
    redis.call('HINCRBY', REC, 'gunits:' .. i.guild, i.cost)
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
# {field, old, new, ...}; -1 when the walk has not ended.
RECOUNT_FINISH = _PRELUDE + r"""
if redis.call('HGET', REC, 'at') ~= '' then return -1 end
local tally = redis.call('HGETALL', REC)
local new = {}
for k = 1, #tally, 2 do
  local f = tally[k]
  local counted = string.sub(f, 1, 6) == 'units:' or string.sub(f, 1, 6) == 'guild:' or string.sub(f, 1, 7) == 'gunits:'
  if counted and tonumber(tally[k + 1]) > 0 then new[f] = tally[k + 1] end
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
