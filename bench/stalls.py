"""How often does this machine stop a process that is ready to run for over a millisecond, whatever it runs?

SLOWLOG times a Redis call from start to end on the wall clock, so a call that the machine pauses (the
hypervisor running another guest on this vCPU, an interrupt storm) is logged however cheap the call. Two
measurements, side by side with the depth bench's windows, tell those pauses apart from slow calls:

  1. a busy loop on the CPU Redis gets, on real-time priority when allowed (nothing else on the machine can
     take the CPU from it), reading the clock in a tight loop: every gap over 1 ms is the machine's own
     stall. Run in 0.8 s bursts so the kernel's real-time throttling (950 ms a second) never cuts in; once
     with the other CPUs idle and once with them spinning, as the bots keep them in a window.
  2. a Redis that only answers GET of one small key, pinned and prioritised the same way, hammered from
     the other CPUs with pipelined GETs: its SLOWLOG over 1 ms is what the best-behaved Redis logs here.

    python bench/stalls.py                # 20 s of each, CPU 0
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

STALL_MS = 1.0
_PROBE = r"""
import os, sys, time
cpu, seconds, rt = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1"
os.sched_setaffinity(0, {cpu})
if rt:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
clock, gaps, busy = time.perf_counter_ns, [], 0.0
while busy < seconds:
    end = clock() + 800_000_000
    last = start = clock()
    while last < end:
        now = clock()
        if now - last > 500_000:
            gaps.append((now - last) / 1e6)
        last = now
    busy += (last - start) / 1e9
    time.sleep(0.2)
print(busy, *gaps)
"""


def realtime(pid: int) -> str | None:
    """A process's main thread on the lowest real-time priority (SCHED_FIFO 1): no ordinary process on its CPU
    can deschedule it. SCHED_RESET_ON_FORK so a child (an AOF rewrite) runs as an ordinary process and cannot
    starve its parent. None when it worked; why not (needs root or CAP_SYS_NICE) otherwise."""
    try:
        os.sched_setscheduler(pid, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(1))
    except OSError as e:
        return e.strerror or str(e)
    return None


def isolate(pid: int, cpu: int | None, rt: bool) -> str | None:
    """How the benches run Redis: process `pid` alone on `cpu` (this process, and what it starts, moved to the
    other CPUs; None: not pinned), and on real-time priority when `rt`. Returns why real-time was refused,
    None when it worked or was not asked for."""
    if cpu is not None:
        os.sched_setaffinity(pid, {cpu})
        mine = os.sched_getaffinity(0)
        os.sched_setaffinity(0, (mine - {cpu}) or mine)
    return realtime(pid) if rt else None


def steal_ms(cpu: int | None) -> float:
    """Time the hypervisor gave this vCPU (or, for None, all of them) to someone else, from /proc/stat."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts[0] == name:
            return int(parts[8]) * 1000 / os.sysconf("SC_CLK_TCK")
    return 0.0


def busy_loop(cpu: int, seconds: float, rt: bool, others_busy: bool = False) -> dict:
    """Stalls a clock-reading loop on `cpu` sees: {"seconds", "over_1ms", "per_s", "max_ms", "steal_ms"}.
    others_busy: the other CPUs spin meanwhile, as the bots keep them during a window (a host that caps
    this VM's CPU takes it back when every vCPU is busy: the stalls come with the load)."""
    others = sorted(set(range(os.cpu_count() or 1)) - {cpu}) if others_busy else []
    burners = [subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{c}}})\nwhile True: pass"])
               for c in others]
    s0, t0 = steal_ms(cpu), time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, str(cpu), str(seconds), "1" if rt else "0"],
                             capture_output=True, text=True, check=True).stdout.split()
    finally:
        for b in burners:
            b.kill()
            b.wait()
    busy, gaps = float(out[0]), [float(g) for g in out[1:]]
    over = [g for g in gaps if g > STALL_MS]
    return {"seconds": busy, "over_1ms": len(over), "per_s": len(over) / max(1e-9, busy),
            "max_ms": max(gaps, default=0.0), "steal_ms": steal_ms(cpu) - s0, "wall_s": time.monotonic() - t0}


def bare_redis(cpu: int, seconds: float, rt: bool) -> dict:
    """SLOWLOG over 1 ms of a Redis that answers nothing but GET of one key, on `cpu`, for `seconds` of
    pipelined GETs from this process (kept off `cpu`)."""
    from _common import start_redis
    server = start_redis()
    conn = redis.Redis.from_url(server.url)
    mine = os.sched_getaffinity(0)
    try:
        refused = isolate(int(conn.info("server")["process_id"]), cpu, rt)
        why_not = refused if rt else "not asked"
        conn.set("k", "v" * 100)
        conn.config_set("slowlog-log-slower-than", int(STALL_MS * 1000))
        conn.config_set("slowlog-max-len", 1024)
        conn.config_resetstat()
        conn.slowlog_reset()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pipe = conn.pipeline(transaction=False)
            for _ in range(100):
                pipe.get("k")
            pipe.execute()
        calls = int(conn.info("commandstats").get("cmdstat_get", {}).get("calls", 0))
        slow = [e["duration"] / 1000 for e in conn.slowlog_get(1024)
                if command_text(e["command"]).lower().split(" ")[0] == "get"]  # not this bench's own INFO and CONFIG
        return {"seconds": seconds, "gets": calls, "over_1ms": len(slow), "max_ms": max(slow, default=0.0),
                "realtime": why_not is None, "why_not": why_not}
    finally:
        os.sched_setaffinity(0, mine)
        conn.close()
        server.stop()


def command_text(raw) -> str:
    """A SLOWLOG entry's command as text (redis-py gives bytes)."""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def describe(loops: dict[str, dict], bare: dict) -> list[str]:
    prio = "real-time" if bare["realtime"] else f"ordinary priority ({bare['why_not']})"
    return [
        f"busy loop on that CPU, {prio}, {when}: {loop['over_1ms']} stalls over 1 ms in {loop['seconds']:.1f} s "
        f"({loop['per_s']:.2f}/s, longest {loop['max_ms']:.2f} ms; hypervisor steal on that CPU "
        f"{loop['steal_ms']:.0f} ms in the probe's {loop['wall_s']:.1f} s with its pauses)"
        for when, loop in loops.items()] + [
        f"a Redis doing nothing but GET, the same way: {bare['over_1ms']} GETs over 1 ms in {bare['seconds']:.0f} s "
        f"of {bare['gets']} (longest {bare['max_ms']:.2f} ms)",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    rt = realtime(0) is None  # can we? (then back to ordinary: the probe sets its own)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    loops = {"the other CPUs idle": busy_loop(args.cpu, args.seconds, rt),
             "the other CPUs busy": busy_loop(args.cpu, args.seconds, rt, others_busy=True)}
    for line in describe(loops, bare_redis(args.cpu, args.seconds, rt)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
