"""Two servers share one fleet; one floods it. Through the Discord stand-in with a real bot and a real worker on
the tiny model:

  1. server A's admin tries to make @everyone a priority role and an exempt role (both refused, said why);
  2. A's members flood 200 dreams (its limits opened wide, so only the fleet's own rules stop them);
  3. then members of server B send one dream each.

It prints where B's first dream stood when queued, which claim of the worker (a batch, or one job) took it
counting from when it was queued (target: the first or second), and how many of B's members read "busy"
(target 0) while A's flood is told "busy" past its share (DREAMBOT_MAX_WAIT_MIN, 1 min here).

    python bench/flood.py [--flood 200] [--members 40] [--b-members 5]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamcore.localredis import LocalRedis  # noqa: E402
from tests.support.fleet import Fleet, wait_until  # noqa: E402
from tests.support.standin import DiscordStandIn  # noqa: E402

OPEN = {  # server A's limits out of the way: what stops its flood must be the fleet's rules, not its quotas
    "DREAMBOT_LIMIT_COOLDOWN_S": "0", "DREAMBOT_LIMIT_USER_MAX_ACTIVE": "50",
    "DREAMBOT_LIMIT_USER_IMAGES_HOUR": "1000", "DREAMBOT_LIMIT_USER_IMAGES_DAY": "5000",
    "DREAMBOT_LIMIT_GUILD_IMAGES_HOUR": "1000000", "DREAMBOT_LIMIT_GUILD_IMAGES_DAY": "10000000",
    "DREAMBOT_LIMIT_GUILD_MAX_QUEUED": "100000", "DREAMBOT_MAX_WAIT_MIN": "1",
}


def answer_of(standin, inter, timeout: float = 30.0) -> str:
    body = inter.wait_ack(10)
    if body["type"] == 4:
        return body["data"].get("content", "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in standin.messages(int(inter.payload["channel_id"])):
            if m.interaction_id == inter.id and m.content and not m.loading:
                return m.content
        time.sleep(0.05)
    return ""


def claims(log: Path) -> list[tuple[float, list[str]]]:
    """The worker's claims in order: (when, the jobs it took together)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("msg") == "claimed":
            jobs = rec.get("jobs")
            out.append((rec["ts"], json.loads(jobs.replace("'", '"')) if isinstance(jobs, str) else jobs))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flood", type=int, default=200, help="dreams server A sends")
    p.add_argument("--members", type=int, default=40, help="server A's members sending them")
    p.add_argument("--b-members", type=int, default=5, help="server B's members, one dream each")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dreambot-flood-"))
    redis_server = LocalRedis(appendonly=False).start()
    standin = DiscordStandIn().start()
    from worker.tiny import make_tiny_model

    model = make_tiny_model(tmp / "tiny")
    fleet = Fleet(standin, redis_server.url, model, tmp)
    try:
        a_guild = standin.add_guild("server A")
        b_guild = standin.add_guild("server B")
        app = standin.add_application("dreambot1")
        a_channel, b_channel = standin.add_channel(a_guild, "flood"), standin.add_channel(b_guild, "dreams")
        admin = standin.add_member(a_guild, "a-admin", manage_guild=True)
        a_members = [standin.add_member(a_guild, f"a{i}") for i in range(args.members)]
        b_members = [standin.add_member(b_guild, f"b{i}") for i in range(args.b_members)]
        from tests.support.fleet import BotProc

        bot = BotProc(1, app, a_channel, "bot1")
        fleet.bots.append(bot)
        fleet.start_bot(bot, DISCORD_GUILD_IDS=f"{a_guild},{b_guild}", **OPEN)
        while not (standin.commands(app.id, a_guild) and standin.commands(app.id, b_guild)):
            time.sleep(0.1)
        standin.wait_for_gateway(app.id, timeout=60)
        worker = fleet.start_worker(DREAMBOT_BATCH_IMAGES="8", **OPEN)
        del worker

        # 1. @everyone (its role id is the server's own id) as a priority and an exempt role.
        for key in ("priority_roles", "exempt_roles"):
            inter = standin.send_slash(app.id, a_guild, a_channel, admin, "dreamadmin",
                                       {"key": key, "value": str(a_guild)}, subcommand="set")
            said = answer_of(standin, inter)
            print(f"A's admin sets {key} to @everyone: {said.splitlines()[0][:150]}")
            assert "@everyone" in said, said

        # A dream first, so the fleet has measured its speed (backpressure needs one).
        warm = standin.send_slash(app.id, b_guild, b_channel, b_members[0], "dream", {"prompt": "warm-up", "seed": 1})
        warm.wait_ack(10)
        wait_until(lambda: any(a.filename.startswith("dream-") for m in standin.messages(b_channel)
                               for a in m.attachments), 300, "the warm-up dream never came back")

        # 2. A floods.
        t0 = time.monotonic()
        flood = [standin.send_slash(app.id, a_guild, a_channel, a_members[i % len(a_members)], "dream",
                                    {"prompt": f"flood {i}", "seed": i}) for i in range(args.flood)]
        a_said = [answer_of(standin, i) for i in flood]
        a_queued = sum(s.startswith("Queued") for s in a_said)
        a_busy = sum(s.startswith("busy") for s in a_said)
        print(f"A: sent {args.flood} dreams in {time.monotonic() - t0:.1f}s from {args.members} members: "
              f"{a_queued} queued, {a_busy} told busy, {args.flood - a_queued - a_busy} refused otherwise")
        if a_busy:
            print(f"   what A's members read: {next(s for s in a_said if s.startswith('busy'))[:160]}")

        # 3. One member of B sends one dream; then B's other members, one each.
        queued_at = time.time()
        first = standin.send_slash(app.id, b_guild, b_channel, b_members[0], "dream", {"prompt": "b first", "seed": 100})
        first_said = answer_of(standin, first)
        b_first = first_said.split("`")[1] if first_said.startswith("Queued") else None
        m = re.search(r"position (\d+) in the queue", first_said)
        position = int(m.group(1)) if m else 1
        print(f"B: one member's dream, with A's {a_queued} waiting: position {position}; "
              f"\"{first_said.splitlines()[0][:110]}\"")
        others = [standin.send_slash(app.id, b_guild, b_channel, mm, "dream", {"prompt": f"b {k}", "seed": 101 + k})
                  for k, mm in enumerate(b_members[1:])]
        b_said = [first_said, *(answer_of(standin, i) for i in others)]
        b_busy = sum(s.startswith("busy") for s in b_said)
        positions = [int(x.group(1)) if (x := re.search(r"position (\d+) in the queue", s)) else
                     (1 if "next in line" in s else None) for s in b_said]
        print(f"B: {len(b_members)} members, one dream each: positions {positions} (in the order sent), "
              f"{b_busy} told busy")

        wait_until(lambda: any(b_first in jobs for _, jobs in claims(fleet.worker_logs[0])), 600,
                   "B's first dream was never claimed")
        after = [jobs for ts, jobs in claims(fleet.worker_logs[0]) if ts >= queued_at - 0.5]
        which = next(k for k, jobs in enumerate(after, start=1) if b_first in jobs)
        print(f"B's dream: position {position} when queued, taken by the worker's claim {which} after it was "
              f"queued (that claim: {len(next(j for j in after if b_first in j))} dreams, batched)")
        ok_batch, ok_busy = which <= 2, b_busy == 0
        print(f"VERDICT: {'PASS' if ok_batch else 'FAIL'}: B's first dream in the first or second claim after "
              f"it was queued ({which})")
        print(f"VERDICT: {'PASS' if ok_busy else 'FAIL'}: none of B's members read busy ({b_busy} of "
              f"{len(b_members)}) while A's flood was told busy {a_busy} times")
        return 0 if ok_batch and ok_busy else 1
    finally:
        fleet.stop()
        standin.stop()
        redis_server.close()


if __name__ == "__main__":
    sys.exit(main())
