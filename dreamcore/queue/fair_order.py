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

Costs (dreamcore.cost) are counted in hundredths of a unit. In Redis (dreamcore.keys' FQ_* shapes): per queue
a sorted set of slots, per server its slots and its jobs (per tier), per member and tier their jobs, every
waiting job by arrival, an index hash from job id to what the scripts need, and counters
(waiting cost per queue, waiting dreams and cost per server) kept in step by the same scripts. Positions,
ETAs and backpressure read a handful of keys; `reconcile` repairs counters that drifted and moves jobs an
older release queued in its one-level layout into this one.

The scripts are the `.lua` files beside this module (prelude.lua shared by all), run through dreamcore.lua
with every format this module and they share handed over as constants (LUA_CONSTS), never spelled in Lua.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from pathlib import Path

import redis
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job

from .. import keys
from ..lua import LuaScript

log = logging.getLogger(__name__)

RECOUNT_CHUNK = 200  # members walked per reconcile script: well under a millisecond each
MIGRATE_CHUNK = 200
CENTS = 100  # costs are kept in hundredths of a unit: every counter an integer

# A member, as RQ's meta and the fair queue name them: "<guild>:<user>", guild DM_GUILD in direct messages.
OWNER_SEP = ":"
DM_GUILD = "0"
DM_SERVER = "dm{user}"  # the server a member counts in alone in direct messages (a guild's is its id)
# An entry of the fair queue's sorted sets: the arrival sequence, zero-padded so equal rounds order by arrival,
# then a job id (a job's entry) or a server (its slot). Python's % and Lua's string.format read it alike.
ENTRY = "%016d:%s"
ENTRY_HEAD = len(ENTRY % (0, ""))  # what comes before the job id or the server
PRIORITY_TIER, PLAIN_TIER = "1", "0"  # a server's jobs of its priority roles, which run first; everyone else's


def owner_of(guild_id: int | None, user_id: int) -> str:
    return f"{guild_id or DM_GUILD}{OWNER_SEP}{user_id}"


def parse_owner(owner: str) -> tuple[str, str]:
    """(guild, user) of an owner_of string, as text (the user "" when it has no separator)."""
    guild, _sep, user = owner.partition(OWNER_SEP)
    return guild, user


def server_of(guild_id: int | None, user_id: int) -> str:
    """The server a dream counts in between servers: its guild, or in direct messages the member alone."""
    return str(int(guild_id)) if guild_id else DM_SERVER.format(user=int(user_id))


def entry_job(member: bytes | str) -> str:
    """The job id of a job's entry."""
    return _text(member)[ENTRY_HEAD:]


FIELDS = ("q", "server", "tier", "owner", "user", "list")  # the one order a template's fields come in


def _lua(value: str | int) -> str | int | tuple[str, ...]:
    """A constant as the scripts take it: a template with {fields} (dreamcore.keys) split, as str.format reads
    it, into the text around its fields ("a{q}:b{server}" -> ("a", ":b", "")), which fill() in prelude.lua
    joins with the fields' values, given in FIELDS' order; one whose only field ends it as the text before
    it ("units:{q}" -> "units:"), a string, which Lua builds on each call for less than a table; anything
    else as it is."""
    if not isinstance(value, str) or "{" not in value:
        return value
    split, fields = [""], []
    for text, field, _spec, _conversion in string.Formatter().parse(value):
        split[-1] += text
        if field is not None:
            fields.append(field)
            split.append("")
    if fields != sorted(fields, key=FIELDS.index) or len(fields) > 3:
        raise ValueError(f"{value}: fill() takes at most three fields, in the order {FIELDS}")
    return split[0] if split[1:] == [""] else tuple(split)


LUA_CONSTS = {name: _lua(value) for name, value in {
    # every FQ_* shape of dreamcore.keys, named without its "FQ_": C.JOBS, C.SLOTS, C.SERVER_JOBS, ...
    **{name.removeprefix("FQ_"): getattr(keys, name) for name in dir(keys) if name.startswith("FQ_")},
    "ENTRY": ENTRY, "ENTRY_HEAD": ENTRY_HEAD, "OWNER_SEP": OWNER_SEP, "DM_GUILD": DM_GUILD,
    "DM_SERVER": DM_SERVER, "PRIORITY_TIER": PRIORITY_TIER, "PLAIN_TIER": PLAIN_TIER, "CENTS": CENTS,
    # RQ's keys, as RQ names them
    "QUEUE_PREFIX": Queue.redis_queue_namespace_prefix, "JOB_PREFIX": Job.redis_job_namespace_prefix,
    "INTERMEDIATE": IntermediateQueue.get_intermediate_queue_key("{list}"),
}.items()}


def _script(name: str) -> LuaScript:
    here = Path(__file__).parent
    return LuaScript(here / f"{name}.lua", consts=LUA_CONSTS, include=[here / "prelude.lua"])


PUSH = _script("push")
CLAIM_NEXT = _script("claim_next")
CLAIM_BATCH = _script("claim_batch")
REMOVE = _script("remove")
POSITION = _script("position")
WOULD_WAIT = _script("would_wait")
RUN_ORDER = _script("run_order")
MIGRATE_STEP = _script("migrate_step")
RECOUNT_STEP = _script("recount_step")
RECOUNT_FINISH = _script("recount_finish")


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def cents(units: float) -> int:
    """A cost in units (dreamcore.cost) as the scripts count it."""
    return max(1, round(units * CENTS))


def push(client, job_id: str, queue_name: str, at_front: bool = False):
    """Put a job (its RQ hash already written, or written earlier in the same MULTI) in the fair queue; its
    owner, cost, tier and batch key come from the job's meta (dreamcore.queue.rq_queues)."""
    args = {"job_id": job_id, "queue": queue_name, "front": bool(at_front)}
    if isinstance(client, redis.client.Pipeline):
        return PUSH.eval_in(client, args=args)
    return PUSH(client, args=args)


def claim_next(conn: redis.Redis, queue_names: list[str]) -> tuple[str, str] | None:
    """(RQ queue key, job id) of the next job to run, moved to RQ's intermediate list; None when empty."""
    got = CLAIM_NEXT(conn, args={"queues": queue_names})
    return None if not got else (_text(got[0]), _text(got[1]))


def claim_batch(conn: redis.Redis, batch_key: str, budget: int, window: int,
                queue_names: list[str]) -> list[tuple[str, str]]:
    """Waiting jobs with `batch_key` among the first `window` in run order, while their images fit `budget`."""
    if budget < 1 or window < 1:
        return []
    flat = CLAIM_BATCH(conn, args={"batch": batch_key, "budget": budget, "window": window, "queues": queue_names})
    return [(_text(k), _text(j)) for k, j in zip(flat[::2], flat[1::2], strict=True)]


def remove(conn: redis.Redis, job_id: str) -> bool:
    return bool(REMOVE(conn, args={"job_id": job_id}))


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
    return _place(POSITION(conn, args={"job_id": job_id, "queues": queue_names}))


def places(conn: redis.Redis, job_ids: list[str], queue_names: list[str]) -> dict[str, Place]:
    if not job_ids:
        return {}
    with conn.pipeline(transaction=False) as pipe:
        for jid in job_ids:
            POSITION(conn, args={"job_id": jid, "queues": queue_names}, client=pipe)
        raw = pipe.execute()
    return {jid: p for jid, r in zip(job_ids, raw, strict=True) if (p := _place(r)) is not None}


@dataclass(frozen=True)
class Outlook:
    """Where a server's next dream would stand if it were queued now (behind its server's last slot)."""

    ahead: int
    units_ahead: float
    server_waiting: int  # the server's dreams already waiting in that queue


def would_wait(conn: redis.Redis, server_id: str, queue_name: str, queue_names: list[str]) -> Outlook:
    raw = WOULD_WAIT(conn, args={"server": server_id, "queue": queue_name, "queues": queue_names})
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
            pipe.zcard(keys.FQ_ALL.format(q=name))
            # Compatibility: counts the one-level layout and RQ's own list; goes when both go
            # (claim_next.lua).
            pipe.zcard(keys.FQ_FLAT.format(q=name))
            pipe.llen(Queue.redis_queue_namespace_prefix + name)
        pipe.hmget(keys.FQ_COUNT, [f for n in queue_names for f in (keys.FQ_UNITS.format(q=n),
                                                                     keys.FQ_FLAT_IMAGES.format(q=n))])
        got = pipe.execute()
    per = {n: sum(int(x) for x in got[3 * k:3 * k + 3]) for k, n in enumerate(queue_names)}
    listed = sum(int(got[3 * k + 2]) for k in range(len(queue_names)))
    counts = got[-1]
    units = sum(int(x or 0) for x in counts[0::2]) / CENTS + sum(int(x or 0) for x in counts[1::2]) + listed
    return Totals(sum(per.values()), units, per)


def guild_waiting(conn: redis.Redis, server_id: str | int) -> int:
    """Dreams a server (server_of) has waiting."""
    return int(conn.hget(keys.FQ_COUNT, keys.FQ_SERVER_WAITING.format(server=server_id)) or 0)


def guild_units(conn: redis.Redis, server_id: str | int) -> float:
    return int(conn.hget(keys.FQ_COUNT, keys.FQ_SERVER_UNITS.format(server=server_id)) or 0) / CENTS


def owner_jobs(conn: redis.Redis, owner: str, queue_names: list[str]) -> list[str]:
    with conn.pipeline(transaction=False) as pipe:
        for name in queue_names:
            for tier in (PRIORITY_TIER, PLAIN_TIER):
                pipe.zrange(keys.FQ_MEMBER_JOBS.format(q=name, tier=tier, owner=owner), 0, -1)
            # Compatibility: the one-level layout's jobs of the member; goes when the one-level layout goes
            # (keys.FQ_FLAT).
            pipe.zrange(keys.FQ_FLAT_OWNER.format(q=name, owner=owner), 0, -1)
        got = pipe.execute()
    return [entry_job(m) for members in got for m in members]


# Compatibility: moves the one-level layout's jobs into the two-level one; goes when the one-level layout
# goes (keys.FQ_FLAT).
def migrate(conn: redis.Redis, queue_names: list[str], chunk: int = MIGRATE_CHUNK) -> int:
    """Move the jobs an older release queued in its one-level layout into the two-level one, in short
    steps, in their run order. Returns how many were waiting there."""
    moved = 0
    for name in queue_names:
        flat = keys.FQ_FLAT.format(q=name)
        before = conn.zcard(flat)
        while conn.zcard(flat):
            MIGRATE_STEP(conn, args={"queue": name, "chunk": chunk})
        moved += before
    if moved:
        log.info("fair queue: jobs of the one-level layout moved to the two-level one", extra={"jobs": moved})
    return moved


def reconcile(conn: redis.Redis, queue_names: list[str], chunk: int = RECOUNT_CHUNK) -> dict[str, tuple[int, int]]:
    """Recount the counters from the queues, in short steps that never block Redis for long, exact however
    busy the queue is meanwhile (see fence() in prelude.lua); jobs of an older release's layout are moved
    over first. Returns {counter: (old, new)} for every counter that had drifted; {} when another reconcile
    holds the lock."""
    if not conn.set(keys.FQ_RECOUNT_LOCK, "1", nx=True, ex=keys.RECONCILE_LOCK_S):
        return {}
    try:
        migrate(conn, queue_names)
        conn.delete(keys.FQ_RECOUNT)
        conn.hset(keys.FQ_RECOUNT, mapping={keys.FQ_RECOUNT_AT: queue_names[0], keys.FQ_RECOUNT_CURSOR: ""})
        for k, name in enumerate(queue_names):
            nxt = queue_names[k + 1] if k + 1 < len(queue_names) else ""
            while True:
                more = int(RECOUNT_STEP(conn, args={"queue": name, "chunk": chunk, "next": nxt}))
                if more < 0:
                    log.warning("reconcile lost its place; it runs again next time", extra={"queue": name})
                    conn.delete(keys.FQ_RECOUNT)
                    return {}
                if more == 0:
                    break
                conn.expire(keys.FQ_RECOUNT_LOCK, keys.RECONCILE_LOCK_S)
        flat = RECOUNT_FINISH(conn)
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
    return [_text(j) for j in RUN_ORDER(conn, args={"queue": queue_name, "n": n})]
