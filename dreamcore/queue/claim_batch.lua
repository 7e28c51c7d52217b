-- A: batch (key), budget (images), window, queues (names, in priority order). Takes waiting dreams with this
-- batch key from the first `window` waiting jobs in run order (high priority first) while their images fit
-- the budget (what one denoising call holds is a matter of memory, so images). A job being retried (its
-- worker died while it ran) is never taken: if it is what kills workers, it must not take a batch of other
-- members' jobs down with it again. Returns {queue key, id, ...}.
local budget, window = tonumber(A.budget), tonumber(A.window)
local claimed, seen = {}, 0
local function consider(name, job_id)
  local i = info_of(job_id)
  if i and i.batch == A.batch and i.images <= budget then
    local left = tonumber(redis.call('HGET', C.JOB_PREFIX .. job_id, 'retries_left'))
    if left == nil or i.tries == nil or left >= i.tries - 1 then
      local list = C.QUEUE_PREFIX .. name
      take(job_id, i, false)
      redis.call('RPUSH', fill(C.INTERMEDIATE, list), job_id)
      budget = budget - i.images
      claimed[#claimed + 1] = list
      claimed[#claimed + 1] = job_id
    end
  end
end
for _, name in ipairs(A.queues) do
  if budget <= 0 or seen >= window then break end
  -- Compatibility: the one-level layout's queue first; goes when the one-level layout goes
  -- (keys.FQ_FLAT).
  for _, member in ipairs(redis.call('ZRANGE', fill(C.FLAT, name), 0, window - seen - 1)) do
    seen = seen + 1
    consider(name, tail_of(member))
    if budget <= 0 then break end
  end
  if budget > 0 and seen < window then
    -- Which job each slot stands for is read before any is taken: taking one frees its own slot only.
    for _, s in ipairs(slot_jobs(name, 0, window - seen)) do
      seen = seen + 1
      if s.member then consider(name, tail_of(s.member)) end
      if budget <= 0 then break end
    end
  end
end
return claimed
