"""Every Redis key dreambot writes, with its type, its lifetime and the module that owns it.

RQ's own keys (job hashes, queue lists, registries) are always named through RQ (`Job.key`,
`Queue.key`, `Queue.intermediate_queue_key`), never spelled out here. Every key below either expires on its
own (TTL) or has an owner that deletes it; the few kept on purpose (admin configuration, the vote
dataset, the pool's speed) say so.

Fair queue (owner `dreamcore.queue.fair_order`'s scripts: each key empties itself as its jobs are claimed or
cancelled, a sorted set or hash with no members is gone in Redis, so none carries a TTL; "g" is a guild id,
0 for direct messages, "tier" 1 for a server's priority roles, 0 for everyone else):

| key | type | what |
|---|---|---|
| `dream:fq:<queue>:r` | zset | every server's slots, score = round; ties by member (`<seq>:<g>`, arrival) |
| `dream:fq:<queue>:gs:<g>` | zset | one server's slots |
| `dream:fq:<queue>:g:<g>:<tier>` | zset | one server's waiting jobs of a tier, score = round among them |
| `dream:fq:<queue>:u:<tier>:<owner>` | zset | one member's waiting jobs of a tier (their round counter) |
| `dream:fq:<queue>:all` | zset | every waiting job of the queue by arrival (what a reconcile walks) |
| `dream:fq:<queue>`, `dream:fq:<queue>:o:<owner>` | zset | the previous release's one-level layout, moved over |
| `dream:fq:jobs` | hash | job id -> "queue, member, owner, server, cost, batch key, tries, tier, images" |
| `dream:fq:count` | hash | `units:<queue>` waiting cost, `guild:<g>` waiting dreams, `gunits:<g>` their cost (hundredths) |
| `dream:fq:seq` | string | arrival sequence (one integer, kept) |
| `dream:fq:bell` | list | wakes idle workers (at most 64 tokens, trimmed on every push) |
| `dream:fq:recount` | hash | a reconcile in progress: its cursor and tallies (deleted when it ends) |
| `dream:fq:recount:lock` | string | one reconcile at a time (TTL RECONCILE_LOCK_S) |

Results and delivery (owner `dreamcore.results`, the relay in `bot.relay`):

| key | type | TTL | what |
|---|---|---|---|
| `dream:outbox:<instance>` | stream | none: an entry is deleted once handled | finished results for one bot instance |
| `dream:outbox:<instance>:progress` | stream | capped at DREAMBOT_PROGRESS_STREAM_LEN | progress nudges (lossy) |
| `dream:published:<instance>` | zset | as the result | published, not yet delivered (the bot's start-up sweep) |
| `dream:job:<job>` | string | image retention, deleted once delivered | the job as its bot queued it (`dreamcore.delivery`; bots only) |
| `dream:result:<job>` | hash | DREAMBOT_RESULT_TTL (failures: DREAMBOT_FAILURE_TTL) | result meta; image store keys, no bytes |
| `dream:done:<job>` | string | as the result | a job's result was published: a retry does not run it again |
| `dream:delivered:<job>` | string | DELIVERED_TTL_S | where the relay posted it (exactly-once delivery) |
| `dream:attempts:<job>` | string | ATTEMPTS_TTL_S | relay delivery attempts |
| `dream:progress:<job>` | hash | PROGRESS_TTL_S, deleted at publish | a running job's latest step, small preview |
| `dream:gone:channel:<id>` | string | CHANNEL_GONE_TTL_S | Discord deleted the channel: workers skip its jobs |
| `dream:params:<job>` | string | DREAMBOT_PARAMS_TTL | what was asked and what came out (Info, Variations) |
| `dream:cancel:<job>` | string | CANCEL_TTL_S | a running job was cancelled: its worker stops |
| `dream:images:sweep` | string | IMAGE_SWEEP_EVERY_S | one worker sweeps the image store per hour |

Replication (owner `dreamcore.redisconn`): `dream:replicated` (string, REPLICATED_MARK_TTL_S) is written after
each member-facing transaction so WAIT, on that one connection, says whether a replica has it.

Output safety (owner `dreamcore.moderation`): `dream:safety:{<guild>}:<yyyymmdd>` (hash, SAFETY_FLAGS_TTL_S) counts a
guild's flagged images per UTC day by what became of them (withheld, spoilered, shown_age_restricted), for
/dreamadmin usage. The policy itself (threshold, action, adult words) is kept with the limits' config.

Image bytes are never in Redis: they live in the image store (`dreamcore.images`); results carry keys.

Limits (owners `dreamcore.limits.limiter` with its scripts and `dreamcore.limits.stored`; see `LimitKeys`): `dream:limits:{<guild>}:*`. Admin
configuration (`:config`) is kept until an admin changes it; the audit trail expires AUDIT_TTL_S after its
last entry; every counter expires once no window can see it.

Votes (owner `dreamcore.votes`): `dream:vote:channels:<guild>` (set, admin configuration, kept);
`dream:vote:round:<id>` (JSON) and `dream:vote:ballots:<id>` (hash), indexed by `dream:vote:rounds`
(zset), are the preference dataset and are kept on purpose; `dream:vote:job:<job>` (string, VOTE_JOB_TTL_S)
links a candidate job to its round; `dream:vote:stats:{<guild>}` (hash, kept) is a server's win-rate
counters, `dream:vote:stats-built` (string, kept) says rounds from before them have been counted.

Pool speed (owner `dreamcore.stats`): `dream:stats` (hash of a few moving averages, overwritten, kept).

Members' own settings (owner `dreamcore.preferences`, deleted by `/settings reset`): `dream:member:<user>` (string,
JSON, MEMBER_TTL_S from its last change): a member's defaults for /dream, private results and language, the
same in every server and for every bot instance.

The operator's per-server policy (owner `dreamcore.servers`): `dream:operator:{<guild>}` (hash: priority and
ceilings the operator set with `dreambot server`; configuration, kept).
"""

from __future__ import annotations

# Keys with no TTL on purpose (fnmatch patterns), each with its owner above; every other dream:* key expires.
KEPT = (
    "dream:fq:*",  # the fair queue's scripts: empty when nothing waits (only the arrival sequence stays)
    "dream:outbox:*",  # results: entries deleted once handled; progress: capped (the relay's consumer group)
    "dream:limits:{*}:config",  # what admins set
    "dream:vote:channels:*", "dream:vote:rounds", "dream:vote:round:*", "dream:vote:ballots:*",  # the dataset
    "dream:vote:stats:{*}", "dream:vote:stats-built",  # win-rate counters, from the dataset
    "dream:stats",  # a few moving averages, overwritten
    "dream:operator:{*}",  # what the operator set per server
)

# The fair queue's keys and its counters' fields (above). Every FQ_* shape goes to its scripts as a constant
# (dreamcore.queue.fair_order.LUA_CONSTS), which fill a template as Python does with str.format. Its fields, in
# this order where it has several: {q} a queue name, {server} fair_order.server_of, {tier}
# fair_order.PRIORITY_TIER or PLAIN_TIER, {owner} fair_order.owner_of.
FQ = "dream:fq:"
# One of each: the jobs' hash, the counters (their fields below), the arrival sequence, the workers' bell, and a
# reconcile's tally with its lock.
FQ_JOBS, FQ_COUNT, FQ_SEQ, FQ_BELL = FQ + "jobs", FQ + "count", FQ + "seq", FQ + "bell"
FQ_RECOUNT, FQ_RECOUNT_LOCK = FQ + "recount", FQ + "recount:lock"
# One per queue: its servers' slots and every job by arrival; per server: its slots, and its jobs of a tier; per
# member and tier: their jobs.
FQ_SLOTS, FQ_ALL = FQ + "{q}:r", FQ + "{q}:all"
FQ_SERVER_SLOTS, FQ_SERVER_JOBS = FQ + "{q}:gs:{server}", FQ + "{q}:g:{server}:{tier}"
FQ_MEMBER_JOBS = FQ + "{q}:u:{tier}:{owner}"
# Compatibility: the one-level layout an older release wrote (a queue's jobs, a member's, the queue's image
# count); goes when no deployment can still hold it: each upgraded past d105bc6 with its old bots gone and a
# worker's maintenance run since (fair_order.migrate moves it over).
FQ_FLAT, FQ_FLAT_OWNER, FQ_FLAT_IMAGES = FQ + "{q}", FQ + "{q}:o:{owner}", "images:{q}"
# Fields of FQ_COUNT: a queue's waiting cost, a server's waiting dreams and their cost (costs in hundredths);
# FQ_RECOUNT holds the same tallies, the queues its walk has done, the queue it is at and its cursor there.
FQ_UNITS, FQ_SERVER_WAITING, FQ_SERVER_UNITS = "units:{q}", "guild:{server}", "gunits:{server}"
FQ_RECOUNT_DONE, FQ_RECOUNT_AT, FQ_RECOUNT_CURSOR = "done:{q}", "at", "cursor"
RECONCILE_LOCK_S = 120
ATTEMPTS_TTL_S = 86400
SAFETY_FLAGS_TTL_S = 8 * 86400  # /dreamadmin usage shows the last 7 days
REPLICATED_MARK = "dream:replicated"
REPLICATED_MARK_TTL_S = 60


def safety_flags(guild_id: int | None, day: str) -> str:
    return f"dream:safety:{{{guild_id or 0}}}:{day}"


def attempts(job_id: str) -> str:
    return f"dream:attempts:{job_id}"


# --- results and delivery ---------------------------------------------------------------------------------

PROGRESS_TTL_S = 3600
DELIVERED_TTL_S = 7 * 86400
CHANNEL_GONE_TTL_S = 7 * 86400
CANCEL_TTL_S = 3600
VOTE_JOB_TTL_S = 7 * 86400


def member_key(user_id: int) -> str:
    return f"dream:member:{int(user_id)}"


def outbox_key(instance: str) -> str:
    return f"dream:outbox:{instance}"


def progress_stream_key(instance: str) -> str:
    return f"dream:outbox:{instance}:progress"


def published_key(instance: str) -> str:
    """Jobs published for an instance and not yet delivered (the start-up sweep's list)."""
    return f"dream:published:{instance}"


def job_record(job_id: str) -> str:
    """The bot's own record of a job it queued (dreamcore.delivery): where its result may go."""
    return f"dream:job:{job_id}"


def result_key(job_id: str) -> str:
    return f"dream:result:{job_id}"


def done_key(job_id: str) -> str:
    """Set when a result is published: a retried job is not generated (or posted) a second time."""
    return f"dream:done:{job_id}"


def delivered_key(job_id: str) -> str:
    return f"dream:delivered:{job_id}"


def channel_gone_key(channel_id: int) -> str:
    """Set by a bot when Discord says a channel was deleted: workers skip its queued jobs."""
    return f"dream:gone:channel:{channel_id}"


def progress_key(job_id: str) -> str:
    return f"dream:progress:{job_id}"


def params_key(job_id: str) -> str:
    return f"dream:params:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"dream:cancel:{job_id}"


IMAGE_SWEEP_LOCK = "dream:images:sweep"  # one worker sweeps the image store at a time
IMAGE_SWEEP_EVERY_S = 3600


# --- votes ------------------------------------------------------------------------------------------------

VOTE_ROUNDS = "dream:vote:rounds"  # zset round id -> created time


def vote_channel_key(guild_id: int | None) -> str:
    return f"dream:vote:channels:{guild_id or 0}"


def vote_round_key(round_id: str) -> str:
    return f"dream:vote:round:{round_id}"


def vote_ballots_key(round_id: str) -> str:
    return f"dream:vote:ballots:{round_id}"


def vote_job_key(job_id: str) -> str:
    return f"dream:vote:job:{job_id}"


def vote_stats_key(guild_id: int | None) -> str:
    return f"dream:vote:stats:{{{guild_id or 0}}}"


VOTE_STATS_BUILT = "dream:vote:stats-built"


# --- the operator's per-server policy ---------------------------------------------------------------------


def operator_key(guild_id: int | None) -> str:
    return f"dream:operator:{{{guild_id or 0}}}"


# --- pool speed -------------------------------------------------------------------------------------------

STATS_KEY = "dream:stats"


# --- limits -----------------------------------------------------------------------------------------------

LIMITS_PREFIX = "dream:limits"


def _g(guild_id: int | str | None) -> str:
    if isinstance(guild_id, str):  # a direct-message member's own scope (LimitKeys.counted)
        return guild_id
    return "dm" if guild_id is None else str(int(guild_id))


class LimitKeys:
    """Every Redis key this module uses (g = guild id or "dm", u = user id)."""

    @staticmethod
    def counted(g: int | None, u: int) -> int | str:
        """Whose server-wide counters a dream counts in: its guild's, or in direct messages the member's own
        (g "dm-<user>"), so one member's direct messages never use up another's."""
        return g if g is not None else f"dm-{int(u)}"

    @staticmethod
    def config(g: int | None) -> str:  # hash: limit name -> JSON value (only what admins set); no TTL
        return f"{LIMITS_PREFIX}:{{{_g(g)}}}:config"

    @staticmethod
    def audit(g: int | None) -> str:  # list of JSON entries, newest first, capped, TTL AUDIT_TTL_S
        return f"{LIMITS_PREFIX}:{{{_g(g)}}}:audit"

    @staticmethod
    def cooldown(g: int | None, u: int) -> str:  # string: when the last dream was accepted
        return f"{LIMITS_PREFIX}:{{{_g(g)}}}:cooldown:{int(u)}"

    @staticmethod
    def user_hour(g: int | None, u: int) -> str:  # hash minute bucket -> images; TTL 1 h + 1 bucket + slack
        return f"{LIMITS_PREFIX}:{{{_g(g)}}}:uh:{int(u)}"

    @staticmethod
    def user_day(g: int | None, u: int) -> str:  # hash 10-minute bucket -> images; TTL 24 h + 1 bucket
        return f"{LIMITS_PREFIX}:{{{_g(g)}}}:ud:{int(u)}"

    @staticmethod
    def guild_hour(g: int | str | None) -> str:  # as user_hour, for the whole guild
        return f"{LIMITS_PREFIX}:{{{_g(g)}}}:gh"

    @staticmethod
    def guild_day(g: int | str | None) -> str:  # as user_day, for the whole guild
        return f"{LIMITS_PREFIX}:{{{_g(g)}}}:gd"

    # Compatibility: an older release's usage zsets ("<images>:<job>" scored by time, 24 h), folded into the
    # buckets and deleted; goes when every deployment is over 24 h past its upgrade to bucket counters (74a9068).
    @staticmethod
    def old_user_usage(g: int | None, u: int) -> str:
        return f"{LIMITS_PREFIX}:{{{_g(g)}}}:usage:{int(u)}"

    @staticmethod
    def old_guild_usage(g: int | None) -> str:  # as old_user_usage, for the guild
        return f"{LIMITS_PREFIX}:{{{_g(g)}}}:usage"

    @staticmethod
    def usage_keys(g: int | None, u: int, counted: int | str | None = None) -> list[str]:
        """The four bucket hashes: the member's hour and day, then the server's (under `counted`, see counted())."""
        c = LimitKeys.counted(g, u) if counted is None else counted
        return [LimitKeys.user_hour(g, u), LimitKeys.user_day(g, u), LimitKeys.guild_hour(c), LimitKeys.guild_day(c)]

    @staticmethod
    def user_active(g: int | None, u: int) -> str:  # zset job id scored by acceptance time
        return f"{LIMITS_PREFIX}:{{{_g(g)}}}:active:{int(u)}"

    @staticmethod
    def guild_active(g: int | str | None) -> str:  # zset job id scored by acceptance time
        return f"{LIMITS_PREFIX}:{{{_g(g)}}}:active"

    @staticmethod
    def job(g: int | None, job_id: str) -> str:  # hash user, images, at, exempt; 24 h
        return f"{LIMITS_PREFIX}:{{{_g(g)}}}:job:{job_id}"
