"""Redis commands per dream job, end to end, from `INFO commandstats` deltas on a private redis-server.

commandstats counts every command Redis executes, the ones run inside Lua scripts (the limits' acquire
and release, the fair enqueue) and MULTI/EXEC blocks included, so "commands" here is commands executed,
not round trips. Redis CPU per job comes from `INFO cpu` (used_cpu_user + used_cpu_sys of the server
process) over the same window: commandstats' own microseconds count a script's or a transaction's inner
commands twice (in EVALSHA/EXEC and under their own names).

  1. end to end: one real bot process on the local Discord stand-in, the product's worker in this process
     with a no-op pipeline (bench/overhead.py's NoopPipeline: blank 1024x1024 image, 40 step callbacks),
     N /dream interactions one after another, each until its picture is posted. The bench itself sends
     no Redis command inside the measured window (it waits on the stand-in), and the idle background
     (the relay's blocking outbox read, once a second) is measured first and subtracted.
  2. the bot's submit alone (`bot.backend.Backend.submit`: limits, fair enqueue, position, ETA) at several
     queue depths (constant since the fair sorted-set queue; it grew with every job waiting before).
  3. the worker alone: N queued jobs run back to back, one at a time and then batched (an empty worker
     run's commands subtracted).
  The relay's share is 1 minus 2 (at the depth 1 ran at) minus 3.

Then: the Redis command ceiling measured here with redis-benchmark, and what one Redis can feed.

    python bench/redis_count.py            # 40 jobs
    python bench/redis_count.py --quick    # 8 jobs
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis
from _common import GENEROUS_LIMITS, commandstats, machine, start_redis, stats_delta
from overhead import NoopPipeline, bare_noop, make_dream_job, settings_for
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

STEPS = 40
EXCLUDE = ("info", "config|set", "config|get", "flushall", "ping")


def _has_result(msg) -> bool:
    """The member's reply carries the result's images (named dream-<job>-...), not a progress preview."""
    return any(a[0].startswith("dream-") for a in msg.attachments)


def total(delta: dict) -> int:
    return sum(c for c, _ in delta.values())


def snap(conn: redis.Redis) -> tuple[dict, float, float]:
    """(commandstats, Redis server CPU seconds, monotonic time)."""
    cpu = conn.info("cpu")
    return commandstats(conn), cpu["used_cpu_user"] + cpu["used_cpu_sys"], time.monotonic()


def diff(after: tuple, before: tuple, exclude=EXCLUDE) -> tuple[dict, float, float]:
    """(per-command delta, CPU seconds, wall seconds)."""
    return stats_delta(after[0], before[0], exclude), after[1] - before[1], after[2] - before[2]


def end_to_end(server_url: str, conn: redis.Redis, settings, n: int, idle_s: float, tmp: Path,
               n_slow: int, step_s: float) -> dict:
    from dreamcore import keys, results
    from tests.support.fleet import Fleet
    from tests.support.standin import DiscordStandIn
    from worker.runner import make_worker

    standin = DiscordStandIn().start()
    fleet = Fleet(standin, server_url, tmp / "no-model", tmp)
    out: dict = {}
    errors: list[Exception] = []
    try:
        fleet.setup(1)
        bot = fleet.bots[0]
        members = [standin.add_member(fleet.guild_id, f"m{i}") for i in range(20)]
        fleet.start_bot(bot, **GENEROUS_LIMITS, DREAMBOT_DEFAULT_STEPS=str(STEPS))
        fleet.wait_bots_ready(timeout=120)

        pipe = NoopPipeline()

        def one_job(i: int) -> str:
            inter = standin.send_slash(bot.app.id, fleet.guild_id, bot.channel_id, members[i % len(members)],
                                       "dream", {"prompt": f"a lighthouse {i}", "seed": i})
            body = inter.wait_ack(5)
            m = re.search(r"job `([0-9a-f]{16})`", str(body.get("data", {}).get("content", "")))
            if not m:
                raise RuntimeError(f"not queued: {body}")
            standin.wait_for_message(lambda mm, _id=inter.id: mm.interaction_id == _id and _has_result(mm),
                                     timeout=15 + 2 * STEPS * pipe.step_s)
            time.sleep(0.05)  # the relay records delivery and acks right after posting
            return m.group(1)

        def driver():
            try:
                time.sleep(1.5)  # the worker is up and blocked in BLPOP, the relay in its outbox read
                s0 = snap(conn)
                time.sleep(idle_s)
                out["idle"] = diff(snap(conn), s0)
                job_ids = []
                s2 = snap(conn)
                for i in range(n):
                    job_ids.append(one_job(i))
                out["e2e"] = diff(snap(conn), s2)
                # The same with simulated GPU time, so the worker's progress updates (every 2 s: latent
                # preview, outbox nudge) and the bot's live-status edits run too.
                pipe.step_s = step_s
                edits0 = len(standin.requests(r"^PATCH /webhooks/"))
                s4 = snap(conn)
                for i in range(n, n + n_slow):
                    job_ids.append(one_job(i))
                out["slow"] = diff(snap(conn), s4)
                out["progress_edits"] = len(standin.requests(r"^PATCH /webhooks/")) - edits0 - n_slow
                out["delivered"] = sum(bool(conn.exists(keys.delivered_key(j))) for j in job_ids)
                out["pending"] = conn.xpending(keys.outbox_key(bot.instance), results.GROUP)["pending"]
            except Exception as err:  # noqa: BLE001
                errors.append(err)

        w = make_worker(settings, conn, pipeline=pipe, checker=None, name=f"bench-count-{os.getpid()}")
        th = threading.Thread(target=driver, daemon=True)
        th.start()
        w.work(max_jobs=n + n_slow, logging_level=settings.log_level)
        th.join(120)
        if errors:
            raise errors[0]
    finally:
        fleet.stop()
        standin.stop()
    return out


def submit_by_depth(conn: redis.Redis, settings, depths: list[int], k: int) -> list[tuple[int, float, float]]:
    """(depth, commands per submit, Redis CPU us per submit) with `depth` jobs waiting when the k measured
    submits start (they stay queued, so the last sees depth + k - 1; the cost no longer depends on depth)."""
    from bot.backend import Backend
    backend = Backend(settings)
    rows = []
    n = 50_000
    def empty_queues():
        for pattern in ("dream:fq:*", "rq:queue:dream-*"):
            for key in conn.scan_iter(pattern, count=1000):
                conn.delete(key)

    for depth in depths:
        empty_queues()
        for key in conn.scan_iter("dream:limits:*", count=1000):
            conn.delete(key)
        for _ in range(depth + 2):  # fill the queue, and warm the connection and scripts (not measured)
            n += 1
            if not backend.submit(make_dream_job(n, settings, STEPS, user_base=10_000)).ok:
                raise RuntimeError("fill refused")
        s0 = snap(conn)
        for _ in range(k):
            n += 1
            job = make_dream_job(n, settings, STEPS, user_base=10_000)
            if not backend.submit(job).ok:
                raise RuntimeError("submit refused")
        delta, cpu, _wall = diff(snap(conn), s0, EXCLUDE)
        rows.append((depth, total(delta) / k, cpu * 1e6 / k))
    empty_queues()
    return rows


def worker_only(conn: redis.Redis, settings, n: int) -> dict:
    from bot.backend import Backend
    from worker.runner import make_worker

    backend = Backend(settings)
    pipe = NoopPipeline()
    s0 = snap(conn)
    make_worker(settings, conn, pipeline=pipe, checker=None, name=f"bench-empty-{os.getpid()}").work(burst=True, logging_level="WARNING")
    empty = diff(snap(conn), s0)
    runs = {}
    # One job at a time (comparable with the end-to-end jobs above, which run one by one), then with the
    # worker's batching (these jobs all share a batch key).
    for label, batch in (("run", 1), ("batched", settings.batch_images)):
        for i in range(n):
            if not backend.submit(make_dream_job(90_000 + 1000 * batch + i, settings, STEPS, user_base=20_000)).ok:
                raise RuntimeError("submit refused")
        s1 = snap(conn)
        make_worker(settings.model_copy(update={"batch_images": batch}), conn, pipeline=pipe, checker=None,
                    name=f"bench-burst-{label}-{os.getpid()}").work(burst=True, logging_level="WARNING")
        runs[label] = diff(snap(conn), s1)
    run = runs["run"]
    # Bare RQ for scale: a no-op function, plain Queue and SimpleWorker, same serializer.
    q = Queue("bench-bare", connection=conn, serializer=JSONSerializer)
    SimpleWorker([q], connection=conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")
    s2 = snap(conn)
    SimpleWorker([q], connection=conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")
    bare_empty = diff(snap(conn), s2)
    func = f"{bare_noop.__module__}.bare_noop"
    s3 = snap(conn)
    for i in range(n):
        q.enqueue(func, i)
    SimpleWorker([q], connection=conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")
    bare = diff(snap(conn), s3)
    return {"empty": empty, "run": run, "batched": runs["batched"], "bare": bare, "bare_empty": bare_empty,
            "batch_images": settings.batch_images}


def redis_benchmark(port: int, quick: bool) -> float | None:
    """Simple-command throughput of this redis-server on this machine (GET/SET/LPUSH/LPOP/HSET, 50 clients)."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    n = "20000" if quick else "100000"
    res = subprocess.run([exe, "-p", str(port), "-q", "-n", n, "-c", "50", "-t", "get,set,lpush,lpop,hset"],
                         capture_output=True, text=True, timeout=300)
    rates = [float(m) for m in re.findall(r"([\d.]+) requests per second", res.stdout)]
    return sum(rates) / len(rates) if rates else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle background to measure")
    ap.add_argument("--depths", type=int, nargs="+", default=[0, 100, 500])
    ap.add_argument("--slow-jobs", type=int, default=3,
                    help="jobs run with simulated GPU time, to count the progress updates")
    ap.add_argument("--step-ms", type=float, default=125.0, help="simulated GPU time per step for those")
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 jobs (+1 slow), depths 0 and 50")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.idle, args.depths, args.slow_jobs = 8, 2.0, [0, 50], 1
    from worker.steps import CANCEL_CHECK_S

    t_start = time.monotonic()
    print(f"machine: {machine()}")
    server = start_redis()
    conn = redis.Redis.from_url(server.url)
    tmp = Path(tempfile.mkdtemp(prefix="dreambot-bench-redis-"))
    from dreamcore.logs import setup_logging

    try:
        settings = settings_for(server.url)
        setup_logging("INFO", "json", stream=io.StringIO())
        e = end_to_end(server.url, conn, settings, args.jobs, args.idle, tmp, args.slow_jobs, args.step_ms / 1000)
        by_depth = submit_by_depth(conn, settings, args.depths, 10 if args.quick else 20)
        wk = worker_only(conn, settings, args.jobs)
        ops = redis_benchmark(server.port, args.quick)
    finally:
        conn.close()
        server.close()

    n = args.jobs
    idle, idle_cpu, idle_s = e["idle"]
    rate_c, rate_u = total(idle) / idle_s, idle_cpu * 1e6 / idle_s
    e2e, e2e_cpu, e2e_s = e["e2e"]
    raw_c, raw_u = total(e2e), e2e_cpu * 1e6
    per_job_c = (raw_c - rate_c * e2e_s) / n
    per_job_u = (raw_u - rate_u * e2e_s) / n
    (w_empty, w_empty_cpu, _), (w_run, w_cpu, _) = wk["empty"], wk["run"]
    worker_c, worker_u = (total(w_run) - total(w_empty)) / n, (w_cpu - w_empty_cpu) * 1e6 / n
    submit_c, submit_u = by_depth[0][1], by_depth[0][2]

    print()
    print(f"1. end to end, {n} jobs one after another (bot submit + enqueue, worker, relay), "
          f"{e['delivered']}/{n + args.slow_jobs} delivered (with the slow ones below), {e['pending']} outbox entries pending")
    print(f"   idle background: {rate_c:.1f} commands/s, {rate_u / 1000:.1f} ms Redis CPU/s ({idle_s:.1f} s measured; "
          "relay's blocking outbox read, AOF fsync every second)")
    print(f"   commands per job: {per_job_c:.1f}   Redis CPU per job: {per_job_u:.0f} us   "
          f"(raw {raw_c / n:.1f} / {raw_u / n:.0f} us before subtracting {e2e_s:.1f} s of background)")
    print("   by command, per job: calls, and commandstats' us (EVALSHA's and EXEC's include their inner commands,"
          " which are also listed under their own names):")
    for name, (c, u) in sorted(e2e.items(), key=lambda kv: -kv[1][0]):
        print(f"     {name:<16} {c / n:7.2f} {u / n:9.1f}")
    slow, slow_cpu, slow_s = e["slow"]
    m = args.slow_jobs
    # XADDs per job: the result's outbox entry, RQ's own rq:results stream entry, and the progress updates.
    updates = (slow.get("xadd", (0, 0))[0] - 2 * m) / m if m else 0.0
    fast_updates = (e2e.get("xadd", (0, 0))[0] - 2 * n) / n  # a job's first step always publishes one
    print(f"   progress updates per job at these speeds: {fast_updates:.1f} (the first comes after 2 s of denoising)")
    if m and updates > fast_updates:
        slow_c = (total(slow) - rate_c * slow_s) / m
        slow_u = (slow_cpu * 1e6 - rate_u * slow_s) / m
        print(f"   with {args.step_ms:g} ms of simulated GPU time per step ({STEPS * args.step_ms / 1000:g} s per job), "
              f"{m} jobs: {slow_c:.1f} commands/job, {slow_u:.0f} Redis CPU us/job; {updates:.1f} progress updates per job, "
              f"{e['progress_edits'] / m:.1f} live-status edits per job")
        print(f"   => one progress update (worker preview + outbox nudge, bot load + edit): "
              f"{(slow_c - per_job_c) / (updates - fast_updates):.1f} commands, "
              f"{(slow_u - per_job_u) / (updates - fast_updates):.0f} Redis CPU us (CPU: noisy, few samples)")
    print()
    print("2. bot submit alone (Backend.submit: limits acquire, fair enqueue, position, ETA), by queue depth")
    print(f"   {'depth':>6} {'commands':>9} {'Redis CPU us':>12}")
    for depth, c, u in by_depth:
        print(f"   {depth:>6} {c:>9.1f} {u:>12.0f}")
    print()
    mgets = (w_run.get("mget", (0, 0))[0] - w_empty.get("mget", (0, 0))[0]) / n
    print(f"3. worker alone, {n} queued jobs back to back, one at a time: {worker_c:.1f} commands/job, {worker_u:.0f} "
          f"Redis us/job ({mgets:.1f} MGET: one for the job's done/cancelled/channel-gone flags before it runs, "
          f"the rest the cancel check at the first and last step and every {CANCEL_CHECK_S:g} s between; these "
          f"steps take no time, a GPU's {STEPS} take ~3 s, ~12 checks)")
    w_b, w_b_cpu, _ = wk["batched"]
    print("   by command, per job (the empty worker run's subtracted): one at a time, batched")
    for name, (c, _u) in sorted(w_run.items(), key=lambda kv: -kv[1][0]):
        per = (c - w_empty.get(name, (0, 0))[0]) / n
        per_b = (w_b.get(name, (0, 0))[0] - w_empty.get(name, (0, 0))[0]) / n
        if abs(per) >= 0.05 or abs(per_b) >= 0.05:
            print(f"     {name:<16} {per:7.2f} {per_b:7.2f}")
    print(f"   the same with batching (DREAMBOT_BATCH_IMAGES={wk['batch_images']}): "
          f"{(total(w_b) - total(w_empty)) / n:.1f} commands/job, {(w_b_cpu - w_empty_cpu) * 1e6 / n:.0f} Redis us/job "
          f"(one cancel MGET per check for the whole batch)")
    bare_c = (total(wk["bare"][0]) - total(wk["bare_empty"][0])) / n
    print(f"   for scale, bare RQ (enqueue + SimpleWorker run of a no-op function): {bare_c:.1f} commands/job")
    relay_c, relay_u = per_job_c - submit_c - worker_c, per_job_u - submit_u - worker_u
    print(f"   => relay (read, load, mark delivered, ack) ~ {relay_c:.1f} commands/job, {relay_u:.0f} Redis us/job "
          f"(1 - 2 at depth {by_depth[0][0]} - 3)")
    print()
    print("capacity of one Redis at these counts")
    if ops:
        print(f"   redis-benchmark here (simple commands, 50 clients, mean of GET/SET/LPUSH/LPOP/HSET): {ops:,.0f} ops/s")
        print(f"   -> {ops / per_job_c:,.0f} jobs/s by command count (measured ops/s / {per_job_c:.0f} commands per job)")
    print(f"   published conservative figure ~100,000 simple ops/s per core -> {100_000 / per_job_c:,.0f} jobs/s")
    print(f"   by Redis CPU time: {1e6 / per_job_u:,.0f} jobs/s per fully busy Redis core ({per_job_u:.0f} us per job)")
    print("   image bytes: none through Redis (the image store has them; a result carries their keys, "
          "bench/redis_memory.py measures what a job leaves in Redis)")
    print(f"total wall time {time.monotonic() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
