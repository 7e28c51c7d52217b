-- Compatibility: moves the one-level layout's jobs into the two-level one; goes when the one-level layout
-- goes (keys.FQ_FLAT).
-- A: queue, chunk. Moves up to `chunk` jobs from the head of the one-level layout's queue into the two-level
-- one, in their run order and keeping their arrival sequence (so they stay ahead of later arrivals of their
-- rounds). Returns how many are left to move.
local flat = fill(C.FLAT, A.queue)
for _, member in ipairs(redis.call('ZRANGE', flat, 0, tonumber(A.chunk) - 1)) do
  local job_id = tail_of(member)
  local i = info_of(job_id)
  redis.call('ZREM', flat, member)
  if i and not i.tier then
    take(job_id, i, false)
    place(job_id, A.queue, member, i.owner, server_of(i.owner), i.cost, i.batch, i.tries or '', C.PLAIN_TIER,
          i.images, false)
  end
end
return redis.call('ZCARD', flat)
