-- The reconcile, one chunk at a time (each chunk one short script). A: queue, chunk, next (the next queue's
-- name, "" after the last). Walks `chunk` members of the queue's C.ALL past the cursor (by member, i.e.
-- arrival) adding their cost and servers to the tally; at the queue's end marks it done and moves on.
-- Returns 1 while there is more to walk, 0 when the queue is done, -1 when out of step.
local name, chunk = A.queue, tonumber(A.chunk)
if redis.call('HGET', C.RECOUNT, C.RECOUNT_AT) ~= name then return -1 end
local cursor = redis.call('HGET', C.RECOUNT, C.RECOUNT_CURSOR) or ''
local from = '-'
if cursor ~= '' then from = '(' .. cursor end
local members = redis.call('ZRANGEBYLEX', fill(C.ALL, name), from, '+', 'LIMIT', 0, chunk)
for _, member in ipairs(members) do
  local i = info_of(tail_of(member))
  if i and i.tier then tally(name, i.guild, 1, i.cost) end
end
if #members > 0 then redis.call('HSET', C.RECOUNT, C.RECOUNT_CURSOR, members[#members]) end
if #members < chunk then
  redis.call('HSET', C.RECOUNT, fill(C.RECOUNT_DONE, name), '1', C.RECOUNT_AT, A.next, C.RECOUNT_CURSOR, '')
  return 0
end
return 1
