"""Chaos run: ten bots on the local Discord stand-in, several workers, a real Redis (AOF on), the tiny
model; N dreams from many members while workers are SIGKILLed at random, Redis is restarted once and
Discord answers bursts of 429 and 5xx. Every dream must end delivered once or with a clear message.

With --failover, Redis is highly available instead: a primary, a replica and three sentinels (all real
redis-server processes on loopback), every bot and worker connected through the sentinels; the primary is
SIGKILLed twice (the second time the one promoted after the first kill), each killed node brought back a
few seconds later to rejoin as a replica. A dream counts as lost if it was acknowledged "queued" and was
neither delivered nor told a failure. It also prints the failover time clients saw (a probe writing through
the sentinels every 50 ms: last failed write to first good one), and how long a replicated write (what "queued"
waits for) kept failing: with one replica, until the killed node is back as a replica of the new primary.

    python bench/chaos.py --jobs 200 --workers 3
    python bench/chaos.py --quick          # the short version the test suite runs
    python bench/chaos.py --failover       # ten bots, three workers, two primary kills
    python bench/chaos.py --failover --quick --replicas 2   # the test suite's failover run
    python bench/chaos.py --failover --replicas 2   # a second replica: open again as soon as one is promoted

Prints one line `jobs N, delivered D, told-failed F, lost L, duplicated X` and exits non-zero unless
D + F = N, L = 0, X = 0 and no ack came after 3 s.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dreamcore import redisconn  # noqa: E402
from dreamcore.localredis import LocalRedis  # noqa: E402
from dreamcore.settings import load_settings  # noqa: E402
from tests.support.fleet import Fleet  # noqa: E402
from tests.support.standin import DiscordStandIn  # noqa: E402

JOB_IN_NAME = re.compile(r"^dream-([0-9a-f]{16})-")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--bots", type=int, default=10)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--members", type=int, default=25)
    p.add_argument("--rate", type=float, default=4.0, help="dreams per second sent")
    p.add_argument("--kill-every", type=float, default=12.0, help="mean seconds between worker SIGKILLs (0: none)")
    p.add_argument("--deadline", type=float, default=1500.0, help="seconds to wait for every outcome")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="20 jobs, 3 bots, 2 workers: the test suite's version")
    p.add_argument("--failover", action="store_true",
                   help="Redis Sentinel (primary, replica, three sentinels); SIGKILL the primary twice")
    p.add_argument("--rejoin-s", type=float, default=3.0, help="--failover: seconds until a killed node is back")
    p.add_argument("--replicas", type=int, default=1, help="--failover: replicas besides the primary")
    a = p.parse_args()
    if a.quick:
        a.jobs, a.bots, a.workers, a.members, a.rate, a.kill_every, a.deadline = 16, 3, 2, 6, 2.0, 20.0, 240.0
        if a.failover:
            # Primary kills only: worker kills are test_chaos.py's quick run; fewer processes on 2 cores.
            # 24 s of dreams: a promotion takes ~2.3 s, and on a loaded 2-core machine several times that; at
            # 1.5 a second, two slow ones covered most of the run and left too few dreams queued to prove anything.
            a.jobs, a.bots, a.workers, a.rate, a.rejoin_s, a.kill_every = 24, 2, 1, 1.0, 1.0, 0.0
    return a


class Chaos:
    def __init__(self, args, fleet: Fleet, redis: LocalRedis):
        self.args = args
        self.fleet = fleet
        self.redis = redis
        self.rng = random.Random(args.seed)
        self.stop = threading.Event()
        self.kills = 0
        self.redis_restarts = 0
        self.bursts = 0
        self.promotions: list[float] = []
        self.worker_env: dict[str, str] = {}

    def workers_loop(self) -> None:
        """Keep args.workers workers alive, SIGKILLing one at random now and then (mid-job, mostly)."""
        while not self.stop.wait(self.rng.expovariate(1 / self.args.kill_every)):
            alive = [w for w in self.fleet.workers if w.poll() is None]
            if alive:
                victim = self.rng.choice(alive)
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
                self.kills += 1
            while sum(w.poll() is None for w in self.fleet.workers) < self.args.workers:
                self.fleet.start_worker(f"r{self.kills}", **self.worker_env)

    def discord_loop(self) -> None:
        routes = [r"PATCH /webhooks/.*/messages/@original", r"POST /interactions/.*/callback",
                  r"POST /channels/\d+/messages", r"POST /webhooks/\d+/[^/]+$"]
        while not self.stop.wait(self.rng.uniform(4, 9)):
            route = self.rng.choice(routes[:1] + routes[2:])  # never the 3-second ack itself
            if self.rng.random() < 0.5:
                self.fleet.standin.inject(route, 429, count=self.rng.randint(1, 3), retry_after=0.5,
                                          is_global=self.rng.random() < 0.3)
            else:
                self.fleet.standin.inject(route, self.rng.choice([500, 502, 504]), count=self.rng.randint(1, 3))
            self.bursts += 1

    def restart_redis_once(self, after_s: float) -> None:
        if self.stop.wait(after_s):
            return
        self.redis.kill()
        time.sleep(1.5)
        self.redis.start()
        self.redis_restarts += 1

    def kill_primary_twice(self, first_s: float, second_s: float) -> None:
        """SIGKILL the primary at first_s and again (the promoted one) at second_s; each killed node comes
        back rejoin_s after its kill and rejoins as a replica."""
        t0 = time.monotonic()
        for at in (first_s, second_s):
            if self.stop.wait(max(0.0, t0 + at - time.monotonic())):
                return
            old = self.redis.primary_port()
            node = self.redis.kill_primary()
            self.redis_restarts += 1
            try:
                self.promotions.append(self.redis.wait_promoted(old))
            except TimeoutError:
                self.promotions.append(float("nan"))
            self.stop.wait(max(0.0, self.args.rejoin_s - self.promotions[-1]))
            node.start()


# Around a send, no outage: a bot's Redis call on a dead primary gives up only after its read timeout, four times
# the probe's below, so a send that close to a window the probe saw may still meet the outage (under load a
# quick run once refused 2 such sends of 11 at 1 s).
CLEAR_S = redisconn.BOT_READ_TIMEOUT_S


class WriteProbe:
    """Writes through the sentinels every 50 ms, as a client does: how long did the outages last? With
    `replicated`, a write counts only once a replica has it too (what an enqueue needs before "queued")."""

    def __init__(self, env: dict[str, str], replicated: bool = False):
        self.settings = load_settings(**env)
        self.conn = redisconn.connect(self.settings, timeout_s=0.5, connect_timeout_s=0.3)
        self.replicated = replicated
        self.stop = threading.Event()
        self.outages: list[float] = []
        self.windows: list[tuple[float, float]] = []  # (last good write, first good write after), monotonic

    def write(self) -> None:
        if self.replicated:
            redisconn.transaction(self.conn, self.settings, lambda pipe: pipe.set("dream:bench:probe", time.time(), ex=60))
        else:
            self.conn.set("dream:bench:probe", time.time(), ex=60)

    def run(self) -> None:
        last_ok, failing = time.monotonic(), False
        while not self.stop.wait(0.05):
            try:
                self.write()
            except Exception:  # noqa: BLE001 - any failure of the write is an outage
                failing = True
                continue
            now = time.monotonic()
            if failing:
                self.outages.append(now - last_ok)
                self.windows.append((last_ok, now))
                failing = False
            last_ok = now


def told_reason(fleet: Fleet, inter) -> str:
    """The first words of what a told member read, to tell refusals at the door from failed jobs."""
    data = (inter.response or {}).get("data") or {}
    if data.get("flags", 0) & 64:
        return data.get("content", "")[:40]
    for m in fleet.standin.messages(int(inter.payload["channel_id"]), include_deleted=True):
        if m.interaction_id == inter.id and m.ephemeral:
            return (m.content or "")[:40]
    return "?"


def outcome(fleet: Fleet, inter) -> tuple[str, str | None]:
    """('delivered'|'told'|'pending', job id) for one interaction, from what the member can see."""
    body = inter.response or {}
    data = body.get("data") or {}
    if body.get("type") == 4 and data.get("flags", 0) & 64:
        return "told", None  # refused at once (e.g. Redis down): an ephemeral answer
    channel = int(inter.payload["channel_id"])
    job_id = None
    for m in fleet.standin.messages(channel, include_deleted=True):
        if m.interaction_id != inter.id:
            continue
        found = re.search(r"job `([0-9a-f]{16})`", m.content or "")
        job_id = job_id or (found.group(1) if found else None)
        if any(JOB_IN_NAME.match(a[0]) for a in m.attachments) and not m.deleted:
            match = JOB_IN_NAME.match(next(a[0] for a in m.attachments if JOB_IN_NAME.match(a[0])))
            return "delivered", match.group(1)
        if m.ephemeral and (m.content or "").startswith(("Couldn't", "I can't")):
            return "told", job_id
    if job_id:  # after the token's life the images come as a channel message naming the job in files
        for m in fleet.standin.messages(channel):
            if any(a[0].startswith(f"dream-{job_id}-") for a in m.attachments):
                return "delivered", job_id
    return "pending", job_id


def image_posts(fleet: Fleet, channels: list[int]) -> Counter:
    """How many live messages carry each job's images (the same message edited counts once)."""
    per_job: Counter = Counter()
    for c in channels:
        for m in fleet.standin.messages(c):
            jobs = {JOB_IN_NAME.match(a[0]).group(1) for a in m.attachments if JOB_IN_NAME.match(a[0])}
            per_job.update(jobs)
    return per_job


def diagnose(redis: LocalRedis, job_id: str | None) -> str:
    """Where a lost job got stuck, for the report."""
    if not job_id:
        return "(no job id seen)"
    import redis as redis_py
    from rq.job import Job
    from rq.serializers import JSONSerializer

    conn = redis.client() if hasattr(redis, "client") else redis_py.Redis.from_url(redis.url)
    try:
        status = Job.fetch(job_id, connection=conn, serializer=JSONSerializer).get_status()
    except Exception as err:
        status = f"? ({type(err).__name__})"
    return (f"rq={status} done={conn.get(f'dream:done:{job_id}')} "
            f"delivered={conn.get(f'dream:delivered:{job_id}')}")


def main() -> int:
    args = parse()
    tmp = Path(tempfile.mkdtemp(prefix="dreambot-chaos-"))
    from worker.tiny import make_tiny_model

    model = make_tiny_model(tmp / "tiny")
    ha_env: dict[str, str] = {}
    if args.failover:
        from tests.support.ha import HaRedis

        redis = HaRedis(replicas=args.replicas).start()
        ha_env = redis.env
        url = f"redis://127.0.0.1:{redis.primary_port()}/0"  # unused: the sentinels name the primary
    else:
        redis = LocalRedis(appendonly=True).start()
        url = redis.url
    standin = DiscordStandIn().start()
    fleet = Fleet(standin, url, model, tmp)
    fleet.setup(args.bots)
    members = [fleet.user_id] + [standin.add_member(fleet.guild_id, f"m{i}") for i in range(args.members - 1)]
    chaos = Chaos(args, fleet, redis)
    t0 = time.monotonic()
    try:
        for bot in fleet.bots:
            # Limits out of the way (they are tested elsewhere): every refusal here comes from the chaos.
            fleet.start_bot(bot, DREAMBOT_LOG_LEVEL="INFO", DREAMBOT_JOB_RETRIES="3",
                            DREAMBOT_LIMIT_GUILD_MAX_QUEUED="1000", DREAMBOT_LIMIT_USER_IMAGES_HOUR="1000",
                            DREAMBOT_LIMIT_USER_IMAGES_DAY="5000", DREAMBOT_LIMIT_GUILD_IMAGES_HOUR="5000",
                            DREAMBOT_LIMIT_GUILD_IMAGES_DAY="20000", DREAMBOT_MAX_WAIT_MIN="1440", **ha_env)
        fleet.wait_bots_ready(timeout=120)
        for i in range(args.workers):
            fleet.start_worker(f"w{i}", DREAMBOT_LOG_LEVEL="INFO", **ha_env)
        chaos.worker_env = ha_env
        span = args.jobs / args.rate
        if args.failover:
            probe, replicated = WriteProbe(ha_env), WriteProbe(ha_env, replicated=True)
            threads = [*([threading.Thread(target=chaos.workers_loop, daemon=True)] if args.kill_every > 0 else []),
                       threading.Thread(target=probe.run, daemon=True),
                       threading.Thread(target=replicated.run, daemon=True),
                       threading.Thread(target=chaos.kill_primary_twice, args=(span * 0.2, span * 0.7), daemon=True)]
        else:
            probe = replicated = None
            threads = [*([threading.Thread(target=chaos.workers_loop, daemon=True)] if args.kill_every > 0 else []),
                       threading.Thread(target=chaos.discord_loop, daemon=True),
                       threading.Thread(target=chaos.restart_redis_once, args=(span / 2,), daemon=True)]
        for t in threads:
            t.start()
        inters, sent_at = [], []
        for i in range(args.jobs):
            sent_at.append(time.monotonic())
            bot = fleet.bots[i % len(fleet.bots)]
            inters.append(standin.send_slash(bot.app.id, fleet.guild_id, bot.channel_id, members[i % len(members)],
                                             "dream", {"prompt": f"chaos dream {i}", "aspect": "12:5",
                                                       "steps": 2, "seed": i}))
            time.sleep(1 / args.rate)
        deadline = time.monotonic() + args.deadline
        while time.monotonic() < deadline:
            states = [outcome(fleet, x)[0] for x in inters]
            if "pending" not in states:
                break
            time.sleep(1.0)
        chaos.stop.set()
        for p in (probe, replicated):
            if p is not None:
                p.stop.set()
        time.sleep(3.0)  # let anything that would be posted twice show up
        results = [outcome(fleet, x) for x in inters]
        counts = Counter(state for state, _ in results)
        posts = image_posts(fleet, [b.channel_id for b in fleet.bots])
        dupes = sum(1 for n in posts.values() if n > 1)
        late = sum(1 for x in inters if x.late)
        n, d, f, lost = args.jobs, counts["delivered"], counts["told"], counts["pending"]
        acked = sum(1 for x in inters if (x.response or {}).get("type") in (4, 5))
        queued = sum(1 for state, job_id in results if job_id)
        if args.failover:
            def spans(xs):
                return ", ".join(f"{x:.2f} s" for x in xs) or "none"
            print(f"failover: {time.monotonic() - t0:.0f}s, {chaos.redis_restarts} primary SIGKILLs, replica promoted "
                  f"after {spans(chaos.promotions)}; writes failed for {spans(probe.outages)} (client-side, last "
                  f"failed to first good write), replicated writes for {spans(replicated.outages)} (until a "
                  f"replica is back: the killed node rejoins {args.rejoin_s:.0f} s after its kill); "
                  f"{chaos.kills} worker SIGKILLs, {late} acks over 3 s")
            print(f"sent {n}, answered {acked}, acknowledged queued {queued}, refused at the door {n - queued}")
            # A dream sent in the clear (no replicated write failed from CLEAR_S before it to CLEAR_S after) has
            # no reason to be refused: refusals belong to the promotions alone.
            clear = [job_id is not None for (state, job_id), t in zip(results, sent_at, strict=True)
                     if not any(a - CLEAR_S < t < b + CLEAR_S for a, b in replicated.windows)]
            print(f"sent in the clear {len(clear)}, queued of them {sum(clear)}")
        else:
            print(f"chaos: {time.monotonic() - t0:.0f}s, {chaos.kills} worker SIGKILLs, "
                  f"{chaos.redis_restarts} Redis restart, {chaos.bursts} Discord 429/5xx bursts, {late} late acks")
        for (state, job_id), x in zip(results, inters, strict=True):
            if state == "pending":
                print(f"  lost: interaction {x.id} job {job_id} ack {x.response_type} {diagnose(redis, job_id)}")
        reasons = Counter(told_reason(fleet, x) for (state, _), x in zip(results, inters, strict=True)
                          if state == "told")
        for reason, count in reasons.most_common():
            print(f"  told {count}x: {reason}...")
        print(f"jobs {n}, delivered {d}, told-failed {f}, lost {lost}, duplicated {dupes}")
        return 0 if d + f == n and lost == 0 and dupes == 0 and late == 0 else 1
    finally:
        chaos.stop.set()
        fleet.stop()
        standin.stop()
        if args.failover:
            redis.stop()
        else:
            redis.close()


if __name__ == "__main__":
    sys.exit(main())
