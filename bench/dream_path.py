"""The files a /dream runs through: from the command to the posted image, in the bot and in the worker.

One bot and one worker on the tiny model, through the Discord stand-in, each process started with a profiler
(a `sitecustomize` this script writes) that records which of the project's files run code. Recording restarts
just before the /dream is sent and the result is taken once its message is posted, so what the two processes
did to start up is left out; what a process does on its own meanwhile (the worker's heartbeat, the bot's
gateway) is in. It prints the files per process and per package, and the total a reader may open.

    python bench/dream_path.py [--root DIR]   # DIR: another checkout to measure (it must import the same way)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import _common  # noqa: E402,F401  (sys.path: the project root, for tests.support)

from tests.support.fleet import one_bot, result_message, send  # noqa: E402

PACKAGES = ("bot", "dreamcore", "worker", "dreambot")

# Runs at every start of the bot and worker processes: records, per process, each project file whose code runs
# after the marker file was last touched (checked at most once a second), with the time it was first seen.
TRACER = r'''
import os, sys, threading, time
_out, _marker, _root = os.environ["DREAM_PATH_OUT"], os.environ["DREAM_PATH_MARKER"], os.environ["DREAM_PATH_ROOT"]
_seen, _state = set(), {"stamp": None, "checked": 0.0}
_prefixes = tuple(os.path.join(_root, p) + os.sep for p in ("bot", "dreamcore", "worker", "dreambot"))
_name = " ".join(sys.argv[1:3]) or "python"
def _profile(frame, event, arg):
    if event != "call":
        return
    now = time.monotonic()
    if now - _state["checked"] > 1.0:
        _state["checked"] = now
        try:
            stamp = os.stat(_marker).st_mtime
        except OSError:
            stamp = None
        if stamp != _state["stamp"]:
            _state["stamp"] = stamp
            _seen.clear()
    f = frame.f_code.co_filename
    if f in _seen or not f.startswith(_prefixes):
        return
    _seen.add(f)
    with open(_out, "a") as fh:
        fh.write(f"{time.time():.3f}\t{os.getpid()}\t{f[len(_root) + 1:]}\n")
sys.setprofile(_profile)
threading.setprofile(_profile)
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose code the processes run")
    args = ap.parse_args()
    root = args.root.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="dream-path-"))
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(TRACER)
    out, marker = tmp / "trace.tsv", tmp / "marker"
    marker.write_text("")
    # Every process the fleet starts: the tracer first on the path, then the checkout measured.
    os.environ.update({"PYTHONPATH": os.pathsep.join([str(tmp / "site"), str(root)]),
                       "DREAM_PATH_OUT": str(out), "DREAM_PATH_MARKER": str(marker), "DREAM_PATH_ROOT": str(root)})
    model = tmp / "tiny"
    from worker.tiny import make_tiny_model
    make_tiny_model(model)
    redis_server = _common.start_redis()
    try:
        with one_bot(redis_server, model, tmp) as e:
            inter, _, _ = send(e, {"prompt": "warm up the bot and worker"})  # first calls (imports...) left out
            result_message(e, inter)
            time.sleep(2.0)
            t0 = time.time()
            marker.write_text("now")  # recording restarts within a second in every process
            time.sleep(1.5)
            inter, _, _ = send(e, {"prompt": "a lighthouse at dusk", "seed": 42})
            result_message(e, inter)
            t1 = time.time()
            pids = {"bot": e.bot.proc.pid, "worker": e.fleet.workers[0].pid}
    finally:
        redis_server.stop()
    by_proc: dict[str, set[str]] = {"bot": set(), "worker": set()}
    for line in out.read_text().splitlines():
        stamp, pid, path = line.split("\t")
        if t0 <= float(stamp) <= t1:
            for proc, p in pids.items():
                if int(pid) == p:
                    by_proc[proc].add(path)
    every = by_proc["bot"] | by_proc["worker"]
    print(f"checkout: {root}")
    for proc, files in by_proc.items():
        print(f"\n{proc}: {len(files)} files")
        for f in sorted(files):
            print(f"  {f}")
    print("\nper package (both processes):")
    for pkg in PACKAGES:
        print(f"  {pkg:10s} {sum(1 for f in every if f.startswith(pkg + '/'))}")
    print(f"\nfiles a /dream runs through, command to posted image: {len(every)} "
          f"(bot {len(by_proc['bot'])}, worker {len(by_proc['worker'])}, in both {len(by_proc['bot'] & by_proc['worker'])})")


if __name__ == "__main__":
    main()
