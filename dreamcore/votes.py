"""Pairwise votes, as the Stable Foundation SDXL bot ran them: in a vote channel each /dream makes two
candidates that differ in one setting, members pick the better one, and the tallies feed win rates.

Everything lives in Redis. Rounds are small and kept (no TTL) so they can be exported; the side shown as
"A" is chosen at random per round so position does not bias the result.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass

import redis

from .images import ImageStore, image_key
from .job import DreamRequest
from .keys import VOTE_JOB_TTL_S
from .keys import VOTE_ROUNDS as ROUNDS
from .keys import vote_ballots_key as ballots_key
from .keys import vote_channel_key as channel_key
from .keys import vote_job_key as job_round_key
from .keys import vote_round_key as round_key


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: dict


def comparisons(request: DreamRequest) -> dict[str, tuple[Variant, Variant]]:
    """The settings a round may compare, each as (variant, variant) of the member's request."""
    style = request.style if request.style != "none" else "cinematic"
    return {
        "refiner": (Variant("refiner on (split 0.8)", {"split": 0.8}), Variant("base only", {"split": 1.0})),
        "split": (Variant("refiner from 70%", {"split": 0.7}), Variant("refiner from 90%", {"split": 0.9})),
        "style": (Variant("no style", {"style": "none"}), Variant(f"style {style}", {"style": style})),
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


def cast(conn: redis.Redis, round_id: str, user_id: int, side: str) -> dict[str, int]:
    """One vote per member, changeable: the latest choice counts."""
    if side not in ("a", "b"):
        raise ValueError("side must be 'a' or 'b'")
    conn.hset(ballots_key(round_id), str(user_id), side)
    return tallies(conn, round_id)


def tallies(conn: redis.Redis, round_id: str) -> dict[str, int]:
    votes = [v.decode() for v in conn.hvals(ballots_key(round_id))]
    return {"a": votes.count("a"), "b": votes.count("b")}


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
        ballots = {k.decode(): v.decode() for k, v in conn.hgetall(ballots_key(r["round"])).items()}
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


def win_rates(conn: redis.Redis, guild_id: int | None = None) -> dict[str, dict[str, dict[str, int]]]:
    """Per comparison kind, per variant label: rounds it was in, rounds it won, votes it got."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for r in iter_rounds(conn, guild_id):
        t = r["tallies"]
        kind = out.setdefault(r["kind"], {})
        for side, other in (("a", "b"), ("b", "a")):
            label = r[side]["label"]
            if r["kind"] == "style" and r[side]["settings"].get("style") != "none":
                label = "styled"  # one row for every preset: styled vs no style
            row = kind.setdefault(label, {"rounds": 0, "wins": 0, "votes": 0})
            if t["a"] + t["b"] == 0:
                continue
            row["rounds"] += 1
            row["votes"] += t[side]
            row["wins"] += int(t[side] > t[other])
    return out
