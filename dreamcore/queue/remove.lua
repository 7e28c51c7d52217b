-- A: job_id. A waiting job leaves the queue (cancelled). Returns 1, or 0 when it was not waiting here.
local i = info_of(A.job_id)
if not i then return 0 end
take(A.job_id, i, false)
return 1
