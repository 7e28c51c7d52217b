"""Does a /dream cost the same at 50,000 queued as at 0? Ten real bot processes on the Discord stand-in, one
Redis (AOF, fsync every second, as docker-compose runs it), the queue pre-filled to each depth with dreams of
many guilds and members, then /dream at a steady rate for a fixed time per depth.

Per depth, with the ten bots started afresh (so every depth's window sees the same bots' live status: the
dreams each bot queued in that window, refreshed every 5 s by bot/progress.py):

  1. fill: the bench queues dreams of ~400 guilds and ~20,000 members (`DreamQueue.enqueue_many`, no limits)
     until the fair queue holds `depth` dreams; the bots are stopped meanwhile.
  2. start the ten `python -m dreambot bot` processes (limits as generous as the settings allow, guild
     cap 100,000), one warm-up /dream each (not measured), then a quiet spell (no /dream) that measures the
     bots' background: the relay's idle reads and the live-status refresh of the dreams they track.
  3. the window: /dream at `--rate`/s for `--seconds`, round-robin over the bots, from fresh guilds and
     members (the same limit state at every depth: no cooldown, quota or cap can refuse them); every
     interaction must get the public "Queued" reply. Ack = the stand-in sending INTERACTION_CREATE to the
     bot's callback arriving (`Interaction.ack_latency_s`). Redis commands and CPU per submit are the
     window's INFO commandstats / INFO cpu deltas over the submits (commands inside scripts counted); the
     bots' background in the window is estimated from the quiet spells before and after it and shown apart
     ("net" = the window less that estimate). SLOWLOG (slowlog-log-slower-than 1000 us) is reset at the
     window's start and read at its end; entries of commands that are O(1) here are marked as pauses
     (Redis preempted, or its vCPU stolen by the hypervisor, mid-call), RQ's own maintenance is named
     apart. Each window also reports Redis's preemptions and the hypervisor's steal on Redis's CPU.
  4. another quiet spell, now with the window's dreams tracked, then the bots stop.
  5. live status with every waiting dream kept current: one refresh of every waiting dream's position and
     ETA, the way bot/progress.py does it (`stats.eta_for`, in ten batches as ten bots would), measured
     alone; the load figure is that cost at one refresh per dream every 5 s.

Last, with the bots stopped: the limits' acquire script by the size of the guild's usage in the last day.
Before the first window and after the last: this machine's own stalls on Redis's CPU (bench/stalls.py).

    python bench/depth.py                 # depths 0, 1000, 10000, 50000; 20 /dream/s for 20 s each
    python bench/depth.py --quick         # depths 0, 1000; 5 s each
    python bench/depth.py --pin-redis     # Redis alone on CPU 0 (is a SLOWLOG entry the shared CPU?)
    python bench/depth.py --pin-redis --rt-redis   # and never descheduled by another process (root)
    python bench/depth.py --inprocess     # Backend.submit called in this process, no bots (the older bench)
    python bench/depth.py --status-alone 50000 --pin-redis --rt-redis   # the live-status refresh, nothing else
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import stalls
from _common import GENEROUS_LIMITS, commandstats, fmt_ms, machine, pct, proc_cpu_s, start_redis, stats_delta
from ack import LATE_S, N_BOTS, TARGET_P99_MS, is_queued, send_dreams, start_bots, tally, waiting, warm_up

from tests.support.fleet import Fleet
from tests.support.standin import DiscordStandIn

EXCLUDE = ("info", "slowlog|get", "slowlog|reset", "slowlog|len", "config|set", "config|get", "ping")
DEPTH_ENV = {"DREAMBOT_LIMIT_GUILD_MAX_QUEUED": "100000"}
FILL_CHUNK = 500
# RQ's own periodic maintenance (a worker's registry cleaning), should it show up in SLOWLOG: named apart.
# Commands that cannot take a millisecond on their own here (O(1), or O(log n) on one sorted set): one of
# them in SLOWLOG means Redis was descheduled mid-command (a CPU shared with the bots), not a slow command.
CHEAP = {"hget", "hmget", "hincrby", "hexists", "hset", "zcard", "zrank", "zscore", "llen", "exists", "get",
         "incr", "time", "expire", "sadd", "multi", "slowlog"}
BENCH_OWN = {"info", "slowlog", "config", "ping"}
RQ_MAINTENANCE = re.compile(r"^rq:(wip|finished|failed|deferred|scheduled|canceled|started|workers|clean_registries)")


# --- shared by both modes -----------------------------------------------------------------------------------

def redis_cpu_s(conn: redis.Redis) -> float:
    cpu = conn.info("cpu")
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"]


def filler(rng: random.Random, n: int) -> list:
    """`n` dreams of ~400 guilds and ~20,000 members, 1 to 4 images each (never the window's guilds)."""
    from dreamcore.job import make_job, make_origin, make_request
    out = []
    for _ in range(n):
        guild, user = rng.randrange(1, 400), rng.randrange(1, 20000)
        origin = make_origin(instance=f"bot{guild % 10}", guild_id=guild, channel_id=10, user_id=user)
        out.append(make_job(make_request(prompt="backlog", seed=1, count=rng.randint(1, 4)), origin))
    return out


def fill_to(conn: redis.Redis, backend, rng: random.Random, depth: int) -> int:
    """Queue dreams until `depth` wait; returns how many were added."""
    need = depth - waiting(conn)
    added = 0
    while added < need:
        chunk = min(FILL_CHUNK, need - added)
        backend.queue.enqueue_many(filler(rng, chunk))
        added += chunk
    return added


def script_names() -> dict[str, str]:
    """sha1 and opening text of every product Lua script -> its name, to name SLOWLOG entries."""
    import hashlib

    from dreamcore.limits import limiter
    from dreamcore.lua import LuaScript
    from dreamcore.queue import fair_order
    out = {}
    for mod, prefix in ((fair_order, "fairq"), (limiter, "limits")):
        for name in dir(mod):
            if name.isupper() and not name.startswith("_"):
                value = getattr(mod, name)
                text = value.source if isinstance(value, LuaScript) else value  # a .lua file, or inline text
                if isinstance(text, str) and "redis.call" in text:  # not the modules' other constants
                    out[hashlib.sha1(text.encode()).hexdigest()] = f"{prefix}.{name}"
    return out


def slow_entries(conn: redis.Redis, shas: dict[str, str]) -> list[tuple[float, str, bool, bool]]:
    """SLOWLOG since the last reset: (ms, what, is RQ's own maintenance, is a CHEAP command)."""
    out = []
    for e in conn.slowlog_get(1024):
        args = stalls.command_text(e["command"]).split(" ")
        cmd = args[0].lower()
        if cmd in BENCH_OWN:
            continue  # the bench's own reads (INFO, SLOWLOG, CONFIG), paused like anything else
        if cmd in ("evalsha", "evalsha_ro") and len(args) > 1:
            what = f"EVALSHA {shas.get(args[1], args[1][:12])}"
        elif cmd in ("eval", "eval_ro"):
            what = "EVAL script"
        else:
            what = " ".join(args[:2])[:60]
        key = args[1] if len(args) > 1 else ""
        out.append((e["duration"] / 1000, what, bool(RQ_MAINTENANCE.match(key)), cmd in CHEAP))
    return sorted(out, reverse=True)


def status_pass(conn: redis.Redis, backend, shas: dict[str, str], every_s: float, on_cpu: int | None = None) -> dict:
    """One refresh of every waiting dream's position and ETA, as ten bots' bot/progress.py would run it
    (`stats.eta_for` over each bot's share in one pipelined round trip), measured alone."""
    from dreamcore import stats
    from dreamcore.queue import fair_order
    from dreamcore.queue.rq_queues import queue_names
    ids = [j for name in queue_names() for j in fair_order.waiting_ids(conn, name)]
    shares = [ids[k::N_BOTS] for k in range(N_BOTS)]
    conn.slowlog_reset()
    s0, cpu0, t0, steal0 = commandstats(conn), redis_cpu_s(conn), time.perf_counter(), stalls.steal_ms(on_cpu)
    found = 0
    for share in shares:
        found += len(stats.eta_for(backend.queue, share))
    wall = time.perf_counter() - t0
    delta = stats_delta(commandstats(conn), s0, EXCLUDE)
    cpu = redis_cpu_s(conn) - cpu0
    n = max(1, len(ids))
    cmds = sum(c for c, _ in delta.values()) / n
    cpu_us = cpu * 1e6 / n
    rate = len(ids) / every_s
    return {"lookups": len(ids), "found": found, "cmds": cmds, "cpu_us": cpu_us, "wall_us": wall * 1e6 / n,
            "rate": rate, "cmds_s": rate * cmds, "cores": rate * cpu_us / 1e6,
            "slow": slow_entries(conn, shas), "steal_ms": stalls.steal_ms(on_cpu) - steal0}


# --- the ten-bot bench ----------------------------------------------------------------------------------

@dataclass
class Snap:
    stats: dict
    redis_cpu: float
    bot_cpu: float
    t: float
    edits: int


def snap(conn: redis.Redis, fleet: Fleet) -> Snap:
    return Snap(commandstats(conn), redis_cpu_s(conn), sum(proc_cpu_s(b.proc.pid) for b in fleet.bots),
                time.monotonic(), len(fleet.standin.requests(r"^PATCH /webhooks/")))


def rates(a: Snap, b: Snap) -> dict[str, float]:
    """Per second between two snapshots: Redis commands, Redis CPU s, bot CPU s, live-status edits."""
    dt = max(1e-9, b.t - a.t)
    cmds = sum(c for c, _ in stats_delta(b.stats, a.stats, EXCLUDE).values())
    return {"cmds": cmds / dt, "redis_cpu": (b.redis_cpu - a.redis_cpu) / dt,
            "bot_cpu": (b.bot_cpu - a.bot_cpu) / dt, "edits": (b.edits - a.edits) / dt}


def preemptions(pid: int) -> int:
    """Times the process was descheduled while it still wanted the CPU (Linux nonvoluntary_ctxt_switches):
    a Redis call that SLOWLOG times over 1 ms with a CPU-cheap command is usually one of these."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("nonvoluntary_ctxt_switches:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_stalls(args, stamp, rt: bool) -> dict:
    """This machine's own stalls on the CPU Redis gets (bench/stalls.py), measured beside the windows: what
    SLOWLOG shows of a pause the machine makes, whatever the call. `rt`: on real-time priority, as Redis is."""
    loops = {"the other CPUs idle": stalls.busy_loop(0, args.stall_seconds, rt=rt),
             "the other CPUs busy": stalls.busy_loop(0, args.stall_seconds, rt=rt, others_busy=True)}
    bare = stalls.bare_redis(0, args.stall_seconds, rt=rt)
    for line in stalls.describe(loops, bare):
        print(f"{stamp()} machine, CPU 0: {line}", flush=True)
    return {"loops": loops, "bare": bare}


def wait_disconnected(standin: DiscordStandIn, fleet: Fleet, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(s["connected"] for b in fleet.bots for s in standin.gateway_sessions(b.app.id)):
            return
        time.sleep(0.05)


def fleet_bench(args, depths: list[int]) -> list[dict]:
    from bot.backend import Backend
    from bot.progress import QUEUE_POLL_S
    from dreamcore import keys
    from dreamcore.settings import load_settings

    t_start = time.monotonic()

    def stamp() -> str:
        return f"[{time.monotonic() - t_start:6.1f} s]"

    server = start_redis()
    conn = redis.Redis.from_url(server.url)
    # With --pin-redis: Redis alone on CPU 0; this process, the stand-in in it and the bots it starts on the others.
    redis_cpu = 0 if args.pin_redis else None
    why_not = stalls.isolate(int(conn.info("server")["process_id"]), redis_cpu, args.rt_redis)
    if args.pin_redis:
        print(f"{stamp()} pinned: Redis on CPU 0, the bench, the stand-in and the bots on CPUs "
              f"{sorted(os.sched_getaffinity(0))}", flush=True)
    rt_ok = args.rt_redis and why_not is None  # whether Redis (and so the probes beside it) run real-time
    if args.rt_redis:
        print(f"{stamp()} " + (f"real-time Redis refused ({why_not}): it stays an ordinary process" if why_not
                               else "Redis's main thread on SCHED_FIFO priority 1 (reset on fork)"), flush=True)
    conn.config_set("slowlog-log-slower-than", args.slowlog_us)
    conn.config_set("slowlog-max-len", 1024)
    conn.hset(keys.STATS_KEY, "s_per_unit", "0.001")  # a measured speed, so backpressure and ETA run
    os.environ.update(GENEROUS_LIMITS, **DEPTH_ENV, REDIS_URL=server.url)
    backend = Backend(load_settings(), redis.Redis.from_url(server.url))  # the bench's own: the fill
    shas = script_names()
    standin = DiscordStandIn().start()
    tmp = Path(tempfile.mkdtemp(prefix="dreambot-bench-depth-"))
    fleet = Fleet(standin, server.url, tmp / "no-model", tmp)
    rng = random.Random(7)
    rows = []
    try:
        machine_before = machine_stalls(args, stamp, rt_ok)  # nothing runs yet but the idle stand-in
        fleet.setup(N_BOTS)

        def window_members(depth: int) -> tuple[list[tuple[int, int, int]], dict[str, str]]:
            """Fresh guilds and members for each depth's window (--guilds guilds, --members in each): every
            depth's /dream meet the same limit state (a guild's usage in the last day is read by every
            acquire, see the report), so only the queue depth differs between windows."""
            places = []
            for g in range(args.guilds):
                gid = standin.add_guild(f"depth {depth} guild {g}")
                places.append((gid, standin.add_channel(gid, "dreams")))
            members = [(gid, ch, standin.add_member(gid, f"d{depth}g{g}m{i}"))
                       for i in range(args.members) for g, (gid, ch) in enumerate(places)]
            random.Random(depth).shuffle(members)
            ids = [fleet.guild_id] + [gid for gid, _ in places]  # the fleet's own guild: the warm-ups
            return members, GENEROUS_LIMITS | DEPTH_ENV | {"DISCORD_GUILD_IDS": ",".join(map(str, ids))}

        print(f"{stamp()} each window: {args.guilds} fresh guilds x {args.members} members; bot logs in {tmp}",
              flush=True)
        offset = 0
        count = max(1, round(args.rate * args.seconds))
        for depth in depths:
            t0 = time.monotonic()
            added = fill_to(conn, backend, rng, depth)
            w0 = waiting(conn)
            print(f"{stamp()} depth {depth}: {w0} waiting ({added} added in {time.monotonic() - t0:.1f} s)",
                  flush=True)
            t0 = time.monotonic()
            members, env = window_members(depth)

            def target(n: int, members=members):
                gid, ch, user = members[n % len(members)]
                return fleet.bots[n % N_BOTS], gid, ch, user

            start_bots(fleet, env)
            warm_member = standin.add_member(fleet.guild_id, f"warm-up-{depth}")  # its own limits each time
            warm = warm_up(fleet, fleet.guild_id, fleet.bots[0].channel_id, warm_member)
            tracked0 = sum(is_queued(x) for x in warm)
            print(f"{stamp()}   {N_BOTS} bots ready and warmed up in {time.monotonic() - t0:.1f} s "
                  f"({tracked0}/{len(warm)} warm-ups queued)", flush=True)
            time.sleep(1.0)
            q0 = snap(conn, fleet)
            time.sleep(args.quiet)
            q1 = snap(conn, fleet)

            load = os.getloadavg()[0]
            conn.slowlog_reset()
            rpid = int(conn.info("server")["process_id"])
            nvcsw0, aof0 = preemptions(rpid), conn.info("persistence")["aof_rewrites"]
            steal0 = stalls.steal_ms(redis_cpu)
            a = snap(conn, fleet)
            # The window in parts with a snapshot after each: the machine's steal comes and goes within a
            # window, and the cheapest part is nearest the cost the code has (as timeit takes the minimum).
            sent, errors, span, parts = [], [], 0.0, []
            before, steal_before = a, steal0
            for k in range(args.parts):
                n_k = count // args.parts + (1 if k < count % args.parts else 0)
                got, errs, sp = send_dreams(fleet, target, args.rate, n_k, offset + len(sent))
                after, steal_after = snap(conn, fleet), stalls.steal_ms(redis_cpu)
                m = len(got)
                if m == 0:
                    continue  # no /dream in this part (more parts than dreams): nothing to divide by
                parts.append({"redis_us": (after.redis_cpu - before.redis_cpu) * 1e6 / m,
                              "cmd_us": sum(us for _, us in stats_delta(after.stats, before.stats, EXCLUDE).values()) / m,
                              "steal_ms": steal_after - steal_before})
                sent, errors, span = sent + got, errors + errs, span + sp
                before, steal_before = after, steal_after
            b = before
            nvcsw = preemptions(rpid) - nvcsw0
            steal = stalls.steal_ms(redis_cpu) - steal0
            aof = conn.info("persistence")["aof_rewrites"] - aof0
            slow = slow_entries(conn, shas)
            offset += count
            res = tally(sent)
            res.update(depth=depth, waiting0=w0, waiting1=waiting(conn), errors=errors,
                       achieved=(len(sent) - 1) / span if span > 0 else args.rate)
            refusals = [str((x.response or {}).get("data", {}).get("content", ""))[:160]
                        for x in sent if x.acked and not is_queued(x)]
            conn.slowlog_reset()
            time.sleep(args.quiet)
            c = snap(conn, fleet)
            slow_quiet = slow_entries(conn, shas)
            fleet.stop()
            wait_disconnected(standin, fleet)

            # The window, and the bots' background in it from the quiet spells (linear in dreams tracked).
            n = max(1, len(sent))
            win_s = b.t - a.t
            by_cmd = stats_delta(b.stats, a.stats, EXCLUDE)
            win = {"cmds": sum(x for x, _ in by_cmd.values()),
                   "redis_cpu": b.redis_cpu - a.redis_cpu, "bot_cpu": b.bot_cpu - a.bot_cpu,
                   "edits": b.edits - a.edits}
            r0, r1 = rates(q0, q1), rates(b, c)
            tracked1 = tracked0 + res["queued"]
            # Tracked dreams above tracked0, integrated over the window: a ramp while sending, flat after.
            extra_ts = res["queued"] * (span / 2 + max(0.0, win_s - span))
            bg = {}
            for k in ("cmds", "redis_cpu", "bot_cpu"):
                slope = (r1[k] - r0[k]) / max(1, tracked1 - tracked0)
                bg[k] = max(0.0, r0[k] * win_s + slope * extra_ts)
            res.update(
                win_s=win_s, cmds=win["cmds"] / n, net_cmds=(win["cmds"] - bg["cmds"]) / n,
                redis_us=win["redis_cpu"] * 1e6 / n, net_redis_us=(win["redis_cpu"] - bg["redis_cpu"]) * 1e6 / n,
                bot_ms=win["bot_cpu"] * 1e3 / n, net_bot_ms=(win["bot_cpu"] - bg["bot_cpu"]) * 1e3 / n,
                edits=win["edits"], bg_cmds_s0=r0["cmds"], bg_cmds_s1=r1["cmds"], tracked0=tracked0,
                tracked1=tracked1, slow=slow, slow_quiet=slow_quiet, refusals=refusals,
                load=load, preempted=nvcsw / max(1e-9, win_s), aof_rewrites=aof, steal_ms=steal,
                by_cmd={k: (c / n, us / n) for k, (c, us) in by_cmd.items()}, parts=parts,
            )
            res["status"] = status_pass(conn, backend, shas, QUEUE_POLL_S, redis_cpu)
            rows.append(res)
            st = res["status"]
            print(f"{stamp()}   window: {res['sent']} sent ({res['achieved']:.1f}/s), {res['queued']} queued, "
                  f"{res['refused']} refused, {res['late']} late, ack p50 {fmt_ms(res['p50'])} / p99 "
                  f"{fmt_ms(res['p99'])} ms, {res['cmds']:.1f} cmds/submit ({res['net_cmds']:.1f} net), "
                  f"slowlog {len(slow)}; live status: {st['lookups']} lookups, {st['cmds']:.1f} cmds and "
                  f"{st['cpu_us']:.1f} us each", flush=True)
            for e in errors[:3]:
                print(f"    send error: {e}")
            for text in refusals[:3]:
                print(f"    not queued: {text!r}")
        print(f"{stamp()} acquire by guild usage ...", flush=True)
        scan = acquire_by_guild_usage(conn, backend, shas, [0, 160, 1000] if args.quick else [0, 40, 160, 1000, 4800])
        machine_after = machine_stalls(args, stamp, rt_ok)
    finally:
        fleet.stop()
        standin.stop()
        conn.close()
        server.close()
    return rows, scan, (machine_before, machine_after)


def acquire_by_guild_usage(conn: redis.Redis, backend, shas: dict[str, str], sizes: list[int],
                           k: int = 100) -> list[dict]:
    """The limits' acquire script (every /dream runs it once) against a guild that already accepted `size`
    one-image dreams in the last day (it used to read and walk that guild's whole usage set each time; the
    bucket counters keep it flat)."""
    limiter = backend.limiter
    user = 5_000_000
    out = []

    def acquire(guild: int) -> None:
        nonlocal user
        user += 1
        if not limiter.acquire(guild, user, f"scan{user}", 1, 4).ok:
            raise RuntimeError(f"acquire refused in guild {guild}")

    for size in sizes:
        guild = 7_000_000 + size
        for _ in range(size):
            acquire(guild)
        conn.slowlog_reset()
        s0, cpu0, t0 = commandstats(conn), redis_cpu_s(conn), time.perf_counter()
        for _ in range(k):
            acquire(guild)
        wall = time.perf_counter() - t0
        calls, usec = (a - b for a, b in zip(commandstats(conn)["evalsha"], s0.get("evalsha", (0, 0)), strict=True))
        out.append({"size": size, "script_us": usec / max(1, calls), "cpu_us": (redis_cpu_s(conn) - cpu0) * 1e6 / k,
                    "wall_us": wall * 1e6 / k, "slow": sum(1 for e in slow_entries(conn, shas)
                                                           if "ACQUIRE" in e[1])})
    return out


def slow_text(entries: list[tuple[float, str, bool, bool]]) -> str:
    if not entries:
        return ""
    seen: dict[str, tuple[int, float]] = {}
    for ms, what, maint, cheap in entries:
        name = f"{what} (RQ maintenance)" if maint else f"{what} (O(1): a pause)" if cheap else what
        k, worst = seen.get(name, (0, 0.0))
        seen[name] = (k + 1, max(worst, ms))
    return ", ".join(f"{name} x{k} (max {worst:.2f} ms)" for name, (k, worst) in seen.items())


def report_fleet(rows: list[dict], scan: list[dict], stalls_seen: tuple[dict, dict], args) -> None:
    print()
    print(f"/dream by queue depth: {N_BOTS} bot processes on the stand-in, {args.rate:g}/s for {args.seconds:g} s "
          f"per depth; ack = INTERACTION_CREATE sent -> interaction callback received")
    h1 = (f"{'depth':>6} {'waiting':>7} {'sent':>5} {'queued':>6} {'refused':>7} {'deferred':>8} {'late>3s':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'>100ms':>6}")
    print(h1)
    print("-" * len(h1))
    for r in rows:
        print(f"{r['depth']:>6} {r['waiting0']:>7} {r['sent']:>5} {r['queued']:>6} {r['refused']:>7} "
              f"{r['deferred']:>8} {r['late']:>7} {fmt_ms(r['p50']):>7} {fmt_ms(r['p99']):>7} "
              f"{fmt_ms(r['max']):>7} {r['over_100ms']:>6}")
    print("(waiting: dreams in the fair queue when the window started)")
    print()
    print("cost per /dream in the window (window deltas / submits; net = less the bots' background: relay idle "
          "reads and the live-status refresh of the dreams they track, from the quiet spells)")
    h2 = (f"{'depth':>6} {'cmds/submit':>11} {'net':>6} {'Redis CPU us/submit':>19} {'net':>6} "
          f"{'bot CPU ms/req':>14} {'net':>5} {'edits':>5} {'bg cmds/s':>13} {'load':>4} {'preempt/s':>9} {'steal ms':>8} "
          f"{'slowest ms':>10} {'>1ms':>4}")
    print(h2)
    print("-" * len(h2))
    for r in rows:
        slowest = r["slow"][0][0] if r["slow"] else 0.0
        bg = f"{r['bg_cmds_s0']:.0f} -> {r['bg_cmds_s1']:.0f}"
        print(f"{r['depth']:>6} {r['cmds']:>11.1f} {r['net_cmds']:>6.1f} {r['redis_us']:>19.0f} "
              f"{r['net_redis_us']:>6.0f} {r['bot_ms']:>14.1f} {r['net_bot_ms']:>5.1f} {r['edits']:>5} {bg:>13} "
              f"{r['load']:>4.1f} {r['preempted']:>9.1f} {r['steal_ms']:>8.0f} {slowest:>10.2f} {len(r['slow']):>4}"
              + (f" aof-rewrite x{r['aof_rewrites']}" if r["aof_rewrites"] else "") + (f"  slow: {slow_text(r['slow'])}" if r["slow"] else ""))
    print("(bg cmds/s: the ten bots' Redis commands per second with no /dream, tracking "
          f"{rows[0]['tracked0']} dreams before the window -> {rows[0]['tracked1']} after; edits: live-status "
          "edits of the members' replies in the window; load: 1-minute load average at the window's start; "
          "preempt/s: Redis descheduled while runnable, per second of the window; steal: the hypervisor's on Redis's CPU "
          "(all CPUs unpinned) in the window; slowest: SLOWLOG, calls over "
          "1 ms only)")
    print()
    # Where Redis's time in commands went, the heaviest at either end: a command that grew with depth shows
    # here, apart from the event loop's reads and writes (INFO cpu counts both).
    top = sorted({k for r in (rows[0], rows[-1]) for k in r["by_cmd"]},
                 key=lambda k: -max(r["by_cmd"].get(k, (0, 0))[1] for r in (rows[0], rows[-1])))[:8]
    print("Redis time in commands per /dream in the window (INFO commandstats usec / submits; a script's own "
          "commands count both under their name and in its EVALSHA)")
    h5 = f"{'depth':>6} " + " ".join(f"{k[:15]:>15}" for k in top) + f" {'all (us)':>9}"
    print(h5)
    print("-" * len(h5))
    for r in rows:
        cells = " ".join(f"{r['by_cmd'].get(k, (0, 0))[1]:>9.1f} x{r['by_cmd'].get(k, (0, 0))[0]:<4.1f}" for k in top)
        print(f"{r['depth']:>6} {cells} {sum(us for _, us in r['by_cmd'].values()):>9.1f}")
    print("(cells: us per /dream x calls per /dream)")
    print()
    print(f"the window in {args.parts} parts of {args.seconds / args.parts:g} s: Redis CPU and time in commands per /dream, "
          "and the hypervisor's steal on Redis's CPU, in each part; least: the cheapest part (the bots' background, "
          "included, grows through a window as they track more dreams, the same at every depth)")
    h6 = (f"{'depth':>6} {'Redis CPU us/submit by part':>36} {'least':>6} {'in commands us by part':>30} "
          f"{'least':>6} {'steal ms by part':>20}")
    print(h6)
    print("-" * len(h6))
    def by_part(ps: list[dict], key: str, width: int) -> str:
        return " ".join(f"{x[key]:>{width}.0f}" for x in ps)

    for r in rows:
        ps = r["parts"]
        best = min(ps, key=lambda x: x["redis_us"])
        print(f"{r['depth']:>6} {by_part(ps, 'redis_us', 6):>36} {best['redis_us']:>6.0f} "
              f"{by_part(ps, 'cmd_us', 6):>30} {best['cmd_us']:>6.0f} {by_part(ps, 'steal_ms', 4):>20}")
    print()
    print("live status with every waiting dream kept current (one refresh of each dream's position and ETA every "
          "5 s, as bot/progress.py does; one full refresh measured alone)")
    h3 = (f"{'depth':>6} {'lookups':>7} {'cmds/lookup':>11} {'Redis CPU us/lookup':>19} {'wall us/lookup':>14} "
          f"{'lookups/s':>9} {'Redis cmds/s':>12} {'Redis cores':>11} {'steal ms':>8} {'>1ms':>4}")
    print(h3)
    print("-" * len(h3))
    for r in rows:
        s = r["status"]
        print(f"{r['depth']:>6} {s['lookups']:>7} {s['cmds']:>11.1f} {s['cpu_us']:>19.1f} {s['wall_us']:>14.1f} "
              f"{s['rate']:>9.0f} {s['cmds_s']:>12.0f} {s['cores']:>11.2f} {s['steal_ms']:>8.0f} {len(s['slow']):>4}"
              + (f"  slow: {slow_text(s['slow'])}" if s["slow"] else ""))
    quiet_slow = [(r["depth"], r["slow_quiet"]) for r in rows if r["slow_quiet"]]
    for depth, entries in quiet_slow:
        print(f"(SLOWLOG in the quiet spell after depth {depth}'s window: {slow_text(entries)})")
    print()
    print("the limits' acquire script (once per /dream) by the guild's usage in the last day (dreams it accepted, "
          "one image each; the quotas are bucket counters, at most 61 + 145 fields per member and guild), 100 acquires "
          "each, bots stopped")
    h4 = f"{'guild usage':>11} {'script us/call':>14} {'Redis CPU us/acquire':>20} {'round trip us':>13} {'>1ms':>4}"
    print(h4)
    print("-" * len(h4))
    for r in scan:
        print(f"{r['size']:>11} {r['script_us']:>14.0f} {r['cpu_us']:>20.0f} {r['wall_us']:>13.0f} {r['slow']:>4}")
    print()

    base, deep = rows[0], rows[-1]
    product = [e for r in rows for e in r["slow"] if not e[2]]
    maint = sum(1 for r in rows for e in r["slow"] if e[2])
    cheap = sum(1 for e in product if e[3])
    def least(r: dict) -> float:
        return min(x["redis_us"] for x in r["parts"])

    def cmd_us(r: dict) -> float:
        return sum(us for _, us in r["by_cmd"].values())

    checks = [
        ("every /dream queued (none refused, no send error)",
         all(r["queued"] == r["sent"] and not r["errors"] for r in rows),
         f"{sum(r['queued'] for r in rows)}/{sum(r['sent'] for r in rows)} queued"),
        (f"ack p99 <= {TARGET_P99_MS:g} ms at every depth", all(r["p99"] <= TARGET_P99_MS for r in rows),
         "p99 " + ", ".join(f"{fmt_ms(r['p99'])}" for r in rows) + " ms"),
        (f"0 late (> {LATE_S:g} s)", all(r["late"] == 0 for r in rows), f"{sum(r['late'] for r in rows)} late"),
        (f"Redis commands/submit at {deep['depth']} <= 1.2x depth {base['depth']}", deep["cmds"] <= 1.2 * base["cmds"],
         f"{deep['cmds'] / base['cmds']:.2f}x (net {deep['net_cmds'] / max(1e-9, base['net_cmds']):.2f}x)"),
        (f"Redis CPU/submit at {deep['depth']} <= 1.2x depth {base['depth']} (each depth's cheapest part)",
         least(deep) <= 1.2 * least(base),
         f"{least(deep) / max(1e-9, least(base)):.2f}x ({least(base):.0f} -> {least(deep):.0f} us); whole windows "
         f"{deep['redis_us'] / max(1e-9, base['redis_us']):.2f}x "
         f"(net {deep['net_redis_us'] / max(1e-9, base['net_redis_us']):.2f}x)"),
        ("no Redis call over 1 ms in any window (SLOWLOG empty)", not product,
         f"{len(product)} product calls ({cheap} of them O(1) commands, i.e. Redis paused mid-call; "
         f"{len(product) - cheap} scripts), {maint} RQ maintenance; per window "
         + ", ".join(f"{len(r['slow'])} with {r['steal_ms']:.0f} ms steal" for r in rows)),
    ]
    for what, ok, detail in checks:
        print(f"VERDICT: {'PASS' if ok else 'FAIL'}: {what}: {detail}")
    loops = [m["loops"]["the other CPUs busy"] for m in stalls_seen]
    bares = [m["bare"] for m in stalls_seen]
    print(f"(Redis time inside commands per /dream, INFO commandstats: {cmd_us(base):.0f} us at depth {base['depth']}, "
          f"{cmd_us(deep):.0f} us at {deep['depth']}, {cmd_us(deep) / max(1e-9, cmd_us(base)):.2f}x)")
    rates_said = " and ".join(f"{x['per_s']:.2f}" for x in loops)
    bare_said = " and ".join(str(x["over_1ms"]) for x in bares)
    print(f"(the machine itself, before and after the windows: a busy loop on Redis's CPU, the other CPU busy, stalled over 1 ms "
          f"{rates_said} times a second (longest "
          f"{max(x['max_ms'] for x in loops):.2f} ms); a Redis answering only GET logged "
          f"{bare_said} GETs over 1 ms in {bares[0]['seconds']:.0f} s; "
          f"the windows' Redis CPU saw {sum(r['steal_ms'] for r in rows):.0f} ms of hypervisor steal)")


# --- the in-process bench (no bots) -------------------------------------------------------------------------

def status_alone(args, depth: int) -> None:
    """The live-status refresh of every waiting dream with nothing else running: no bots, no stand-in. Is a
    SLOWLOG entry in the fleet's windows the code, or the machine under load?"""
    from bot.backend import Backend
    from dreamcore import keys
    from dreamcore.settings import load_settings

    server = start_redis()
    conn = redis.Redis.from_url(server.url)
    try:
        why_not = stalls.isolate(int(conn.info("server")["process_id"]), 0 if args.pin_redis else None,
                                 args.rt_redis)
        if args.rt_redis:
            print(f"real-time Redis: {why_not or 'yes'}")
        conn.hset(keys.STATS_KEY, "s_per_unit", "0.001")
        conn.config_set("slowlog-log-slower-than", args.slowlog_us)
        conn.config_set("slowlog-max-len", 1024)
        backend = Backend(load_settings(), redis.Redis.from_url(server.url))
        shas = script_names()
        t0 = time.monotonic()
        fill_to(conn, backend, random.Random(7), depth)
        print(f"{waiting(conn)} waiting (filled in {time.monotonic() - t0:.1f} s)")
        for k in range(2):
            st = status_pass(conn, backend, shas, 5.0, 0 if args.pin_redis else None)
            print(f"refresh {k + 1}: {st['lookups']} lookups, {st['cmds']:.1f} cmds and {st['cpu_us']:.1f} us of Redis "
                  f"CPU each, steal {st['steal_ms']:.0f} ms, {len(st['slow'])} calls over {args.slowlog_us / 1000:g} ms"
                  + (f": {slow_text(st['slow'])}" if st["slow"] else ""))
    finally:
        conn.close()
        server.close()


def inprocess_bench(args, depths: list[int]) -> None:
    """`Backend.submit` called in this process at a steady rate: Redis and the submit's own work, not
    discord.py or the stand-in."""
    from bot.backend import Backend
    from bot.progress import QUEUE_POLL_S
    from dreamcore import keys
    from dreamcore.job import make_job, make_origin, make_request
    from dreamcore.settings import load_settings

    t_start = time.perf_counter()
    server = start_redis()
    os.environ.update(GENEROUS_LIMITS, **DEPTH_ENV, REDIS_URL=server.url)
    conn = redis.Redis.from_url(server.url)
    conn.config_set("slowlog-log-slower-than", args.slowlog_us)
    conn.config_set("slowlog-max-len", 1024)
    backend = Backend(load_settings(), redis.Redis.from_url(server.url))
    conn.hset(keys.STATS_KEY, "s_per_unit", "0.001")
    shas = script_names()
    rng = random.Random(7)
    rows = []
    submitter = 0
    for k in range(5):  # load the scripts, outside any window
        backend.submit(make_job(make_request(prompt="warm-up", seed=k),
                                make_origin(instance="bot0", guild_id=999, channel_id=10, user_id=1 + k)))
    for depth in depths:
        t0 = time.perf_counter()
        fill_to(conn, backend, rng, depth)
        print(f"[{time.perf_counter() - t_start:6.1f} s] depth {depth}: {waiting(conn)} waiting "
              f"(filled in {time.perf_counter() - t0:.1f} s)", flush=True)
        conn.slowlog_reset()
        before, cpu0 = commandstats(conn), redis_cpu_s(conn)
        lat, queued, n = [], 0, max(1, round(args.rate * args.seconds))
        start = time.perf_counter()
        for k in range(n):
            delay = start + k / args.rate - time.perf_counter()
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
        after, cpu1 = commandstats(conn), redis_cpu_s(conn)
        cmds = sum(c for c, _ in stats_delta(after, before, EXCLUDE).values()) / n
        slow = slow_entries(conn, shas)
        st = status_pass(conn, backend, shas, QUEUE_POLL_S)
        rows.append((depth, n, queued, pct(lat, 50), pct(lat, 99), cmds, (cpu1 - cpu0) * 1e6 / n, slow, st))
        print(f"[{time.perf_counter() - t_start:6.1f} s] depth {depth} done: p99 {fmt_ms(pct(lat, 99))} ms, "
              f"{cmds:.1f} commands/submit, slowlog {len(slow)}", flush=True)
    server.close()

    print("submit path by queue depth, in-process (Backend.submit: limits acquire, backpressure, fair enqueue, "
          "position, ETA)")
    print(f"{'depth':>7} {'sent':>5} {'queued':>6} {'p50 ms':>7} {'p99 ms':>7} {'cmds/submit':>11} "
          f"{'redis CPU us/submit':>19} {'slowest ms':>10} {'>1ms':>5} {'status: cmds/lookup':>19} "
          f"{'CPU us/lookup':>13} {'Redis cores at 1/5s':>19}")
    for depth, n, queued, p50, p99, cmds, cpu, slow, st in rows:
        print(f"{depth:>7} {n:>5} {queued:>6} {fmt_ms(p50):>7} {fmt_ms(p99):>7} {cmds:>11.1f} {cpu:>19.0f} "
              f"{(slow[0][0] if slow else 0.0):>10.2f} {len(slow):>5} {st['cmds']:>19.1f} {st['cpu_us']:>13.1f} "
              f"{st['cores']:>19.2f}" + (f"  slow: {slow_text(slow)}" if slow else ""))
    base, deep = rows[0], rows[-1]
    print(f"VERDICT: commands/submit at {deep[0]} = {deep[5] / base[5]:.2f}x depth {base[0]} (<= 1.2x: "
          f"{'PASS' if deep[5] <= 1.2 * base[5] else 'FAIL'}); Redis CPU/submit {deep[6] / max(1, base[6]):.2f}x "
          f"({'PASS' if deep[6] <= 1.2 * base[6] else 'FAIL'}); no call over 1 ms: "
          f"{'PASS' if all(not r[7] for r in rows) else 'FAIL'}; submit p99 <= 100 ms: "
          f"{'PASS' if all(r[4] <= 100 for r in rows) else 'FAIL'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", default="0,1000,10000,50000")
    ap.add_argument("--rate", type=float, default=20.0, help="/dream per second in each window")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each window")
    ap.add_argument("--quiet", type=float, default=10.0,
                    help="quiet spells before and after each window (two live-status refreshes at 10 s)")
    ap.add_argument("--guilds", type=int, default=10, help="guilds the window's /dream come from")
    ap.add_argument("--members", type=int, default=100, help="members per guild")
    ap.add_argument("--slowlog-us", type=int, default=1000, help="slowlog-log-slower-than")
    ap.add_argument("--pin-redis", action="store_true",
                    help="Redis alone on CPU 0, everything else on the other CPUs (is SLOWLOG the CPU sharing?)")
    ap.add_argument("--rt-redis", action="store_true",
                    help="Redis's main thread real-time (SCHED_FIFO 1), as if it had its own machine; needs root")
    ap.add_argument("--parts", type=int, default=4, help="each window in this many parts, a snapshot after each")
    ap.add_argument("--stall-seconds", type=float, default=10.0,
                    help="this machine's own stalls (bench/stalls.py) before and after the windows, seconds each")
    ap.add_argument("--quick", action="store_true", help="smoke run: depths 0 and 1000, 5 s windows")
    ap.add_argument("--status-alone", type=int, default=0, metavar="N",
                    help="only: N dreams waiting, every one's live status refreshed twice, nothing else running")
    ap.add_argument("--inprocess", action="store_true", help="call Backend.submit in this process, no bots")
    args = ap.parse_args()
    if args.quick:
        args.depths, args.seconds, args.quiet, args.stall_seconds = "0,1000", 5.0, 5.0, 3.0
    depths = [int(x) for x in args.depths.split(",")]
    t_start = time.monotonic()
    print(f"machine: {machine()}" + ("" if args.inprocess else
                                     f"; {N_BOTS} bot processes, the stand-in and Redis share it"), flush=True)
    if args.status_alone:
        status_alone(args, args.status_alone)
    elif args.inprocess:
        inprocess_bench(args, depths)
    else:
        rows, scan, stalls_seen = fleet_bench(args, depths)
        report_fleet(rows, scan, stalls_seen, args)
    print(f"total wall time {time.monotonic() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
