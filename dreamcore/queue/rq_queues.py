"""The dream queue: RQ on Redis, three priorities and relax, JSON payloads, fair order across members.

Bots call `DreamQueue.enqueue`; workers listen on `queue_names()` in priority order. Jobs name their
function as a dotted string so a bot host never imports the worker (or torch). RQ keeps the job hashes,
registries, retries and leases; the order in which waiting jobs run is kept by dreamcore.queue.fair_order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from rq import Queue, Retry
from rq.exceptions import DequeueTimeout
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.serializers import JSONSerializer

from .. import cost, delivery, redisconn
from ..job import DreamJob
from ..modes import RELAX_QUEUE
from ..settings import Settings
from . import fair_order, rq_private

# The operator's three grants (dreamcore.servers), then relax dreams (dreamcore.modes), which a worker takes
# only when every queue before it is empty.
PRIORITIES = ("high", "default", "low", RELAX_QUEUE)
TASK = "worker.tasks.run_dream"


def queue_name(priority: str) -> str:
    return f"dream-{priority}"


def queue_names() -> list[str]:
    return [queue_name(p) for p in PRIORITIES]


def claim_companions(connection: redis.Redis, batch_key: str, budget: int, window: int,
                     relax: bool = False) -> list[tuple[str, str]]:
    """Take waiting dreams that can join a batch with key `batch_key`: (queue name, job id) pairs, at most
    `budget` images in all, found among the first `window` waiting jobs (claim_batch.lua). Relax dreams
    join only a relax batch (`relax`): riding along, they would make a fast batch slower."""
    names = queue_names() if relax else queue_names()[:-1]
    return [(key.removeprefix(Queue.redis_queue_namespace_prefix), job_id)
            for key, job_id in fair_order.claim_batch(connection, batch_key, budget, window, names)]


class FairQueue(Queue):
    """An RQ queue whose jobs wait in the fair queue (fair_order) instead of RQ's plain list.

    Every push RQ makes through it (an enqueue, a retry, a requeue) lands there; workers take jobs through
    `dequeue_any`, which also drains RQ's own list first (claim_next.lua says when that goes)."""

    def push_job_id(self, job_id, pipeline=None, at_front=False):
        fair_order.push(pipeline if pipeline is not None else self.connection, job_id, self.name, at_front)

    @classmethod
    def dequeue_any(cls, queues, timeout, connection, job_class=None, serializer=None, death_penalty_class=None):
        names = [q.name for q in queues]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got = fair_order.claim_next(connection, names)
            if got is not None:
                queue_key, job_id = got
                result = rq_private.fetch_dequeued_job(cls, connection, queue_key, job_id, job_class,
                                                       serializer, death_penalty_class)
                if result is None:  # its hash expired while it waited: nothing to run
                    connection.lrem(IntermediateQueue.get_intermediate_queue_key(queue_key), 1, job_id)
                    continue
                return result
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise DequeueTimeout(timeout, [q.key for q in queues])
            fair_order.wait_for_push(connection, min(left, 5.0))


@dataclass
class Enqueued:
    job_id: str
    priority: str
    position: int  # 0 = next to run
    place: fair_order.Place | None = None  # None: taken by a worker already


class DreamQueue:
    def __init__(self, connection: redis.Redis, settings: Settings):
        self.connection = connection
        self.settings = settings
        self.queues = {
            p: FairQueue(queue_name(p), connection=connection, serializer=JSONSerializer) for p in PRIORITIES
        }

    def _rq_job(self, job: DreamJob, units: float, tier: int) -> Job:
        q = self.queues[job.priority]
        owner = fair_order.owner_of(job.origin.guild_id, job.origin.user_id)
        rq_job = q.create_job(
            TASK,
            # The worker gets no interaction token: only the bot's own record (dreamcore.delivery) has it.
            args=[job.without_token().to_dict()],
            job_id=job.job_id,
            timeout=self.settings.job_timeout_s,
            result_ttl=self.settings.result_ttl_s,
            failure_ttl=self.settings.failure_ttl_s,
            # No queued-time limit: a dream that waits past the result TTL (a deep queue, a pool that was
            # down) is still run and posted, to the channel once its interaction token has lapsed. With a
            # TTL its hash would expire while it waited and the member would never hear of it.
            ttl=None,
            description=f"dream {job.job_id} for {owner} via {job.origin.instance}",
            meta={"owner": owner, "instance": job.origin.instance, "images": job.request.count,
                  "cost": fair_order.cents(units), "tier": int(bool(tier)), "tries": self.settings.job_retries + 1,
                  **({"batch": job.batch_key} if job.batch_key else {})},
            # Retries here are for abandoned jobs (a worker that died mid-job); a job that fails on
            # its own sets retries_left to 0 before raising, so bad input is never run twice.
            retry=Retry(max=self.settings.job_retries) if self.settings.job_retries else None,
        )
        return rq_job

    def units(self, job: DreamJob, size: tuple[int, int] | None = None) -> float:
        """What `job` costs (dreamcore.cost); `size` where its output is not its request's (an upscale)."""
        return cost.of_job(job, self.settings.upscale_tile, self.settings.upscale_overlap, size)

    def enqueue(self, job: DreamJob, units: float | None = None, tier: int = 0) -> Enqueued:
        """Queue one job costing `units` (dreamcore.cost; by default its estimate at the request's size), in
        its server's priority `tier` (1: a priority role), with the bot's own record of it (dreamcore.delivery) in the same transaction. With replicas
        (dreamcore.redisconn), only once a replica has it too: raises NotReplicated (the job taken back
        out, as far as the primary still answers) when none has it in time, so the member is never told
        "queued" about a dream a failover could lose."""
        units = self.units(job) if units is None else units
        q, rq_job = self.queues[job.priority], self._rq_job(job, units, tier)

        def write(pipe):
            q.enqueue_job(rq_job, pipeline=pipe)  # first: RQ starts the MULTI itself
            delivery.record(pipe, job, self.settings)

        try:
            redisconn.transaction(self.connection, self.settings, write)
        except redisconn.NotReplicated as err:
            try:
                err.taken_back = self.take_back(job.job_id)
            except redis.RedisError:
                err.taken_back = True  # the primary is gone too: the job went with it
            raise
        place = self.place(job.job_id)
        return Enqueued(job.job_id, job.priority, place.ahead if place else 0, place)

    def enqueue_many(self, jobs: list[DreamJob]) -> None:
        """Queue several jobs in one round trip, in order (each as `enqueue` would)."""
        with self.connection.pipeline() as pipe:
            for job in jobs:
                self.queues[job.priority].enqueue_job(self._rq_job(job, self.units(job), 0), pipeline=pipe)
                delivery.record(pipe, job, self.settings)
            pipe.execute()

    def take_back(self, job_id: str) -> bool:
        """Undo an enqueue the member was not told of: True when the job was still waiting (and is gone
        now), False when a worker already took it. Raises redis.RedisError when Redis can't be reached."""
        removed = self.remove(job_id)
        if removed:
            self.connection.delete(Job.key_for(job_id), delivery.record_key(job_id))
        return removed

    def place(self, job_id: str) -> fair_order.Place | None:
        """Jobs and images ahead of this one; None when it is no longer waiting. O(log n)."""
        return fair_order.place(self.connection, job_id, queue_names())

    def places(self, job_ids: list[str]) -> dict[str, fair_order.Place]:
        """`place` for many jobs in one pipelined round trip."""
        return fair_order.places(self.connection, job_ids, queue_names())

    def position(self, job_id: str, priority: str | None = None) -> int | None:
        """Jobs ahead of this one across all priorities; None when it is no longer waiting."""
        p = self.place(job_id)
        return None if p is None else p.ahead

    def waiting(self) -> int:
        return fair_order.totals(self.connection, queue_names()).jobs

    def remove(self, job_id: str) -> bool:
        """Take a waiting job out of the queue (a cancel); False when it was not waiting."""
        removed = fair_order.remove(self.connection, job_id)
        # Compatibility: a job waiting in RQ's own list; goes when claim_next.lua's draining of it goes.
        for q in self.queues.values():
            removed = bool(self.connection.lrem(q.key, 1, job_id)) or removed
        return removed

    def would_wait(self, guild_id: int | None, user_id: int, priority: str) -> fair_order.Outlook:
        """Where this server's next dream in `priority` would stand if queued now (in direct messages the
        member's own: fair_order.server_of): O(log n)."""
        return fair_order.would_wait(self.connection, fair_order.server_of(guild_id, user_id),
                                     queue_name(priority), queue_names())

    def mine(self, owner: str) -> list[str]:
        """An owner's waiting job ids, in the order they will run within each priority."""
        return fair_order.owner_jobs(self.connection, owner, queue_names())

    def fetch(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except Exception:
            return None
