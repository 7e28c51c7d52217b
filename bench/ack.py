"""How fast do ten bot instances acknowledge /dream under a rising rate? (Discord drops an interaction whose
callback comes after 3 s.)

Ten real `python -m dreambot bot` processes (started the way tests/support/fleet.py starts them) on the local
Discord stand-in, one real Redis (AOF, fsync every second, as docker-compose runs it), no worker: jobs only
queue. A sender thread dispatches /dream interactions round-robin over the ten bots and over many members
at a fixed rate per step; the stand-in timestamps the INTERACTION_CREATE frame as it goes out on the
gateway and the bot's callback as it arrives (`Interaction.ack_latency_s`).

    python bench/ack.py            # 5, 10, 20, 40 interactions/s, 10 s each
    python bench/ack.py --quick    # a short smoke run
    python bench/ack.py --rates 20 --seconds 30 --keep-backlog

By default the queue and the limit counters are emptied between steps, so each rate starts from an empty
queue (the queue still grows during a step: nothing consumes it); --keep-backlog lets it pile up.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import redis
from _common import GENEROUS_LIMITS, fmt_ms, machine, pct, proc_cpu_s, start_redis, wait_until

from tests.support.fleet import Fleet
from tests.support.standin import DiscordStandIn

TARGET_RATE = 20.0
TARGET_P99_MS = 100.0
LATE_S = 3.0
N_BOTS = 10
FLAG_EPHEMERAL = 64


def reset_queue(conn: redis.Redis) -> None:
    """Forget every queued job and every limit counter (between steps; bench only)."""
    for pattern in ("dream:fq:*", "rq:queue:dream-*", "rq:job:*", "dream:limits:*", "rq:wip:*", "rq:scheduled:*"):
        keys = list(conn.scan_iter(pattern, count=1000))
        for i in range(0, len(keys), 500):
            conn.unlink(*keys[i:i + 500])


def waiting(conn: redis.Redis) -> int:
    """Dreams waiting in the fair queue (and in RQ's own lists, where an older release left any)."""
    from dreamcore.queue import fair_order
    from dreamcore.queue.rq_queues import queue_names
    return fair_order.totals(conn, queue_names()).jobs


def start_bots(fleet: Fleet, env: dict[str, str], timeout: float = 180) -> None:
    """Start every bot of the fleet with `env` on top of the fleet's own, and wait until all are on the
    gateway with their commands synced."""
    for bot in fleet.bots:
        fleet.start_bot(bot, **env)
    fleet.wait_bots_ready(timeout=timeout)


def warm_up(fleet: Fleet, guild_id: int, channel_id: int, user_id: int) -> list:
    """One /dream per bot, not measured: first-call costs (imports, connection setup, script loads) are not
    the steady state."""
    warm = [fleet.standin.send_slash(b.app.id, guild_id, channel_id, user_id, "dream", {"prompt": "warm-up"})
            for b in fleet.bots]
    wait_until(lambda: all(x.callbacks or x.timed_out for x in warm), 10)
    return warm


def send_dreams(fleet: Fleet, target, rate: float, count: int, offset: int) -> tuple[list, list[str], float]:
    """Dispatch `count` /dream interactions at `rate`/s, number n going where `target(n)` says
    ((bot, guild_id, channel_id, user_id)); wait for every callback (or the 3 s deadline).
    Returns (interactions, send errors, seconds from the first send to the last)."""
    sent: list = []
    errors: list[str] = []
    interval = 1.0 / rate
    t0 = time.monotonic() + 0.05
    for i in range(count):
        target_t = t0 + i * interval
        delay = target_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        n = offset + i
        bot, guild_id, channel_id, user = target(n)
        try:
            inter = fleet.standin.send_slash(bot.app.id, guild_id, channel_id, user, "dream",
                                             {"prompt": f"a lighthouse at dusk, number {n}"})
            sent.append(inter)
        except Exception as err:  # noqa: BLE001 - counted and shown
            errors.append(f"{type(err).__name__}: {err}")
    span = time.monotonic() - t0
    # Every interaction gets its callback or passes its deadline within LATE_S (+ slack for the stand-in).
    wait_until(lambda: all(x.callbacks or x.timed_out for x in sent), LATE_S + 5.0, 0.05)
    return sent, errors, span


def is_queued(x) -> bool:
    """The bot answered at once with its public "Queued: job ..." reply (accepted, not refused)."""
    return (x.acked and x.response_type == 4
            and str((x.response or {}).get("data", {}).get("content", "")).startswith("Queued"))


def tally(sent: list) -> dict:
    """Ack latency percentiles and what each interaction got back."""
    lat_ms = [x.ack_latency_s * 1000 for x in sent if x.ack_latency_s is not None]
    return {
        "sent": len(sent), "p50": pct(lat_ms, 50), "p99": pct(lat_ms, 99), "max": max(lat_ms) if lat_ms else math.nan,
        "late": sum(1 for x in sent if x.late or not x.acked),  # refused as late, or no callback at all
        "deferred": sum(1 for x in sent if x.acked and x.response_type == 5),
        "refused": sum(1 for x in sent if x.acked and x.response_type == 4
                       and int((x.response or {}).get("data", {}).get("flags") or 0) & FLAG_EPHEMERAL),
        "queued": sum(1 for x in sent if is_queued(x)),
        "over_100ms": sum(1 for v in lat_ms if v > 100),
    }


def run_step(fleet: Fleet, members: list[int], rate: float, count: int, offset: int) -> dict:
    """Dispatch `count` /dream interactions at `rate`/s round-robin over the bots and `members`."""
    def target(n: int):
        bot = fleet.bots[n % len(fleet.bots)]
        return bot, fleet.guild_id, bot.channel_id, members[n % len(members)]

    sent, errors, span = send_dreams(fleet, target, rate, count, offset)
    res = tally(sent)
    res.update(rate=rate, errors=errors, achieved=(len(sent) - 1) / span if span > 0 else rate)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="+", default=[5, 10, 20, 40], help="interactions per second, one step each")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each step")
    ap.add_argument("--members", type=int, default=200, help="guild members the requests are spread over")
    ap.add_argument("--keep-backlog", action="store_true", help="don't empty the queue between steps")
    ap.add_argument("--quick", action="store_true", help="smoke run: rates 5 and 20, 2 s each")
    args = ap.parse_args()
    if args.quick:
        args.rates, args.seconds = [5, 20], 2.0

    print(f"machine: {machine()}; {N_BOTS} bot processes, the stand-in and Redis share it")
    t_start = time.monotonic()
    server = start_redis()
    conn = redis.Redis.from_url(server.url)
    standin = DiscordStandIn().start()
    tmp = Path(tempfile.mkdtemp(prefix="dreambot-bench-ack-"))
    fleet = Fleet(standin, server.url, tmp / "no-model", tmp)
    results = []
    try:
        fleet.setup(N_BOTS)
        members = [standin.add_member(fleet.guild_id, f"member{i}") for i in range(args.members)]
        start_bots(fleet, GENEROUS_LIMITS)
        print(f"{N_BOTS} bots ready in {time.monotonic() - t_start:.1f} s; members {len(members)}; "
              f"queue emptied between steps: {not args.keep_backlog}")
        warm_up(fleet, fleet.guild_id, fleet.bots[0].channel_id, members[0])
        reset_queue(conn)

        offset = 0
        for rate in args.rates:
            count = max(1, round(rate * args.seconds))
            pids = [b.proc.pid for b in fleet.bots]
            cpu0 = sum(proc_cpu_s(p) for p in pids)
            rcpu0 = conn.info("cpu")
            res = run_step(fleet, members, rate, count, offset)
            cpu1 = sum(proc_cpu_s(p) for p in pids)
            rcpu1 = conn.info("cpu")
            res["depth"] = waiting(conn)
            res["bot_cpu_ms"] = (cpu1 - cpu0) * 1000 / max(1, res["sent"])
            res["redis_cpu_ms"] = ((rcpu1["used_cpu_user"] + rcpu1["used_cpu_sys"])
                                   - (rcpu0["used_cpu_user"] + rcpu0["used_cpu_sys"])) * 1000 / max(1, res["sent"])
            results.append(res)
            offset += count
            print(f"  step {rate:g}/s done: {res['sent']} sent, p99 {fmt_ms(res['p99'])} ms, late {res['late']}",
                  flush=True)
            if res["errors"]:
                print(f"    send errors: {len(res['errors'])}, first: {res['errors'][0]}")
            if not args.keep_backlog:
                reset_queue(conn)
    finally:
        fleet.stop()
        standin.stop()
        conn.close()
        server.close()

    print()
    print("/dream acknowledgement, dispatch (INTERACTION_CREATE sent) -> interaction callback received")
    header = (f"{'rate/s':>7} {'achieved':>8} {'sent':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
              f"{'>100ms':>6} {'late>3s':>7} {'deferred':>8} {'queued':>6} {'refused':>7} {'depth':>5} "
              f"{'bot CPU ms/req':>14} {'redis CPU ms/req':>16}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['rate']:>7g} {r['achieved']:>8.1f} {r['sent']:>5} {fmt_ms(r['p50']):>8} {fmt_ms(r['p99']):>8} "
              f"{fmt_ms(r['max']):>8} {r['over_100ms']:>6} {r['late']:>7} {r['deferred']:>8} {r['queued']:>6} "
              f"{r['refused']:>7} {r['depth']:>5} {r['bot_cpu_ms']:>14.1f} {r['redis_cpu_ms']:>16.2f}")
    print("(depth: jobs waiting in the queue at the end of the step; deferred: answered 'thinking' after the "
          "1 s ACK_BUDGET_S; bot CPU: the ten bot processes together, per interaction)")

    at_target = [r for r in results if r["rate"] == TARGET_RATE]
    total_late = sum(r["late"] for r in results)
    if at_target:
        r = max(at_target, key=lambda x: x["p99"])  # the worst step at the target rate
        ok = r["p99"] <= TARGET_P99_MS and r["late"] == 0
        print(f"VERDICT: {'PASS' if ok else 'FAIL'}: p99 {fmt_ms(r['p99'])} ms at {TARGET_RATE:g} interactions/s "
              f"(target <= {TARGET_P99_MS:g} ms), {r['late']} late at that rate, {total_late} late in all steps")
    else:
        print(f"VERDICT: n/a: no step at {TARGET_RATE:g}/s (target p99 <= {TARGET_P99_MS:g} ms there); "
              f"{total_late} late in all steps")
    print(f"total wall time {time.monotonic() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
