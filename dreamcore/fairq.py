"""Fair order for waiting dreams, at a cost that does not grow with the queue.

The rule (start-time fair queuing): each priority's waiting jobs are ordered by (round, arrival). A job
queued by a member with no job waiting in that priority gets the round of the queue's head; a member's
next job gets the round after their last waiting one. So a member's k-th waiting dream is in round
head + k and never waits behind another member's dream of a later round: twenty dreams from one member
delay somebody's first dream by at most one of them. Rounds are fixed when a job is queued, so a job
only ever moves forward; a cancelled or batch-claimed job leaves its neighbours where they are.

In Redis (dreamcore.keys): a sorted set per queue scored by round (ties broken by the member string,
which starts with the arrival sequence), a sorted set per member and queue (their last round, their
count), an index hash from job id to what the scripts need, and counters (waiting images per queue,
waiting dreams per guild) kept in step by the same scripts (dreamcore.fairq_lua). Positions, ETAs and
backpressure read a handful of keys; `reconcile` repairs counters that drifted.
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


def _scripts(conn: redis.Redis) -> dict:
    cache = getattr(conn, "_dream_fairq", None)
    if cache is None:
        cache = {name: conn.register_script(getattr(fairq_lua, name))
                 for name in ("PUSH", "CLAIM_NEXT", "CLAIM_BATCH", "REMOVE", "POSITION", "RECOUNT_STEP",
                              "RECOUNT_FINISH")}
        conn._dream_fairq = cache  # type: ignore[attr-defined]
    return cache


def _base() -> list[str]:
    return [keys.FQ, Job.redis_job_namespace_prefix]


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def push(client, job_id: str, queue_name: str, at_front: bool = False):
    """Put a job (its RQ hash already written, or written earlier in the same MULTI) in the fair queue."""
    script = fairq_lua.PUSH
    return client.eval(script, 0, *_base(), job_id, queue_name, "1" if at_front else "0") \
        if isinstance(client, redis.client.Pipeline) else \
        _scripts(client)["PUSH"](args=[*_base(), job_id, queue_name, "1" if at_front else "0"])


def claim_next(conn: redis.Redis, queue_names: list[str]) -> tuple[str, str] | None:
    """(RQ queue key, job id) of the next job to run, moved to RQ's intermediate list; None when empty."""
    got = _scripts(conn)["CLAIM_NEXT"](args=[*_base(), Queue.redis_queue_namespace_prefix, *queue_names])
    return None if not got else (_text(got[0]), _text(got[1]))


def claim_batch(conn: redis.Redis, batch_key: str, budget: int, window: int,
                queue_names: list[str]) -> list[tuple[str, str]]:
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
    images_ahead: int  # their images (in the job's own queue estimated from its mean images per job)
    images: int  # this job's own


def _place(raw) -> Place | None:
    return None if not raw else Place(int(raw[0]), int(raw[1]), int(raw[2]))


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
class Totals:
    jobs: int
    images: int
    per_queue: dict[str, int]  # jobs waiting in each queue


def totals(conn: redis.Redis, queue_names: list[str]) -> Totals:
    """Waiting jobs and images over every queue: a few O(1) reads."""
    with conn.pipeline(transaction=False) as pipe:
        for name in queue_names:
            pipe.zcard(keys.fair(name))
            pipe.llen(Queue.redis_queue_namespace_prefix + name)
        pipe.hmget(keys.FQ_COUNT, [f"images:{n}" for n in queue_names])
        got = pipe.execute()
    per = {n: int(got[2 * k]) + int(got[2 * k + 1]) for k, n in enumerate(queue_names)}
    legacy = sum(int(got[2 * k + 1]) for k in range(len(queue_names)))
    images = sum(int(x or 0) for x in got[-1]) + legacy
    return Totals(sum(per.values()), images, per)


def guild_waiting(conn: redis.Redis, guild_id: int | None) -> int:
    return int(conn.hget(keys.FQ_COUNT, f"guild:{guild_id or 0}") or 0)


def owner_jobs(conn: redis.Redis, owner: str, queue_names: list[str]) -> list[str]:
    with conn.pipeline(transaction=False) as pipe:
        for name in queue_names:
            pipe.zrange(keys.fair_owner(name, owner), 0, -1)
        got = pipe.execute()
    return [_text(m)[17:] for members in got for m in members]


def reconcile(conn: redis.Redis, queue_names: list[str], chunk: int = RECOUNT_CHUNK) -> dict[str, tuple[int, int]]:
    """Recount the counters from the queues, in short steps that never block Redis for long, exact however
    busy the queue is meanwhile (see fence() in fairq_lua). Returns {counter: (old, new)} for every counter
    that had drifted; {} when another reconcile holds the lock."""
    if not conn.set(keys.FQ_RECOUNT_LOCK, "1", nx=True, ex=keys.RECONCILE_LOCK_S):
        return {}
    s = _scripts(conn)
    try:
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


def waiting_ids(conn: redis.Redis, queue_name: str, start: int = 0, stop: int = -1) -> list[str]:
    """Waiting job ids of one queue in run order, `start`..`stop` by rank (reads that slice only)."""
    return [_text(m)[17:] for m in conn.zrange(keys.fair(queue_name), start, stop)]
