"""The dream queue: RQ on Redis, three priorities, JSON payloads, fair order across members.

Bots call `DreamQueue.enqueue`; workers listen on `queue_names()` in priority order. Jobs name their
function as a dotted string so a bot host never imports the worker (or torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from .job import DreamJob
from .settings import Settings

PRIORITIES = ("high", "default", "low")
TASK = "worker.tasks.run_dream"


def queue_name(priority: str) -> str:
    return f"dream-{priority}"


def queue_names() -> list[str]:
    return [queue_name(p) for p in PRIORITIES]


# Fair insertion. A member's k-th waiting job belongs to "round" k; a new job of round r goes in front
# of the first waiting job whose round is greater than r. So a member with 20 jobs waiting delays
# somebody's first job by at most one job, not twenty. The owner of each waiting job is read from
# the job's JSON meta, so no second structure has to be kept in step with RQ's list.
_FAIR_PUSH = """
local qkey, prefix, job_id, owner = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local ids = redis.call('LRANGE', qkey, 0, -1)
local owners = {}
local mine = 0
for i, id in ipairs(ids) do
  local meta = redis.call('HGET', prefix .. id, 'meta')
  local o = id
  if meta then
    local ok, decoded = pcall(cjson.decode, meta)
    if ok and type(decoded) == 'table' and decoded['owner'] then o = decoded['owner'] end
  end
  owners[i] = o
  if o == owner then mine = mine + 1 end
end
local rounds = {}
for i, id in ipairs(ids) do
  local o = owners[i]
  local r = rounds[o] or 0
  rounds[o] = r + 1
  if r > mine then
    redis.call('LINSERT', qkey, 'BEFORE', id, job_id)
    return i - 1
  end
end
redis.call('RPUSH', qkey, job_id)
return #ids
"""


# Batch claim. A worker that has taken a dream looks through the first `window` waiting jobs (high, then
# default, then low priority) for dreams with the same batch key and takes them while their images fit
# its budget. Each taken id moves, in this one atomic step, from its queue to that queue's RQ
# intermediate list: if the worker dies before RQ's started registry holds the job, RQ's own maintenance
# finds it there and requeues it (IntermediateQueue.cleanup), so a claim never loses a job. A job that is
# being retried (its worker died while it ran) is never taken: if it is what kills workers, it must not take
# a batch of other members' jobs down with it again, so it runs alone.
_CLAIM = """
local prefix, key = ARGV[1], ARGV[2]
local budget, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local claimed = {}
local seen = 0
for _, q in ipairs(KEYS) do
  if budget <= 0 or seen >= window then break end
  local ids = redis.call('LRANGE', q, 0, window - seen - 1)
  for _, id in ipairs(ids) do
    seen = seen + 1
    local meta = redis.call('HGET', prefix .. id, 'meta')
    if meta then
      local ok, m = pcall(cjson.decode, meta)
      local fresh = false
      if ok and type(m) == 'table' and m['batch'] == key then
        local left = tonumber(redis.call('HGET', prefix .. id, 'retries_left'))
        local tries = tonumber(m['tries'])
        fresh = left == nil or tries == nil or left >= tries - 1
      end
      if fresh then
        local n = tonumber(m['images']) or 1
        if n >= 1 and n <= budget and redis.call('LREM', q, 1, id) == 1 then
          redis.call('RPUSH', q .. ':intermediate', id)
          budget = budget - n
          claimed[#claimed + 1] = q
          claimed[#claimed + 1] = id
          if budget <= 0 then break end
        end
      end
    end
  end
end
return claimed
"""


def claim_companions(connection: redis.Redis, batch_key: str, budget: int, window: int) -> list[tuple[str, str]]:
    """Take waiting dreams that can join a batch with key `batch_key`: (queue name, job id) pairs, at most
    `budget` images in all, found among the first `window` waiting jobs. See _CLAIM."""
    if budget < 1 or window < 1:
        return []
    keys = [FairQueue(n, connection=connection, serializer=JSONSerializer).key for n in queue_names()]
    script = connection.register_script(_CLAIM)
    flat = script(keys=keys, args=[Job.redis_job_namespace_prefix, batch_key, budget, window])
    out = []
    for qkey, job_id in zip(flat[::2], flat[1::2], strict=True):
        qkey, job_id = (x.decode() if isinstance(x, bytes) else x for x in (qkey, job_id))
        out.append((qkey.removeprefix(Queue.redis_queue_namespace_prefix), job_id))
    return out


class FairQueue(Queue):
    """An RQ queue whose pushes interleave members round-robin (see _FAIR_PUSH)."""

    _owner_for_push: dict[str, str] = {}

    def push_job_id(self, job_id, pipeline=None, at_front=False):
        owner = self._owner_for_push.pop(job_id, None)
        if at_front or owner is None:
            return super().push_job_id(job_id, pipeline=pipeline, at_front=at_front)
        script = self.connection.register_script(_FAIR_PUSH)
        script(keys=[self.key], args=[Job.redis_job_namespace_prefix, job_id, owner], client=pipeline)


@dataclass
class Enqueued:
    job_id: str
    priority: str
    position: int  # 0 = next to run


class DreamQueue:
    def __init__(self, connection: redis.Redis, settings: Settings):
        self.connection = connection
        self.settings = settings
        self.queues = {
            p: FairQueue(queue_name(p), connection=connection, serializer=JSONSerializer) for p in PRIORITIES
        }

    def enqueue(self, job: DreamJob) -> Enqueued:
        q = self.queues[job.priority]
        owner = f"{job.origin.guild_id or 0}:{job.origin.user_id}"
        rq_job = q.create_job(
            TASK,
            args=[job.to_dict()],
            job_id=job.job_id,
            timeout=self.settings.job_timeout_s,
            result_ttl=self.settings.result_ttl_s,
            failure_ttl=self.settings.failure_ttl_s,
            ttl=self.settings.result_ttl_s,
            description=f"dream {job.job_id} for {owner} via {job.origin.instance}",
            meta={"owner": owner, "instance": job.origin.instance, "images": job.request.count,
                  "tries": self.settings.job_retries + 1,
                  **({"batch": job.batch_key} if job.batch_key else {})},
            # Retries here are for abandoned jobs (a worker that died mid-job); a job that fails on
            # its own sets retries_left to 0 before raising, so bad input is never run twice.
            retry=Retry(max=self.settings.job_retries) if self.settings.job_retries else None,
        )
        FairQueue._owner_for_push[rq_job.id] = owner
        q.enqueue_job(rq_job)
        return Enqueued(job.job_id, job.priority, self.position(job.job_id, job.priority) or 0)

    def position(self, job_id: str, priority: str | None = None) -> int | None:
        """Jobs ahead of this one across all priorities; None when it is no longer waiting."""
        ahead = 0
        for p in PRIORITIES:
            q = self.queues[p]
            if priority in (None, p):
                pos = self.connection.lpos(q.key, job_id)
                if pos is not None:
                    return ahead + pos
            ahead += self.connection.llen(q.key)
        return None

    def waiting(self) -> int:
        return sum(self.connection.llen(q.key) for q in self.queues.values())

    def fetch(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except Exception:
            return None
