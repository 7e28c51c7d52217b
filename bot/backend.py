"""What a bot instance asks of Redis: limits, backpressure and the queue for /dream; views and cancels.

Plain synchronous redis-py and RQ, called from the bot's event loop through a thread, so the bot, the
tests and the demo share one implementation of "submit a job".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis
from rq.job import JobStatus

from dreamcore import delivery, metrics, preferences, redisconn, stats, votes
from dreamcore.cancel import CancelOutcome, cancel_job
from dreamcore.i18n import N_, _, duration, ngettext
from dreamcore.images import open_store
from dreamcore.job import DreamJob, make_job
from dreamcore.limits.limiter import Limiter
from dreamcore.limits.stored import LimitStore
from dreamcore.modes import RELAX_QUEUE
from dreamcore.preferences import Preferences
from dreamcore.queue.fair_order import owner_of
from dreamcore.queue.rq_queues import PRIORITIES, DreamQueue
from dreamcore.settings import Settings

log = logging.getLogger("dreambot.bot")

# Marked here, translated where they are said (`_(UNAVAILABLE)`): an Outcome's message is in its member's
# language already.
UNAVAILABLE = N_("I can't queue dreams right now (the queue is unreachable). Please try again in a minute.")
# Said when the queue took the dream but Redis failed before that could be confirmed and it could not be taken
# back: it may well come, so never "can't queue".
UNCONFIRMED = N_("I couldn't confirm that your dream was queued (the queue stopped answering half-way). It may "
                 "still come: /dreamqueue shows it if it is waiting.")
NO_DMS = N_("I don't dream in direct messages here; use /dream in a server I'm in.")


@dataclass
class Outcome:
    ok: bool
    message: str = ""  # what the member reads, already in their language
    job_id: str | None = None
    position: int | None = None
    eta_s: float | None = None
    kind: str | None = None  # which limit refused it, "busy", "dm", "unavailable" or "unconfirmed"
    vote: bool = False  # a vote round: job_id is the round, two candidates queued
    job: DreamJob | None = None  # what was queued, with the member's and server's defaults in it (submit_here)
    notes: list[str] = field(default_factory=list)  # the member's defaults the server lowered (submit_here)


@dataclass
class QueuedView:
    job_id: str
    state: str  # "waiting" or "running"
    position: int | None
    eta_s: float | None
    images: int | None  # known for a running dream (RQ's meta); a waiting one shows its place instead


class Backend:
    def __init__(self, settings: Settings, conn: redis.Redis | None = None):
        self.settings = settings
        # Short timeouts: the member's 3-second window matters more than one slow Redis call.
        self.conn = conn or redisconn.connect(settings, timeout_s=redisconn.BOT_READ_TIMEOUT_S, connect_timeout_s=1.0,
                                              health_check_interval=15, retry_on_timeout=False)
        self.queue = DreamQueue(self.conn, settings)
        self.images = open_store(settings)  # read to post results and to check a button's source image
        self.store = LimitStore(self.conn, settings)
        self.limiter = Limiter(self.conn, self.store)

    def submit(self, job: DreamJob, role_ids: list[int] | tuple[int, ...] = (),
               companions: tuple[DreamJob, ...] = (), size: tuple[int, int] | None = None,
               deadline: float | None = None) -> Outcome:
        """Limits, backpressure, queue. `companions` ride on `job`'s limit check (a vote round's second
        candidate): their cost counts against the member's quota with it, and they are queued after it.
        `size`: the output size where it is not the request's (an upscale's), for its cost. Past `deadline`
        (time.monotonic()) nothing more is queued: what was taken is given back and the member told so."""
        o, r = job.origin, job.request
        if o.guild_id is None and not self.settings.direct_messages:
            return Outcome(False, _(NO_DMS), kind="dm")
        units = self.queue.units(job, size)
        every = [(job, units), *((c, self.queue.units(c)) for c in companions)]
        total = sum(u for _job, u in every)
        images = r.count + sum(c.request.count for c in companions)
        queued = None
        try:
            decision = self.limiter.acquire(
                o.guild_id, o.user_id, job.job_id, images, r.steps, role_ids=role_ids, instance=o.instance,
                channel_id=o.channel_id, prompt=r.prompt, negative_prompt=r.negative_prompt,
                channel_nsfw=o.channel_nsfw, units=total, mode=r.mode)
            if not decision.ok:
                metrics.refused(decision.kind)
                return Outcome(False, decision.message, kind=decision.kind)
            # A relax dream waits for idle GPUs by design: no backpressure (the server's queue cap still holds).
            priority = RELAX_QUEUE if r.mode == "relax" else decision.priority
            busy = None if priority == RELAX_QUEUE else self._too_busy(o.guild_id, o.user_id, priority, total,
                                                                        stats.speed_key(job))
            late = deadline is not None and time.monotonic() > deadline
            if busy or late:
                self.limiter.release(o.guild_id, o.user_id, job.job_id, refund=True)
                metrics.refused("busy" if busy else "unavailable")
                return Outcome(False, busy, kind="busy") if busy else Outcome(False, _(UNAVAILABLE), kind="unavailable")
            for each, cost in every:
                each = each.model_copy(update={"priority": priority})
                got = self.queue.enqueue(each, cost, tier=decision.tier)
                queued = queued or got
        except redis.RedisError as err:
            log.warning("enqueue failed", extra={"job_id": job.job_id, "error": type(err).__name__})
            if not self._taken_back(err, [j for j, _cost in every]):
                # Queued before the error reached us, and a worker has it already: it will come.
                metrics.refused("unconfirmed")
                return Outcome(False, _(UNCONFIRMED), kind="unconfirmed")
            try:
                self.limiter.release(o.guild_id, o.user_id, job.job_id, refund=True)
            except redis.RedisError:
                pass  # the active slot frees itself after its TTL
            metrics.refused("unavailable")
            return Outcome(False, _(UNAVAILABLE), kind="unavailable")
        speed = stats.Speed(self.conn)
        if companions:
            last = self.queue.place(companions[-1].job_id)
            eta = speed.eta_s(last.units_ahead, last.units) if last else None
        else:
            eta = speed.eta_s(queued.place.units_ahead, queued.place.units, stats.speed_key(job)) if queued.place else None
        log.info("job queued", extra={"job_id": job.job_id, "position": queued.position, "priority": priority,
                                      "tier": decision.tier, "units": units, "guild_id": o.guild_id,
                                      "user_id": o.user_id, "instance": o.instance})
        return Outcome(True, job_id=job.job_id, position=queued.position, eta_s=eta)

    def _taken_back(self, err: redis.RedisError, jobs: list[DreamJob]) -> bool:
        """After an error mid-submit: True when none of `jobs` is queued any more (never written, or still
        waiting and taken back now), so "can't queue" is true; False when a worker already holds one of them
        (it will come), or when that can't be told: Redis still unreachable after a call that timed out (its
        write may well have landed). A refused connection wrote nothing."""
        if isinstance(err, redisconn.NotReplicated) and not getattr(err, "taken_back", True):
            return False
        try:
            for job in jobs:
                if self.conn.exists(delivery.record_key(job.job_id)) and not self.queue.take_back(job.job_id):
                    return False
        except redis.RedisError:
            return not isinstance(err, redis.TimeoutError)
        return True

    def submit_here(self, job: DreamJob, role_ids: list[int] | tuple[int, ...] = (),
                    deadline: float | None = None, left_out: frozenset[str] = frozenset(),
                    prefs: Preferences | None = None) -> Outcome:
        """/dream: a vote round in a vote channel, one job elsewhere. `left_out`: the options the member left
        out, which take their own defaults (`prefs`), else the server's (dreamcore.preferences.apply); the
        notes of a default the server lowered come back in Outcome.notes."""
        try:
            vote = votes.is_vote_channel(self.conn, job.origin.guild_id, job.origin.channel_id)
            job, notes = preferences.apply(job, self.store.get(job.origin.guild_id), prefs or Preferences(),
                                           left_out)
        except redis.RedisError:
            metrics.refused("unavailable")
            return Outcome(False, _(UNAVAILABLE), kind="unavailable")
        if vote and job.origin.private:  # a vote round is the channel's to judge: never private
            job = job.model_copy(update={"origin": job.origin.model_copy(update={"private": False})})
            notes.append(_("Vote rounds are public, so this one isn't private."))
        if vote:
            out = self.submit_vote(job, role_ids, deadline)
            out.vote = out.ok
        else:
            out = self.submit(job, role_ids, deadline=deadline)
        out.job = job
        out.notes = notes
        return out

    def submit_vote(self, job: DreamJob, role_ids: list[int] | tuple[int, ...] = (),
                    deadline: float | None = None) -> Outcome:
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
            return Outcome(False, _(UNAVAILABLE), kind="unavailable")
        outcome = self.submit(job_a, role_ids, companions=(job_b,), deadline=deadline)
        if not outcome.ok:
            try:
                votes.drop_round(self.conn, job_a.job_id)
            except redis.RedisError:
                pass
        return outcome

    def _too_busy(self, guild_id: int | None, user_id: int, priority: str, units: float, kind: str) -> str | None:
        """Backpressure per server: a server whose next dream would wait past DREAMBOT_MAX_WAIT_MIN is told
        "busy", while the others, whose dreams stand ahead of its backlog (dreamcore.queue.fair_order), are served."""
        speed = stats.Speed(self.conn)
        if speed.overall is None:
            return None  # nothing measured yet: no basis to refuse
        outlook = self.queue.would_wait(guild_id, user_id, priority)
        wait = speed.eta_s(outlook.units_ahead, units, kind)
        if wait is not None and wait > self.settings.max_wait_min * 60:
            about, limit = duration(wait - units * (speed.of(kind) or 0)), self.settings.max_wait_min
            n = outlook.server_waiting
            if n:
                return ngettext(
                    "busy: this server has {n} dream waiting and a new one would wait about {wait} (the limit is "
                    "{limit} min). Please try again later.",
                    "busy: this server has {n} dreams waiting and a new one would wait about {wait} (the limit is "
                    "{limit} min). Please try again later.", n).format(n=n, wait=about, limit=limit)
            return _("busy: a new one would wait about {wait} (the limit is {limit} min). Please try again later."
                     ).format(wait=about, limit=limit)
        return None

    def my_jobs(self, guild_id: int | None, user_id: int) -> list[QueuedView]:
        """The member's waiting and running dreams, with position and ETA."""
        owner = owner_of(guild_id, user_id)
        ids = self.queue.mine(owner)
        places = self.queue.places(ids)
        etas = stats.etas(self.conn, places)
        out = sorted((QueuedView(jid, "waiting", p.ahead, etas[jid], None) for jid, p in places.items()),
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

