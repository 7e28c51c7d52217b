-- A: queue, n. The first `n` job ids of one queue in run order (RQ's list, the one-level layout, then the
-- slots): O(n log n) in what it reads, for tests and benches.
local name, n = A.queue, tonumber(A.n)
local out = {}
for _, id in ipairs(redis.call('LRANGE', C.QUEUE_PREFIX .. name, 0, n - 1)) do out[#out + 1] = id end
if #out < n then
  for _, member in ipairs(redis.call('ZRANGE', fill(C.FLAT, name), 0, n - #out - 1)) do
    out[#out + 1] = tail_of(member)
  end
end
if #out < n then
  for _, s in ipairs(slot_jobs(name, 0, n - #out)) do
    if s.member then out[#out + 1] = tail_of(s.member) end
  end
end
return out
