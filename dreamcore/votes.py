"""Pairwise votes, as the Stable Foundation SDXL bot ran them: in a vote channel each /dream makes two
candidates that differ in one setting, members pick the better one, and the tallies feed win rates.

Everything lives in Redis. Rounds are small and kept (no TTL) so they can be exported; the side shown as
"A" is chosen at random per round so position does not bias the result.

Win rates (/dreamstats) are counters per server, kept up to date as votes are cast (CAST_LUA: a changed
vote takes the round's old share out and puts its new one in, in one step), so reading them costs one
HGETALL however many rounds a server has had. Rounds from before the counters are counted once by
`count_old_rounds`, each round in one atomic step that marks it counted, so nothing is counted twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass

import redis

from .i18n import N_
from .images import ImageStore, image_key
from .job import DreamRequest
from .keys import VOTE_JOB_TTL_S, VOTE_STATS_BUILT, vote_stats_key
from .keys import VOTE_ROUNDS as ROUNDS
from .keys import vote_ballots_key as ballots_key
from .keys import vote_channel_key as channel_key
from .keys import vote_job_key as job_round_key
from .keys import vote_round_key as round_key


@dataclass(frozen=True)
class Variant:
    label: str  # in English, as it is recorded and counted; marked with N_, translated where shown (/dreamstats)
    overrides: dict


def comparisons(request: DreamRequest) -> dict[str, tuple[Variant, Variant]]:
    """The settings a round may compare, each as (variant, variant) of the member's request."""
    style = request.style if request.style != "none" else "cinematic"
    return {
        "refiner": (Variant(N_("refiner on (split 0.8)"), {"split": 0.8}), Variant(N_("base only"), {"split": 1.0})),
        "split": (Variant(N_("refiner from 70%"), {"split": 0.7}), Variant(N_("refiner from 90%"), {"split": 0.9})),
        # "style <preset>" is counted as "styled" (stat_label): no member reads it.
        "style": (Variant(N_("no style"), {"style": "none"}), Variant(f"style {style}", {"style": style})),
    }


def pick(request: DreamRequest, rng: random.Random | None = None) -> tuple[str, Variant, Variant]:
    """One comparison, sides in random order."""
    rng = rng or random.Random()
    kind = rng.choice(sorted(comparisons(request)))
    a, b = comparisons(request)[kind]
    return (kind, a, b) if rng.random() < 0.5 else (kind, b, a)


def set_channel(conn: redis.Redis, guild_id: int | None, channel_id: int, on: bool) -> None:
    (conn.sadd if on else conn.srem)(channel_key(guild_id), channel_id)


def is_vote_channel(conn: redis.Redis, guild_id: int | None, channel_id: int) -> bool:
    return bool(conn.sismember(channel_key(guild_id), channel_id))


def create_round(conn: redis.Redis, round_id: str, kind: str, a: Variant, b: Variant, job_a: str, job_b: str,
                 request: DreamRequest, guild_id: int | None, channel_id: int, user_id: int) -> None:
    record = {
        "round": round_id, "kind": kind, "created": time.time(), "guild_id": guild_id, "channel_id": channel_id,
        "user_id": user_id, "prompt": request.prompt, "negative_prompt": request.negative_prompt,
        "seed": request.seed, "count": request.count, "steps": request.steps, "guidance": request.guidance,
        "a": {"label": a.label, "settings": a.overrides, "job_id": job_a},
        "b": {"label": b.label, "settings": b.overrides, "job_id": job_b},
    }
    with conn.pipeline() as pipe:
        pipe.set(round_key(round_id), json.dumps(record))
        pipe.hset(ballots_key(round_id), COUNTED, "1")  # its votes go into the counters as they are cast
        pipe.zadd(ROUNDS, {round_id: record["created"]})
        pipe.set(job_round_key(job_a), f"{round_id}:a", ex=VOTE_JOB_TTL_S)
        pipe.set(job_round_key(job_b), f"{round_id}:b", ex=VOTE_JOB_TTL_S)
        pipe.execute()


def drop_round(conn: redis.Redis, round_id: str) -> None:
    """A round whose candidates were never queued (refused by a limit)."""
    record = load_round(conn, round_id)
    with conn.pipeline() as pipe:
        pipe.delete(round_key(round_id))
        pipe.zrem(ROUNDS, round_id)
        if record:
            pipe.delete(job_round_key(record["a"]["job_id"]), job_round_key(record["b"]["job_id"]))
        pipe.delete(ballots_key(round_id))
        pipe.execute()


def round_of(conn: redis.Redis, job_id: str) -> tuple[str, str] | None:
    v = conn.get(job_round_key(job_id))
    if v is None:
        return None
    rid, _, side = v.decode().partition(":")
    return rid, side


def load_round(conn: redis.Redis, round_id: str) -> dict | None:
    raw = conn.get(round_key(round_id))
    return json.loads(raw) if raw else None


COUNTED = "~counted"  # a ballots field (member ids are digits): this round is in its server's counters

# The round's share of its server's counters, by variant: with tallies (a, b) and at least one vote, each
# side is in one more round, gets its votes and wins when it has more. KEYS: 1 ballots, 2 the server's
# counters. ARGV: 1 kind, 2 side a's label, 3 side b's label, then for a vote 4 member, 5 side; for counting
# an old round, nothing more. Returns the tallies after, {a, b}.
_SHARE = r"""
local function tally()
  local t = {a = 0, b = 0}
  for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
    if v == 'a' or v == 'b' then t[v] = t[v] + 1 end
  end
  return t
end
local function apply(t, sign)
  if t.a + t.b == 0 then return end
  for side, other in pairs({a = 'b', b = 'a'}) do
    local label = ARGV[1] .. '\t' .. (side == 'a' and ARGV[2] or ARGV[3])
    redis.call('HINCRBY', KEYS[2], label .. '\trounds', sign)
    if t[side] > 0 then redis.call('HINCRBY', KEYS[2], label .. '\tvotes', sign * t[side]) end
    if t[side] > t[other] then redis.call('HINCRBY', KEYS[2], label .. '\twins', sign) end
  end
end
"""
CAST_LUA = _SHARE + r"""
local counted = redis.call('HEXISTS', KEYS[1], '""" + COUNTED + r"""') == 1
local before = tally()
redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
local after = tally()
if counted then
  apply(before, -1)
  apply(after, 1)
end
return {after.a, after.b}
"""
COUNT_OLD_LUA = _SHARE + r"""
if redis.call('HSETNX', KEYS[1], '""" + COUNTED + r"""', '1') == 0 then return 0 end
apply(tally(), 1)
return 1
"""


def stat_label(record: dict, side: str) -> str:
    """The row a side counts in: its variant's label, and every style preset as one row, "styled"."""
    if record["kind"] == "style" and record[side]["settings"].get("style") != "none":
        return N_("styled")
    return record[side]["label"]


def _share_args(record: dict) -> list[str]:
    return [record["kind"], stat_label(record, "a"), stat_label(record, "b")]


def cast(conn: redis.Redis, record: dict, user_id: int, side: str) -> dict[str, int]:
    """One vote per member, changeable: the latest choice counts, in the tallies and in the server's win
    rates at once. `record` is the round's (load_round)."""
    if side not in ("a", "b"):
        raise ValueError("side must be 'a' or 'b'")
    a, b = conn.register_script(CAST_LUA)(
        keys=[ballots_key(record["round"]), vote_stats_key(record["guild_id"])],
        args=[*_share_args(record), str(int(user_id)), side])
    return {"a": int(a), "b": int(b)}


def tallies(conn: redis.Redis, round_id: str) -> dict[str, int]:
    votes = [v.decode() for v in conn.hvals(ballots_key(round_id))]
    return {"a": votes.count("a"), "b": votes.count("b")}


def count_old_rounds(conn: redis.Redis, chunk: int = 500) -> int:
    """Put rounds from before the counters into them, once (each round marks itself counted atomically);
    skipped once a pass has found every round counted. Returns how many rounds it counted."""
    if conn.get(VOTE_STATS_BUILT):
        return 0
    script, counted, start = conn.register_script(COUNT_OLD_LUA), 0, 0
    while True:
        ids = [r.decode() for r in conn.zrange(ROUNDS, start, start + chunk - 1)]
        for rid in ids:
            record = load_round(conn, rid)
            if record is not None:
                counted += int(script(keys=[ballots_key(rid), vote_stats_key(record["guild_id"])],
                                      args=_share_args(record)))
        if len(ids) < chunk:
            break
        start += chunk
    conn.set(VOTE_STATS_BUILT, "1")
    return counted


def iter_rounds(conn: redis.Redis, guild_id: int | None = None):
    for rid in conn.zrange(ROUNDS, 0, -1):
        record = load_round(conn, rid.decode())
        if record is None or (guild_id is not None and record["guild_id"] != guild_id):
            continue
        record["tallies"] = tallies(conn, record["round"])
        yield record


def export_jsonl(conn: redis.Redis, out) -> int:
    """Write one JSON line per round: prompt, both settings, seeds, tallies. Returns the count."""
    n = 0
    for record in iter_rounds(conn):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        n += 1
    return n


PARQUET_ROWS_PER_FILE = 2000  # images make rows heavy: files of a bounded size, written one at a time
PARQUET_ROWS_PER_GROUP = 100


def _hasher(salt: bytes):
    def h(member_id) -> str | None:
        if member_id is None:
            return None
        return hmac.new(salt, str(int(member_id)).encode(), hashlib.sha256).hexdigest()[:32]
    return h


def _side(conn: redis.Redis, store: ImageStore, job_id: str) -> tuple[bytes | None, str | None, int | None]:
    """(first image's bytes, its format, its seed) of one candidate, from the image store."""
    from .params import load as load_params

    p = load_params(conn, job_id, store)
    if p is None or not p.images:
        return None, None, None
    return store.get(image_key(job_id, 0, p.images[0].format)), p.images[0].format, p.images[0].seed


def parquet_schema():
    import pyarrow as pa

    side = [("label", pa.string()), ("settings", pa.string()), ("job_id", pa.string()), ("seed", pa.int64()),
            ("image", pa.binary()), ("image_format", pa.string()), ("votes", pa.int32()),
            ("voters", pa.list_(pa.string()))]
    return pa.schema([
        ("round", pa.string()), ("kind", pa.string()), ("created", pa.timestamp("ms", tz="UTC")),
        ("guild_id", pa.uint64()), ("channel_id", pa.uint64()), ("user", pa.string()),
        ("prompt", pa.string()), ("negative_prompt", pa.string()), ("steps", pa.int32()),
        ("guidance", pa.float32()), ("count", pa.int32()),
        *[(f"{k}_{s}", t) for s in ("a", "b") for k, t in side],
        ("tie", pa.bool_()), ("preferred", pa.string()),
    ])


def export_parquet(conn: redis.Redis, store: ImageStore, out_dir, salt: bytes) -> tuple[int, int]:
    """One row per round (a Pick-a-Pic-shaped preference dataset): prompt, negative, both candidates'
    first image (bytes, from the image store), settings, seeds and votes, whether it tied and which side
    was preferred, guild and time. Member ids (the asker and every voter) are HMAC-SHA256 hashed with
    `salt`: stable across exports with the same salt, not reversible without it. Returns (rounds, rounds
    with an image no longer kept, written with a null image)."""
    import datetime as dt
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    schema, h = parquet_schema(), _hasher(salt)
    rows: list[dict] = []
    n = missing = files = 0

    def flush():
        nonlocal rows, files
        if rows:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / f"votes-{files:05d}.parquet",
                           row_group_size=PARQUET_ROWS_PER_GROUP, compression="zstd")
            files, rows = files + 1, []

    for r in iter_rounds(conn):
        ballots = {k.decode(): v.decode() for k, v in conn.hgetall(ballots_key(r["round"])).items()
                   if k.decode() != COUNTED}
        row = {
            "round": r["round"], "kind": r["kind"],
            "created": dt.datetime.fromtimestamp(r["created"], dt.timezone.utc),
            "guild_id": r.get("guild_id"), "channel_id": r.get("channel_id"), "user": h(r.get("user_id")),
            "prompt": r["prompt"], "negative_prompt": r.get("negative_prompt") or "", "steps": r.get("steps"),
            "guidance": r.get("guidance"), "count": r.get("count"),
        }
        lost = False
        for s in ("a", "b"):
            image, fmt, seed = _side(conn, store, r[s]["job_id"])
            lost = lost or image is None
            row |= {f"label_{s}": r[s]["label"], f"settings_{s}": json.dumps(r[s]["settings"], sort_keys=True),
                    f"job_id_{s}": r[s]["job_id"], f"seed_{s}": seed if seed is not None else r.get("seed"),
                    f"image_{s}": image, f"image_format_{s}": fmt, f"votes_{s}": r["tallies"][s],
                    f"voters_{s}": sorted(h(u) for u, side in ballots.items() if side == s)}
        a, b = r["tallies"]["a"], r["tallies"]["b"]
        row["tie"] = a == b and a > 0
        row["preferred"] = None if a + b == 0 else "tie" if a == b else ("a" if a > b else "b")
        rows.append(row)
        n, missing = n + 1, missing + lost
        if len(rows) >= PARQUET_ROWS_PER_FILE:
            flush()
    flush()
    if not files:  # an empty dataset still loads: one file with the schema and no rows
        pq.write_table(schema.empty_table(), out / "votes-00000.parquet")
    return n, missing


def win_rates(conn: redis.Redis, guild_id: int | None) -> dict[str, dict[str, dict[str, int]]]:
    """Per comparison kind, per variant label: rounds it was in (with at least one vote), rounds it won,
    votes it got, in one server. One read of its counters."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for field, value in conn.hgetall(vote_stats_key(guild_id)).items():
        kind, label, what = field.decode().split("\t")
        out.setdefault(kind, {}).setdefault(label, {"rounds": 0, "wins": 0, "votes": 0})[what] = int(value)
    return out
