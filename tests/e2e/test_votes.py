"""Pairwise vote mode end to end: two candidates posted together, one changeable vote per member,
export and win rates."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time

import pytest
import redis

from dreamcore import keys, votes

pytestmark = pytest.mark.timeout(240)


def test_vote_round_from_dream_to_export(fleet, redis_url, tmp_path):
    bot = fleet.bots[0]
    admin = fleet.standin.add_member(fleet.guild_id, "admin", manage_guild=True)
    voters = [fleet.standin.add_member(fleet.guild_id, f"voter{i}") for i in range(3)]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()

    def slash(user, name, options):
        return fleet.standin.send_slash(bot.app.id, fleet.guild_id, bot.channel_id, user, name, options).wait_ack(5)

    refused = slash(fleet.user_id, "dreamvote", {"mode": "on"})
    assert "Manage Server" in refused["data"]["content"]
    assert "Vote mode is **on**" in slash(admin, "dreamvote", {"mode": "on"})["data"]["content"]

    fleet.start_worker()
    inter = fleet.dream(bot, aspect="12:5", seed=77, style="anime")
    assert "vote round" in inter.wait_ack(5)["data"]["content"]
    deadline = time.monotonic() + 120
    msg = None
    while time.monotonic() < deadline:
        msg = next(m for m in fleet.standin.messages(bot.channel_id) if m.interaction_id == inter.id)
        if len(msg.attachments) == 2:
            break
        time.sleep(0.2)
    names = sorted(a[0] for a in msg.attachments)
    assert names[0].startswith("A-dream-") and names[1].startswith("B-dream-")
    assert "-77." in names[0] and "-77." in names[1]  # same seed on both sides
    ids = msg.custom_ids()
    round_id = ids[0].split(":")[1]
    assert sorted(ids) == [f"vote:{round_id}:a", f"vote:{round_id}:b"]

    def vote(user, side):
        i = fleet.standin.send_component(bot.app.id, fleet.guild_id, bot.channel_id, user, msg.id,
                                         f"vote:{round_id}:{side}")
        return i.wait_ack(5)["data"]["content"]

    assert "(A 1 · B 0)" in vote(voters[0], "a")
    assert "(A 2 · B 0)" in vote(voters[1], "a")
    assert "(A 1 · B 1)" in vote(voters[0], "b")  # changed: still one vote per member
    assert "(A 1 · B 2)" in vote(voters[2], "b")

    stats = slash(fleet.user_id, "dreamstats", {})["data"]["content"]
    assert "won 1/1 (100%)" in stats and "won 0/1 (0%)" in stats
    # From counters kept as votes are cast, per server: one read, however many rounds there are.
    assert votes.win_rates(redis.Redis.from_url(redis_url), fleet.guild_id)
    # Once per member and server per few seconds: a second ask at once is told to wait.
    assert "Please wait" in slash(fleet.user_id, "dreamstats", {})["data"]["content"]
    # Another server's rates are its own (none here).
    assert votes.win_rates(redis.Redis.from_url(redis_url), fleet.guild_id + 1) == {}

    out = tmp_path / "votes.jsonl"
    env = {**os.environ, "REDIS_URL": redis_url}
    proc = subprocess.run([sys.executable, "-m", "dreambot", "export-votes", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "exported 1 vote rounds" in proc.stderr
    (line,) = out.read_text().splitlines()
    record = json.loads(line)
    assert record["prompt"] == "a lighthouse for bot 1" and record["seed"] == 77
    assert record["tallies"] == {"a": 1, "b": 2}
    assert record["a"]["settings"] != record["b"]["settings"]
    # Two distinct candidate jobs, each a job id, and a known kind of difference.
    ids = [record["a"]["job_id"], record["b"]["job_id"]]
    assert len(set(ids)) == 2 and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert record["kind"] in ("refiner", "split", "style")

    # The preference dataset: one row per round, both images, hashed member ids; loads with pyarrow and
    # with Hugging Face datasets.
    import datasets
    import pyarrow.parquet as pq
    from PIL import Image

    folder = tmp_path / "dataset"
    env["DREAMBOT_EXPORT_SALT"] = "pepper"
    proc = subprocess.run([sys.executable, "-m", "dreambot", "export-votes", "--format", "parquet", "--out",
                           str(folder)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "exported 1 vote rounds" in proc.stderr, proc.stderr
    (row,) = pq.read_table(folder).to_pylist()
    assert row["prompt"] == "a lighthouse for bot 1" and (row["votes_a"], row["votes_b"]) == (1, 2)
    assert row["preferred"] == "b" and row["tie"] is False and row["guild_id"] == fleet.guild_id
    assert row["seed_a"] == row["seed_b"] == 77 and row["settings_a"] != row["settings_b"]
    assert {row["image_a"], row["image_b"]} == {a[1] for a in msg.attachments}  # the very images posted
    for side in "ab":
        image = Image.open(io.BytesIO(row[f"image_{side}"]))
        image.load()
        assert image.size == (1536, 640) and row[f"image_format_{side}"] == "png"
    everyone = [str(u) for u in (fleet.user_id, *voters)]
    hashed = [row["user"], *row["voters_a"], *row["voters_b"]]
    assert len(set(hashed)) == 4 and not any(u in h for u in everyone for h in hashed)
    assert len(row["voters_a"]) == 1 and len(row["voters_b"]) == 2
    ds = datasets.load_dataset("parquet", data_dir=str(folder), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 1 and ds[0]["image_a"] == row["image_a"] and ds[0]["preferred"] == "b"



def test_win_rates_are_counters_kept_as_votes_change_and_old_rounds_count_once(rconn):
    """/dreamstats reads one hash per server: each vote moves the round's share in it (a changed vote takes the
    old share out), and rounds from before the counters are counted once, however often that runs."""
    from dreamcore.job import make_request

    req = make_request(prompt="x", seed=1)
    a, b = votes.comparisons(req)["refiner"]
    for rid, guild in (("r1", 5), ("r2", 5), ("r3", 6)):
        votes.create_round(rconn, rid, "refiner", a, b, f"{rid}a", f"{rid}b", req, guild, 1, 2)
    r1, r2, r3 = (votes.load_round(rconn, r) for r in ("r1", "r2", "r3"))
    votes.cast(rconn, r1, 10, "a")
    votes.cast(rconn, r1, 11, "b")
    votes.cast(rconn, r1, 12, "a")
    votes.cast(rconn, r1, 12, "b")  # changed: b leads 2-1
    votes.cast(rconn, r2, 10, "a")
    votes.cast(rconn, r3, 10, "b")  # another server's
    rates = votes.win_rates(rconn, 5)["refiner"]
    assert rates[a.label] == {"rounds": 2, "wins": 1, "votes": 2}
    assert rates[b.label] == {"rounds": 2, "wins": 1, "votes": 2}
    assert votes.win_rates(rconn, 6)["refiner"][b.label] == {"rounds": 1, "wins": 1, "votes": 1}

    # A round of an older release (no counters yet) with votes: counted once, exactly.
    votes.create_round(rconn, "old", "refiner", a, b, "oa", "ob", req, 5, 1, 2)
    rconn.hdel(keys.vote_ballots_key("old"), votes.COUNTED)
    old = votes.load_round(rconn, "old")
    votes.cast(rconn, old, 20, "a")
    assert votes.win_rates(rconn, 5)["refiner"][a.label]["rounds"] == 2  # not yet
    rconn.delete(keys.VOTE_STATS_BUILT)
    assert votes.count_old_rounds(rconn) == 1
    assert votes.count_old_rounds(rconn) == 0
    rconn.delete(keys.VOTE_STATS_BUILT)
    assert votes.count_old_rounds(rconn) == 0  # each round marks itself counted
    assert votes.win_rates(rconn, 5)["refiner"][a.label] == {"rounds": 3, "wins": 2, "votes": 3}
    votes.cast(rconn, old, 21, "b")  # now counted as votes come in
    assert votes.win_rates(rconn, 5)["refiner"][a.label] == {"rounds": 3, "wins": 1, "votes": 3}
