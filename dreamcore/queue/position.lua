-- A: job_id, queues (names, in priority order). Returns {jobs ahead, cost ahead, own cost} (costs in
-- hundredths), or nil when the job is not waiting in the fair queue. The cost ahead in the job's own queue is
-- summed exactly for a job within 32 of the head; further back, rank x that queue's mean.
local EXACT_AHEAD = 32
local i = info_of(A.job_id)
if not i then return nil end
local ahead, cost = 0, 0
for _, name in ipairs(A.queues) do
  local c = queue_counts(name)
  local flat, n, units, flat_cost = c.flat, c.n, c.units, c.flat_cost
  ahead, cost = ahead + c.list, cost + C.CENTS * c.list
  if name == i.q then
    local rank, exact, mine = 0, 0, 0
    if not i.tier then
      -- Compatibility: a job waiting in the one-level layout; goes when the one-level layout goes
      -- (keys.FQ_FLAT).
      local flat_key = fill(C.FLAT, name)
      rank = redis.call('ZRANK', flat_key, i.member) or 0
      if rank <= EXACT_AHEAD then exact = rank end
      if exact > 0 then
        for _, member in ipairs(redis.call('ZRANGE', flat_key, 0, exact - 1)) do
          local o = info_of(tail_of(member))
          mine = mine + ((o and o.cost) or C.CENTS)
        end
      end
      local mean = C.CENTS
      if flat > 0 then mean = flat_cost / flat end
      return {ahead + rank, cost + mine + math.floor((rank - exact) * mean + 0.5), i.cost}
    end
    local r = guild_rank(i) or 0
    local slot = redis.call('ZRANGE', fill(C.SERVER_SLOTS, name, i.guild), r, r)[1]
    if slot then rank = redis.call('ZRANK', fill(C.SLOTS, name), slot) or 0 end
    if rank <= EXACT_AHEAD then exact = rank end
    for _, s in ipairs(slot_jobs(name, 0, exact)) do
      local o = s.member and info_of(tail_of(s.member))
      mine = mine + ((o and o.cost) or C.CENTS)
    end
    local mean = C.CENTS
    if n > 0 then mean = units / n end
    return {ahead + flat + rank, cost + flat_cost + mine + math.floor((rank - exact) * mean + 0.5), i.cost}
  end
  ahead, cost = ahead + flat + n, cost + flat_cost + units
end
return nil
