"""Where the fair queue keeps its state in Redis. Every key here is owned by `dreamcore.fairq`'s scripts:
each is written and deleted by them alone, and empties itself as the jobs in it are claimed or cancelled
(a sorted set or hash with no members is gone in Redis), so none carries a TTL.

RQ's own keys (job hashes, queue lists, registries) are always named through RQ (`Job.key`,
`Queue.key`, `Queue.intermediate_queue_key`), never spelled out here.

| key | type | what |
|---|---|---|
| `dream:fq:<queue>` | zset | waiting job members, score = fair round; ties by member (arrival sequence) |
| `dream:fq:<queue>:o:<owner>` | zset | one member's waiting jobs in that queue (its round counter) |
| `dream:fq:jobs` | hash | job id -> "queue, member, owner, guild, images, batch key, tries" |
| `dream:fq:count` | hash | `images:<queue>` waiting images, `guild:<id>` waiting dreams |
| `dream:fq:seq` | string | arrival sequence |
| `dream:fq:bell` | list | wakes idle workers (at most 64 tokens, trimmed on every push) |
| `dream:fq:recount` | hash | a reconcile in progress: its cursor and tallies (deleted when it ends) |
| `dream:fq:recount:lock` | string | one reconcile at a time (TTL RECONCILE_LOCK_S) |
| `dream:attempts:<job>` | string | relay delivery attempts (TTL ATTEMPTS_TTL_S) |
"""

from __future__ import annotations

FQ = "dream:fq:"  # the prefix the scripts build every fair-queue key from
FQ_JOBS = FQ + "jobs"
FQ_COUNT = FQ + "count"
FQ_BELL = FQ + "bell"
FQ_RECOUNT = FQ + "recount"
FQ_RECOUNT_LOCK = FQ + "recount:lock"
RECONCILE_LOCK_S = 120
ATTEMPTS_TTL_S = 86400


def fair(queue_name: str) -> str:
    return f"{FQ}{queue_name}"


def fair_owner(queue_name: str, owner: str) -> str:
    return f"{FQ}{queue_name}:o:{owner}"


def attempts(job_id: str) -> str:
    return f"dream:attempts:{job_id}"
