-- A: queues (names, in priority order). Takes the next job: within a priority, first anything in RQ's own
-- list, then the one-level layout's queue, then the head slot's server's next job. The id goes to RQ's
-- intermediate list, as RQ's own LMOVE dequeue does, so a worker that dies before RQ's started registry holds
-- the job still loses nothing (IntermediateQueue.cleanup requeues it). Returns {RQ queue key, job id} or nil.
for _, name in ipairs(A.queues) do
  local list = C.QUEUE_PREFIX .. name
  local inter = fill(C.INTERMEDIATE, list)
  -- Compatibility: drains RQ's own list first (jobs a release before f00a364 queued, and any pushed there
  -- through RQ's plain Queue, such as `rq requeue`); goes when nothing pushes there any more.
  local id = redis.call('LMOVE', list, inter, 'LEFT', 'RIGHT')
  if id then return {list, id} end
  -- Compatibility: drains the one-level layout's queue next; goes when the one-level layout goes
  -- (keys.FQ_FLAT).
  local flat = fill(C.FLAT, name)
  while true do
    local head = redis.call('ZRANGE', flat, 0, 0)[1]
    if not head then break end
    local job_id = tail_of(head)
    local i = info_of(job_id)
    if i then
      take(job_id, i, true)
      redis.call('RPUSH', inter, job_id)
      return {list, job_id}
    end
    redis.call('ZREM', flat, head)  -- a member with no index entry: nothing can run it
  end
  while true do
    local s = slot_jobs(name, 0, 1)[1]
    if not s then break end
    local i = s.member and info_of(tail_of(s.member))
    if i then
      local job_id = tail_of(s.member)
      take(job_id, i, true)
      redis.call('RPUSH', inter, job_id)
      return {list, job_id}
    end
    drop_slot(name, s)
  end
end
return nil
