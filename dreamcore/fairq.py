"""Fair order for waiting dreams, between servers first and between members inside each server, at a cost
that does not grow with the queue.

The rule (start-time fair queuing, on two levels). Within a priority, every server holds one *slot* per
waiting dream, one a round, in consecutive rounds: a server with nothing waiting gets the round of the
queue's head, its next dream the round after its last slot. So servers with dreams waiting are served in
turn, one dream each a round, and a server's first waiting dream waits behind at most one dream of each
other server: a server flooding the queue with 200 dreams delays another server's first by at most one of
them. When a slot comes up, its server's own next dream runs, chosen by the same rule one level down: a
member's k-th waiting dream in the server's head round + k (members of the server's priority roles first,
the rule again among them). Rounds are fixed when a dream is queued. A dream served at its turn frees the
slot it was served on; one that leaves early (cancelled, or taken into a batch) frees its server's last slot,
so the server's other dreams move up, its slots stay consecutive, and nobody else moves back.

Costs (dreamcore.cost) are counted in hundredths of a unit. In Redis (dreamcore.keys, fairq_lua for the key
shapes): per queue a sorted set of slots, per server its slots and its jobs (per tier), per member and tier
their jobs, every waiting job by arrival, an index hash from job id to what the scripts need, and counters
(waiting cost per queue, waiting dreams and cost per server) kept in step by the same scripts. Positions,
ETAs and backpressure read a handful of keys; `reconcile` repairs counters that drifted and moves jobs an
older release queued in its one-level layout into this one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from rq import Queue
from rq.job import Job

from . import fairq_lua, keys

log = logging.getLogger(__name__)

RECOUNT_CHUNK = 200  # members walked per reconcile script: well under a millisecond each
CENTS = 100  # costs are kept in hundredths of a unit: every counter an integer


def _scripts(conn: redis.Redis) -> dict:
    cache = getattr(conn, "_dream_fairq", None)
    if cache is None:
        cache = {name: conn.register_script(getattr(fairq_lua, name))
                 for name in ("PUSH", "CLAIM_NEXT", "CLAIM_BATCH", "REMOVE", "POSITION", "WOULD_WAIT", "RUN_ORDER",
                              "MIGRATE_STEP", "RECOUNT_STEP", "RECOUNT_FINISH")}
        conn._dream_fairq = cache  # type: ignore[attr-defined]
    return cache


def _base() -> list[str]:
    return [keys.FQ, Job.redis_job_namespace_prefix]


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def cents(units: float) -> int:
    """A cost in units (dreamcore.cost) as the scripts count it."""
    return max(1, round(units * CENTS))


def push(client, job_id: str, queue_name: str, at_front: bool = False):
    """Put a job (its RQ hash already written, or written earlier in the same MULTI) in the fair queue; its
    owner, cost, tier and batch key come from the job's meta (dreamcore.queue)."""
    args = [*_base(), job_id, queue_name, "1" if at_front else "0"]
    if isinstance(client, redis.client.Pipeline):
        return client.eval(fairq_lua.PUSH, 0, *args)
    return _scripts(client)["PUSH"](args=args)


def claim_next(conn: redis.Redis, queue_names: list[str]) -> tuple[str, str] | None:
    """(RQ queue key, job id) of the next job to run, moved to RQ's intermediate list; None when empty."""
    got = _scripts(conn)["CLAIM_NEXT"](args=[*_base(), Queue.redis_queue_namespace_prefix, *queue_names])
    return None if not got else (_text(got[0]), _text(got[1]))


def claim_batch(conn: redis.Redis, batch_key: str, budget: int, window: int,
                queue_names: list[str]) -> list[tuple[str, str]]:
    """Waiting jobs with `batch_key` among the first `window` in run order, while their images fit `budget`."""
    if budget < 1 or window < 1:
        return []
    flat = _scripts(conn)["CLAIM_BATCH"](
        args=[*_base(), Queue.redis_queue_namespace_prefix, batch_key, budget, window, *queue_names])
    return [(_text(k), _text(j)) for k, j in zip(flat[::2], flat[1::2], strict=True)]


def remove(conn: redis.Redis, job_id: str) -> bool:
    return bool(_scripts(conn)["REMOVE"](args=[*_base(), job_id]))


def wait_for_push(conn: redis.Redis, timeout_s: float) -> None:
    """Block until a job is pushed (or the timeout): how an idle worker waits without polling."""
    conn.blpop([keys.FQ_BELL], timeout=max(0.01, timeout_s))


@dataclass(frozen=True)
class Place:
    ahead: int  # jobs that run before this one (0 = next)
    units_ahead: float  # their cost (in the job's own queue estimated from its mean cost per job)
    units: float  # this job's own


def _place(raw) -> Place | None:
    return None if not raw else Place(int(raw[0]), int(raw[1]) / CENTS, int(raw[2]) / CENTS)


def place(conn: redis.Redis, job_id: str, queue_names: list[str]) -> Place | None:
    return _place(_scripts(conn)["POSITION"](
        args=[*_base(), Queue.redis_queue_namespace_prefix, job_id, *queue_names]))


def places(conn: redis.Redis, job_ids: list[str], queue_names: list[str]) -> dict[str, Place]:
    if not job_ids:
        return {}
    script = _scripts(conn)["POSITION"]
    with conn.pipeline(transaction=False) as pipe:
        for jid in job_ids:
            script(args=[*_base(), Queue.redis_queue_namespace_prefix, jid, *queue_names], client=pipe)
        raw = pipe.execute()
    return {jid: p for jid, r in zip(job_ids, raw, strict=True) if (p := _place(r)) is not None}


@dataclass(frozen=True)
class Outlook:
    """Where a server's next dream would stand if it were queued now (behind its server's last slot)."""

    ahead: int
    units_ahead: float
    server_waiting: int  # the server's dreams already waiting in that queue


def server(guild_id: int | None, user_id: int) -> str:
    """The server a dream counts in between servers: its guild, or in direct messages the member alone."""
    return str(int(guild_id)) if guild_id else f"dm{int(user_id)}"


def would_wait(conn: redis.Redis, server_id: str, queue_name: str, queue_names: list[str]) -> Outlook:
    raw = _scripts(conn)["WOULD_WAIT"](
        args=[*_base(), Queue.redis_queue_namespace_prefix, server_id, queue_name, *queue_names])
    return Outlook(int(raw[0]), int(raw[1]) / CENTS, int(raw[2]))


@dataclass(frozen=True)
class Totals:
    jobs: int
    units: float
    per_queue: dict[str, int]  # jobs waiting in each queue


def totals(conn: redis.Redis, queue_names: list[str]) -> Totals:
    """Waiting jobs and their cost over every queue: a few O(1) reads."""
    with conn.pipeline(transaction=False) as pipe:
        for name in queue_names:
            pipe.zcard(keys.fair_all(name))
            pipe.zcard(keys.fair(name))
            pipe.llen(Queue.redis_queue_namespace_prefix + name)
        pipe.hmget(keys.FQ_COUNT, [f for n in queue_names for f in (f"units:{n}", f"images:{n}")])
        got = pipe.execute()
    per = {n: sum(int(x) for x in got[3 * k:3 * k + 3]) for k, n in enumerate(queue_names)}
    listed = sum(int(got[3 * k + 2]) for k in range(len(queue_names)))
    counts = got[-1]
    units = sum(int(x or 0) for x in counts[0::2]) / CENTS + sum(int(x or 0) for x in counts[1::2]) + listed
    return Totals(sum(per.values()), units, per)


def guild_waiting(conn: redis.Redis, server_id: str | int) -> int:
    """Dreams a server (fairq.server) has waiting."""
    return int(conn.hget(keys.FQ_COUNT, f"guild:{server_id}") or 0)


def guild_units(conn: redis.Redis, server_id: str | int) -> float:
    return int(conn.hget(keys.FQ_COUNT, f"gunits:{server_id}") or 0) / CENTS


def owner_jobs(conn: redis.Redis, owner: str, queue_names: list[str]) -> list[str]:
    with conn.pipeline(transaction=False) as pipe:
        for name in queue_names:
            for key in (keys.fair_member(name, "1", owner), keys.fair_member(name, "0", owner),
                        keys.fair_owner(name, owner)):
                pipe.zrange(key, 0, -1)
        got = pipe.execute()
    return [_member_job(m) for members in got for m in members]


def _member_job(member) -> str:
    return _text(member)[17:]


MIGRATE_CHUNK = 200


def migrate(conn: redis.Redis, queue_names: list[str], chunk: int = MIGRATE_CHUNK) -> int:
    """Move the jobs an older release queued in its one-level layout into the two-level one, in short
    steps, in their run order. Returns how many were waiting there."""
    moved = 0
    s = _scripts(conn)
    for name in queue_names:
        before = conn.zcard(keys.fair(name))
        while conn.zcard(keys.fair(name)):
            s["MIGRATE_STEP"](args=[*_base(), name, chunk])
        moved += before
    if moved:
        log.info("fair queue: jobs of the one-level layout moved to the two-level one", extra={"jobs": moved})
    return moved


def reconcile(conn: redis.Redis, queue_names: list[str], chunk: int = RECOUNT_CHUNK) -> dict[str, tuple[int, int]]:
    """Recount the counters from the queues, in short steps that never block Redis for long, exact however
    busy the queue is meanwhile (see fence() in fairq_lua); jobs of an older release's layout are moved
    over first. Returns {counter: (old, new)} for every counter that had drifted; {} when another reconcile
    holds the lock."""
    if not conn.set(keys.FQ_RECOUNT_LOCK, "1", nx=True, ex=keys.RECONCILE_LOCK_S):
        return {}
    s = _scripts(conn)
    try:
        migrate(conn, queue_names)
        conn.delete(keys.FQ_RECOUNT)
        conn.hset(keys.FQ_RECOUNT, mapping={"at": queue_names[0], "cursor": ""})
        for k, name in enumerate(queue_names):
            nxt = queue_names[k + 1] if k + 1 < len(queue_names) else ""
            while True:
                more = int(s["RECOUNT_STEP"](args=[*_base(), name, chunk, nxt]))
                if more < 0:
                    log.warning("reconcile lost its place; it runs again next time", extra={"queue": name})
                    conn.delete(keys.FQ_RECOUNT)
                    return {}
                if more == 0:
                    break
                conn.expire(keys.FQ_RECOUNT_LOCK, keys.RECONCILE_LOCK_S)
        flat = s["RECOUNT_FINISH"](args=_base())
    finally:
        conn.delete(keys.FQ_RECOUNT_LOCK)
    if not isinstance(flat, list):
        return {}
    changed = {_text(flat[k]): (int(flat[k + 1]), int(flat[k + 2])) for k in range(0, len(flat), 3)}
    if changed:
        log.warning("fair-queue counters repaired", extra={"changed": {k: list(v) for k, v in changed.items()}})
    return changed


def waiting_ids(conn: redis.Redis, queue_name: str, n: int = 100_000) -> list[str]:
    """The first `n` waiting job ids of one queue in run order (for tests and benches: it reads them all)."""
    return [_text(j) for j in _scripts(conn)["RUN_ORDER"](
        args=[*_base(), Queue.redis_queue_namespace_prefix, queue_name, n])]
