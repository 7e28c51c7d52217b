"""Pairwise vote mode end to end: two candidates posted together, one changeable vote per member,
export and win rates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

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

    out = tmp_path / "votes.jsonl"
    env = {**os.environ, "REDIS_URL": redis_url}
    proc = subprocess.run([sys.executable, "-m", "dreamcore.cli", "export-votes", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "exported 1 vote rounds" in proc.stderr
    (line,) = out.read_text().splitlines()
    record = json.loads(line)
    assert record["prompt"] == "a lighthouse for bot 1" and record["seed"] == 77
    assert record["tallies"] == {"a": 1, "b": 2}
    assert record["a"]["settings"] != record["b"]["settings"]
    assert {record["a"]["job_id"], record["b"]["job_id"]} and record["kind"] in ("refiner", "split", "style")
