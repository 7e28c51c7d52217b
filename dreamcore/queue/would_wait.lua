-- A: server, queue (the one its dream would go to), queues (names, in priority order). Where a server's next
-- dream would stand if it were queued now: behind its server's last slot, the way round-robin between servers
-- serves it. Returns {jobs ahead, cost ahead (hundredths; the queue's mean cost a job past the older
-- layouts), the server's waiting dreams in that queue}.
local ahead, cost = 0, 0
for _, name in ipairs(A.queues) do
  local c = queue_counts(name)
  local n, units = c.n, c.units
  ahead, cost = ahead + c.list + c.flat, cost + C.CENTS * c.list + c.flat_cost
  if name == A.queue then
    local slots, gs = fill(C.SLOTS, name), fill(C.SERVER_SLOTS, name, A.server)
    local before = redis.call('ZCOUNT', slots, '-inf', next_round(slots, gs, false))
    local mean = C.CENTS
    if n > 0 then mean = units / n end
    return {ahead + before, cost + math.floor(before * mean + 0.5), redis.call('ZCARD', gs)}
  end
  ahead, cost = ahead + n, cost + units
end
return {ahead, cost, 0}
