"""What a bot instance asks of Redis: limits, backpressure and the queue for /dream; views and cancels.

Plain synchronous redis-py and RQ, called from the bot's event loop through a thread, so the bot, the
tests and the demo share one implementation of "submit a job".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from rq.job import JobStatus

from dreamcore import fairq, metrics, redisconn, stats, votes
from dreamcore.cancel import CancelOutcome, cancel_job
from dreamcore.images import open_store
from dreamcore.job import DreamJob, make_job
from dreamcore.limit_messages import human_duration
from dreamcore.limit_store import LimitStore
from dreamcore.limiter import Limiter
from dreamcore.queue import PRIORITIES, DreamQueue, queue_names
from dreamcore.settings import Settings

log = logging.getLogger("dreambot.bot")

UNAVAILABLE = "I can't queue dreams right now (the queue is unreachable). Please try again in a minute."


@dataclass
class Outcome:
    ok: bool
    message: str = ""
    job_id: str | None = None
    position: int | None = None
    eta_s: float | None = None
    kind: str | None = None  # which limit refused it, "busy", or "unavailable"
    vote: bool = False  # a vote round: job_id is the round, two candidates queued


@dataclass
class QueuedView:
    job_id: str
    state: str  # "waiting" or "running"
    position: int | None
    eta_s: float | None
    images: int


class Backend:
    def __init__(self, settings: Settings, conn: redis.Redis | None = None):
        self.settings = settings
        # Short timeouts: the member's 3-second window matters more than one slow Redis call.
        self.conn = conn or redisconn.connect(settings, timeout_s=2.0, connect_timeout_s=1.0,
                                              health_check_interval=15, retry_on_timeout=False)
        self.queue = DreamQueue(self.conn, settings)
        self.images = open_store(settings)  # read to post results and to check a button's source image
        self.store = LimitStore(self.conn, settings)
        self.limiter = Limiter(self.conn, self.store)

    def submit(self, job: DreamJob, role_ids: list[int] | tuple[int, ...] = (),
               companions: tuple[DreamJob, ...] = ()) -> Outcome:
        """Limits, backpressure, queue. `companions` ride on `job`'s limit check (a vote round's second
        candidate): their images count against the member's quota with it, and they are queued after it."""
        o, r = job.origin, job.request
        images = r.count + sum(c.request.count for c in companions)
        try:
            decision = self.limiter.acquire(
                o.guild_id, o.user_id, job.job_id, images, r.steps, role_ids=role_ids, instance=o.instance,
                channel_id=o.channel_id, prompt=r.prompt, negative_prompt=r.negative_prompt,
                channel_nsfw=o.channel_nsfw)
            if not decision.ok:
                metrics.refused(decision.kind)
                return Outcome(False, decision.message, kind=decision.kind)
            busy = self._too_busy(images)
            if busy:
                self.limiter.release(o.guild_id, o.user_id, job.job_id, refund=True)
                metrics.refused("busy")
                return Outcome(False, busy, kind="busy")
            if decision.priority != job.priority:
                job = job.model_copy(update={"priority": decision.priority})
            queued = self.queue.enqueue(job)
            for c in companions:
                self.queue.enqueue(c.model_copy(update={"priority": job.priority}))
        except redis.RedisError as err:
            log.warning("enqueue failed", extra={"job_id": job.job_id, "error": type(err).__name__})
            try:
                self.limiter.release(o.guild_id, o.user_id, job.job_id, refund=True)
            except redis.RedisError:
                pass  # the active slot frees itself after its TTL
            metrics.refused("unavailable")
            return Outcome(False, UNAVAILABLE, kind="unavailable")
        if companions:
            eta = self._eta_for(companions[-1].job_id)
        else:
            eta = stats.etas(self.conn, {job.job_id: queued.place}).get(job.job_id) if queued.place else None
        log.info("job queued", extra={"job_id": job.job_id, "position": queued.position, "priority": job.priority,
                                      "guild_id": o.guild_id, "user_id": o.user_id, "instance": o.instance})
        return Outcome(True, job_id=job.job_id, position=queued.position, eta_s=eta)

    def submit_here(self, job: DreamJob, role_ids: list[int] | tuple[int, ...] = ()) -> Outcome:
        """/dream: a vote round in a vote channel, one job elsewhere."""
        try:
            vote = votes.is_vote_channel(self.conn, job.origin.guild_id, job.origin.channel_id)
        except redis.RedisError:
            metrics.refused("unavailable")
            return Outcome(False, UNAVAILABLE, kind="unavailable")
        if vote:
            out = self.submit_vote(job, role_ids)
            out.vote = out.ok
            return out
        return self.submit(job, role_ids)

    def submit_vote(self, job: DreamJob, role_ids: list[int] | tuple[int, ...] = ()) -> Outcome:
        """Vote mode: two candidates of the member's request that differ in one setting, one limit check."""
        kind, a, b = votes.pick(job.request)
        job_a = job.model_copy(update={"request": job.request.model_copy(update=a.overrides)})
        job_b = make_job(job.request.model_copy(update=b.overrides), job.origin)
        try:
            # Recorded before queueing: a worker may finish candidate A before this function returns.
            votes.create_round(self.conn, job_a.job_id, kind, a, b, job_a.job_id, job_b.job_id, job.request,
                               job.origin.guild_id, job.origin.channel_id, job.origin.user_id)
        except redis.RedisError:
            metrics.refused("unavailable")
            return Outcome(False, UNAVAILABLE, kind="unavailable")
        outcome = self.submit(job_a, role_ids, companions=(job_b,))
        if not outcome.ok:
            try:
                votes.drop_round(self.conn, job_a.job_id)
            except redis.RedisError:
                pass
        return outcome

    def _too_busy(self, images: int) -> str | None:
        spi = stats.seconds_per_image(self.conn)
        if spi is None:
            return None  # nothing measured yet: no basis to refuse
        ahead = fairq.totals(self.conn, queue_names()).images
        wait = stats.eta_s(ahead, images, spi, stats.worker_count(self.conn))
        if wait is not None and wait > self.settings.max_wait_min * 60:
            return (f"busy: about {human_duration(wait - images * spi)} of work is queued already "
                    f"(the limit is {self.settings.max_wait_min} min). Please try again later.")
        return None

    def _eta_for(self, job_id: str) -> float | None:
        got = stats.eta_for(self.queue, [job_id]).get(job_id)
        return None if got is None else got[1]

    def my_jobs(self, guild_id: int | None, user_id: int) -> list[QueuedView]:
        """The member's waiting and running dreams, with position and ETA."""
        owner = f"{guild_id or 0}:{user_id}"
        ids = self.queue.mine(owner)
        places = self.queue.places(ids)
        etas = stats.etas(self.conn, places)
        out = sorted((QueuedView(jid, "waiting", p.ahead, etas[jid], p.images) for jid, p in places.items()),
                     key=lambda v: v.position or 0)
        for p in PRIORITIES:
            for jid in self.queue.queues[p].started_job_registry.get_job_ids():
                job = self.queue.fetch(jid)
                if job is not None and job.meta.get("owner") == owner and job.get_status() == JobStatus.STARTED:
                    out.insert(0, QueuedView(jid, "running", None, None, int(job.meta.get("images", 1))))
        return out

    def cancel(self, job_id: str, actor_id: int, guild_id: int | None, is_admin: bool) -> CancelOutcome:
        return cancel_job(self.conn, self.queue, self.limiter, job_id, actor_id, guild_id, is_admin,
                          self.settings.failure_ttl_s)
