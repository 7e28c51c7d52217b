"""Does a /dream cost the same at 50,000 queued as at 0? The submit path (limits, backpressure, fair enqueue,
position and ETA: `bot.backend.Backend.submit`, what every bot runs for /dream) and the live-status lookups,
against one Redis (AOF, fsync every second) pre-filled to each depth with dreams of many guilds and members.

Per depth it prints: submit latency p50/p99 at a steady rate, Redis commands and Redis CPU per submit
(INFO commandstats / INFO cpu deltas; commands inside scripts counted), the slowest Redis call in the window
(SLOWLOG, slowlog-log-slower-than 1000 us), and the cost of one live-status lookup (a waiting dream's
position and ETA) with every waiting dream's status kept current.

What it is not (yet): the issue's full bench runs ten `dreambot bot` processes on the Discord stand-in and
times the interaction ack; this one calls the submit path in-process, so it measures Redis and the
submit's own work, not discord.py or the stand-in.

    python bench/depth.py                 # depths 0, 1000, 10000, 50000; 20 submits/s for 20 s each
    python bench/depth.py --quick         # depths 0, 1000; 5 s each
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import redis
from _common import GENEROUS_LIMITS, commandstats, fmt_ms, machine, pct, proc_cpu_s, start_redis, stats_delta


def redis_cpu_us(conn: redis.Redis) -> float:
    return proc_cpu_s(int(conn.info("server")["process_id"])) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", default="0,1000,10000,50000")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.depths, args.seconds = "0,1000", 5.0
    depths = [int(x) for x in args.depths.split(",")]
    t_start = time.perf_counter()
    print(f"machine: {machine()}", flush=True)
    server = start_redis()
    os.environ.update(GENEROUS_LIMITS, REDIS_URL=server.url, DREAMBOT_LIMIT_GUILD_MAX_QUEUED="100000")
    from bot.backend import Backend
    from dreamcore import fairq, stats
    from dreamcore.job import make_job, make_origin, make_request
    from dreamcore.queue import queue_names
    from dreamcore.settings import load_settings

    settings = load_settings()
    conn = redis.Redis.from_url(server.url)
    conn.config_set("slowlog-log-slower-than", 1000)
    backend = Backend(settings, redis.Redis.from_url(server.url))
    conn.hset(stats.STATS_KEY, "s_per_image", "0.001")  # a measured speed, so backpressure and ETA run
    rng = random.Random(7)
    filled = 0
    rows = []

    def filler(n: int) -> list:
        out = []
        for _ in range(n):
            guild, user = rng.randrange(1, 400), rng.randrange(1, 20000)
            origin = make_origin(instance=f"bot{guild % 10}", guild_id=guild, channel_id=10, user_id=user)
            out.append(make_job(make_request(prompt="backlog", seed=1, count=rng.randint(1, 4)), origin))
        return out

    submitter = 0
    for k in range(5):  # load the scripts, outside any window
        backend.submit(make_job(make_request(prompt="warm-up", seed=k),
                                make_origin(instance="bot0", guild_id=999, channel_id=10, user_id=1 + k)))
    filled += 5
    for depth in depths:
        t0 = time.perf_counter()
        while filled < depth:
            chunk = min(500, depth - filled)
            backend.queue.enqueue_many(filler(chunk))
            filled += chunk
        waiting = fairq.totals(conn, queue_names()).jobs
        print(f"[{time.perf_counter() - t_start:6.1f} s] depth {depth}: {waiting} waiting "
              f"(filled in {time.perf_counter() - t0:.1f} s)", flush=True)
        conn.slowlog_reset()
        before, cpu0 = commandstats(conn), redis_cpu_us(conn)
        lat, queued, n = [], 0, int(args.rate * args.seconds)
        start = time.perf_counter()
        for k in range(n):
            target = start + k / args.rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            submitter += 1
            origin = make_origin(instance="bot0", guild_id=1000 + submitter % 50, channel_id=10,
                                 user_id=10**6 + submitter)
            job = make_job(make_request(prompt="a lighthouse at dusk", seed=k), origin)
            t = time.perf_counter()
            out = backend.submit(job)
            lat.append((time.perf_counter() - t) * 1000)
            queued += out.ok
        after, cpu1 = commandstats(conn), redis_cpu_us(conn)
        delta = stats_delta(after, before, exclude=("info", "slowlog|get", "slowlog|reset", "config|set"))
        cmds = sum(c for c, _ in delta.values()) / n
        slow = conn.slowlog_get(128)
        slowest = max((e["duration"] for e in slow), default=0)
        slow_names = sorted({(e["command"].decode(errors="replace") if isinstance(e["command"], bytes)
                              else str(e["command"]))[:40] for e in slow})
        filled += queued
        submit_cpu = (cpu1 - cpu0) / n
        # Live status: every waiting dream's position and ETA, looked up the way bot/progress.py does.
        ids = fairq.waiting_ids(conn, "dream-default", 0, -1)
        sample = ids[:: max(1, len(ids) // 2000)][:2000]
        before, cpu0, t = commandstats(conn), redis_cpu_us(conn), time.perf_counter()
        stats.eta_for(backend.queue, sample)
        wall = (time.perf_counter() - t) * 1e6 / max(1, len(sample))
        after, cpu1b = commandstats(conn), redis_cpu_us(conn)
        ldelta = stats_delta(after, before, exclude=("info",))
        lcmds = sum(c for c, _ in ldelta.values()) / max(1, len(sample))
        lcpu = (cpu1b - cpu0) / max(1, len(sample))
        rows.append((depth, n, queued, pct(lat, 50), pct(lat, 99), cmds, submit_cpu, slowest / 1000,
                     len(slow), ", ".join(slow_names), lcmds, lcpu, wall))
        print(f"[{time.perf_counter() - t_start:6.1f} s] depth {depth} done: p99 {fmt_ms(pct(lat, 99))} ms, "
              f"{cmds:.1f} commands/submit, slowlog {len(slow)}", flush=True)

    print("submit path by queue depth (Backend.submit: limits acquire, backpressure, fair enqueue, position, ETA)")
    print(f"{'depth':>7} {'sent':>5} {'queued':>6} {'p50 ms':>7} {'p99 ms':>7} {'cmds/submit':>11} "
          f"{'redis CPU us/submit':>19} {'slowest ms':>10} {'>1ms':>5} {'status: cmds/lookup':>19} "
          f"{'CPU us/lookup':>13}")
    for r in rows:
        print(f"{r[0]:>7} {r[1]:>5} {r[2]:>6} {fmt_ms(r[3]):>7} {fmt_ms(r[4]):>7} {r[5]:>11.1f} {r[6]:>19.0f} "
              f"{r[7]:>10.2f} {r[8]:>5} {r[10]:>19.1f} {r[11]:>13.1f}" + (f"  slow: {r[9]}" if r[9] else ""))
    base, deep = rows[0], rows[-1]
    ok_cmds = deep[5] <= 1.2 * base[5]
    ok_cpu = deep[6] <= 1.2 * base[6]
    ok_slow = all(r[8] == 0 for r in rows)
    ok_p99 = all(r[4] <= 100 for r in rows)
    print(f"VERDICT: commands/submit at {deep[0]} = {deep[5] / base[5]:.2f}x depth {base[0]} (<= 1.2x: "
          f"{'PASS' if ok_cmds else 'FAIL'}); Redis CPU/submit {deep[6] / max(1, base[6]):.2f}x "
          f"({'PASS' if ok_cpu else 'FAIL'}, CPU figures are noisy on a shared machine); "
          f"no call over 1 ms: {'PASS' if ok_slow else 'FAIL'}; submit p99 <= 100 ms: {'PASS' if ok_p99 else 'FAIL'}")
    print(f"total wall time {time.perf_counter() - t_start:.1f} s")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
