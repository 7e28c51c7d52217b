-- Shared by every fair-queue script (the rule they keep: dreamcore/queue/fair_order.py, which puts this text
-- between the bindings dreamcore/lua.py generates and each script's own). Each script runs in O(log n) for a
-- queue of n waiting jobs (the batch claim and the exact part of a position in O(window log n)): no script
-- reads the whole queue.
--
-- No script declares KEYS: each builds its keys from the templates in C (dreamcore.keys' FQ_* shapes, each
-- documented there; a Redis Cluster would need them declared, this queue lives on one primary), and RQ's from
-- RQ's own prefixes. Every format the Python side shares comes in C too: an entry (C.ENTRY), an owner
-- (C.OWNER_SEP), a direct message's server (C.DM_SERVER), the tiers, and costs in hundredths (C.CENTS).

-- A key or a counter's field from its template in C, given its fields' values in the order the template has
-- them (dreamcore.keys writes every template's fields in one order: q, server, tier, owner):
-- fill(C.SERVER_SLOTS, name, server), as Python's str.format fills the same template. fair_order hands each
-- template over as the text around its fields (one whose only field ends it as the text before it), so
-- filling one is joining strings, no pattern to match.
local function fill(t, a, b, c)
  if type(t) == 'string' then return t .. a end  -- a template whose one field ends it: the text before it
  local n = #t
  if n == 2 then return t[1] .. a .. t[2] end
  if n == 3 then return t[1] .. a .. t[2] .. b .. t[3] end
  return t[1] .. a .. t[2] .. b .. t[3] .. c .. t[4]
end

-- An entry of the sorted sets is C.ENTRY of the arrival sequence (zero-padded, so equal rounds order by
-- arrival) and its tail: a job id in a job's entry, a server in a slot.
local function tail_of(entry) return string.sub(entry, C.ENTRY_HEAD + 1) end
local function with_tail(entry, tail) return string.sub(entry, 1, C.ENTRY_HEAD) .. tail end

-- The server an owner counts in (fair_order.server_of): its guild, or in direct messages the member alone, so
-- one member's direct messages never queue ahead of another's. Split as fair_order.parse_owner splits it.
local function server_of(owner)
  local at = string.find(owner, C.OWNER_SEP, 1, true)
  -- An owner without a separator (only a hand edit writes one) counts as a direct message's, as it always has.
  if not at then return fill(C.DM_SERVER, string.sub(owner, #C.DM_GUILD + #C.OWNER_SEP + 1)) end
  local guild, user = string.sub(owner, 1, at - 1), string.sub(owner, at + #C.OWNER_SEP)
  if guild == C.DM_GUILD then return fill(C.DM_SERVER, user) end
  return guild
end

-- An index entry: queue, member, owner, server, cost, batch key, tries, tier, images (the index is the
-- scripts' alone).
local function info_of(job_id)
  local raw = redis.call('HGET', C.JOBS, job_id)
  if not raw then return nil end
  local f = {}
  for part in string.gmatch(raw .. '\t', '([^\t]*)\t') do f[#f + 1] = part end
  if #f ~= 7 and #f ~= 9 then return nil end
  local i = {q = f[1], member = f[2], owner = f[3], guild = f[4], cost = tonumber(f[5]) or C.CENTS,
             batch = f[6], tries = tonumber(f[7]), tier = f[8], images = tonumber(f[9]) or 1}
  if not i.tier then
    -- Compatibility: reads the one-level layout's seven-field entries (no tier; an image count in place of
    -- the cost); goes when the one-level layout goes (keys.FQ_FLAT).
    i.images = tonumber(f[5]) or 1
    i.cost = C.CENTS * i.images
  end
  return i
end

local function guild_key(q, g, tier) return fill(C.SERVER_JOBS, q, g, tier) end

-- What waits in one queue, in each layout: {list = RQ's own list, flat = the one-level layout's jobs,
-- n = the two-level layout's jobs, units = their cost, flat_cost = the one-level jobs' (all in hundredths)}.
-- Compatibility: counts RQ's own list and the one-level layout; goes when both go (claim_next.lua).
local function queue_counts(name)
  local counts = redis.call('HMGET', C.COUNT, fill(C.UNITS, name), fill(C.FLAT_IMAGES, name))
  return {list = redis.call('LLEN', C.QUEUE_PREFIX .. name), flat = redis.call('ZCARD', fill(C.FLAT, name)),
          n = redis.call('ZCARD', fill(C.ALL, name)), units = tonumber(counts[1] or '0'),
          flat_cost = C.CENTS * tonumber(counts[2] or '0')}
end

-- A server's waiting jobs in their run order: its priority tier first, each tier by (round, arrival).
local function guild_job_at(q, g, k)
  local hi = guild_key(q, g, C.PRIORITY_TIER)
  local n = redis.call('ZCARD', hi)
  if k < n then return redis.call('ZRANGE', hi, k, k)[1] end
  return redis.call('ZRANGE', guild_key(q, g, C.PLAIN_TIER), k - n, k - n)[1]
end

local function guild_rank(i)
  local r = redis.call('ZRANK', guild_key(i.q, i.guild, i.tier), i.member)
  if not r then return nil end
  if i.tier == C.PLAIN_TIER then r = r + redis.call('ZCARD', guild_key(i.q, i.guild, C.PRIORITY_TIER)) end
  return r
end

local function add(field, n)
  if redis.call('HINCRBY', C.COUNT, field, n) <= 0 then redis.call('HDEL', C.COUNT, field) end
end

-- A reconcile in progress tallies every job it has walked past (each queue's C.ALL in member order); a
-- change to such a job updates the tally too, so the tally is exact when the walk ends however busy the
-- queue was meanwhile. st: recount_state(q), read once by each script.
local function recount_state(q)
  return redis.call('HMGET', C.RECOUNT, fill(C.RECOUNT_DONE, q), C.RECOUNT_AT, C.RECOUNT_CURSOR)
end

local function tally(q, g, sign, cost)
  redis.call('HINCRBY', C.RECOUNT, fill(C.UNITS, q), sign * cost)
  redis.call('HINCRBY', C.RECOUNT, fill(C.SERVER_WAITING, g), sign)
  redis.call('HINCRBY', C.RECOUNT, fill(C.SERVER_UNITS, g), sign * cost)
end

local function fence(i, sign, st)
  -- (A job of the one-level layout, no tier, is in no tally: the reconcile moves that layout over first.)
  if not st[2] or not i.tier then return end
  local passed = st[1] ~= false or (st[2] == i.q and st[3] ~= false and st[3] ~= '' and i.member <= st[3])
  if passed then tally(i.q, i.guild, sign, i.cost) end
end

-- A job leaves the queue. `served`: it is its server's turn (a claim of the head), and the server gives up
-- the slot its turn came on; otherwise (a cancel, a batch companion taken early) the server gives up its
-- last slot, so its other dreams move up and none of them falls behind a later dream of another server.
local function take(job_id, i, served)
  if not i.tier then
    -- Compatibility: takes a job out of the one-level layout (one sorted set per queue, an image count as
    -- the cost); goes when the one-level layout goes (keys.FQ_FLAT).
    redis.call('ZREM', fill(C.FLAT, i.q), i.member)
    redis.call('ZREM', fill(C.FLAT_OWNER, i.q, i.owner), i.member)
    add(fill(C.FLAT_IMAGES, i.q), -math.floor(i.cost / C.CENTS))
    add(fill(C.SERVER_WAITING, i.guild), -1)
  else
    fence(i, -1, recount_state(i.q))
    local gs = fill(C.SERVER_SLOTS, i.q, i.guild)
    local r = -1
    if served then r = guild_rank(i) or 0 end
    local slot = redis.call('ZRANGE', gs, r, r)[1]
    if slot then
      redis.call('ZREM', gs, slot)
      redis.call('ZREM', fill(C.SLOTS, i.q), slot)
    end
    redis.call('ZREM', guild_key(i.q, i.guild, i.tier), i.member)
    redis.call('ZREM', fill(C.MEMBER_JOBS, i.q, i.tier, i.owner), i.member)
    redis.call('ZREM', fill(C.ALL, i.q), i.member)
    add(fill(C.UNITS, i.q), -i.cost)
    add(fill(C.SERVER_WAITING, i.guild), -1)
    add(fill(C.SERVER_UNITS, i.guild), -i.cost)
  end
  redis.call('HDEL', C.JOBS, job_id)
end

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

-- Put a job in the two-level queue (its entry already made): its round among its server's jobs of its tier
-- (a member's k-th waiting job in the server's head round + k), then one more slot for the server (its k-th
-- waiting job in the queue's head round + k). `front`: ahead of everything waiting, one round before both
-- heads (RQ's requeue of a job a dead worker left).
local function place(job_id, q, member, owner, guild, cost, batch, tries, tier, images, front)
  if front then tier = C.PRIORITY_TIER end
  local gk = guild_key(q, guild, tier)
  local uk = fill(C.MEMBER_JOBS, q, tier, owner)
  local round = next_round(gk, uk, front)
  redis.call('ZADD', gk, round, member)
  redis.call('ZADD', uk, round, member)
  redis.call('ZADD', fill(C.ALL, q), 0, member)

  local slots, gs = fill(C.SLOTS, q), fill(C.SERVER_SLOTS, q, guild)
  local sround = next_round(slots, gs, front)
  local slot = with_tail(member, guild)
  redis.call('ZADD', slots, sround, slot)
  redis.call('ZADD', gs, sround, slot)

  local entry = {q, member, owner, guild, cost, batch, tries, tier, images}
  redis.call('HSET', C.JOBS, job_id, table.concat(entry, '\t'))
  add(fill(C.UNITS, q), cost)
  add(fill(C.SERVER_WAITING, guild), 1)
  add(fill(C.SERVER_UNITS, guild), cost)
  fence({q = q, member = member, guild = guild, cost = cost, tier = tier}, 1, recount_state(q))
end

-- The job entries of the first `n` slots of a queue after the first `first`, in run order (a slot is its
-- server's k-th job when it is the server's k-th slot).
local function slot_jobs(q, first, n)
  local out, seen = {}, {}
  if n <= 0 then return out end
  local slots = redis.call('ZRANGE', fill(C.SLOTS, q), 0, first + n - 1)
  for k, slot in ipairs(slots) do
    local g = tail_of(slot)
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
  redis.call('ZREM', fill(C.SLOTS, q), s.slot)
  redis.call('ZREM', fill(C.SERVER_SLOTS, q, s.guild), s.slot)
  if s.member then
    for _, t in ipairs({C.PLAIN_TIER, C.PRIORITY_TIER}) do
      redis.call('ZREM', guild_key(q, s.guild, t), s.member)
    end
    redis.call('ZREM', fill(C.ALL, q), s.member)
  end
end
