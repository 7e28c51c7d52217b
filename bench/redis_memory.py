"""Redis memory and Redis traffic per delivered 4-image 1024x1024 dream, end to end.

One real bot process on the local Discord stand-in, the product's worker in this process with a no-op
pipeline whose images carry real entropy (so they encode to a realistic size), a private Redis (AOF as
compose runs it), the folder image store, every TTL as shipped. N dreams go through one after another,
each until its picture is posted. Then:

  * Redis memory per job: `INFO memory` used_memory after minus before, over N (what a delivered job
    leaves behind until its TTLs run out), and `MEMORY USAGE` of every key left, grouped by key family;
  * bytes that crossed Redis per job (`INFO stats` total_net_input_bytes + total_net_output_bytes), next
    to the image bytes each job made: none of the image bytes should be among them.

    python bench/redis_memory.py            # 100 jobs
    python bench/redis_memory.py --quick    # 20 jobs
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import redis
from _common import GENEROUS_LIMITS, machine, start_redis
from overhead import NoopPipeline, settings_for
from PIL import Image

TARGET_KB = 20.0
WARM_UP = 3


class TexturedPipeline(NoopPipeline):
    """NoopPipeline whose images are 1/8-scale noise blown up: PNGs of roughly a real picture's size."""

    def generate_prepared(self, reqs, on_step=None):
        gens = super().generate_prepared(reqs, on_step)
        for g in gens:
            g.images = [Image.effect_noise((g.width // 8, g.height // 8), 60).convert("RGB")
                        .resize((g.width, g.height), Image.BICUBIC) for _ in g.images]
        return gens


def _family(key: bytes) -> str:
    parts = key.decode(errors="replace").split(":")
    return ":".join("<job>" if re.fullmatch(r"[0-9a-f]{16}", p) else "<id>" if p.isdigit() else p for p in parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 20 if args.quick else args.jobs
    print(f"machine: {machine()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="dreambot-memory-"))
    os.environ["DREAMBOT_IMAGE_DIR"] = str(tmp / "images")
    server = start_redis()
    settings = settings_for(server.url)
    conn = redis.Redis.from_url(server.url)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dreamcore import results
    from tests.support.fleet import Fleet
    from tests.support.standin import DiscordStandIn
    from worker.runner import make_worker

    standin = DiscordStandIn().start()
    fleet = Fleet(standin, server.url, tmp / "no-model", tmp)
    pipe = TexturedPipeline()
    out: dict = {}
    errors: list[Exception] = []
    try:
        fleet.setup(1)
        bot = fleet.bots[0]
        members = [standin.add_member(fleet.guild_id, f"m{i}") for i in range(20)]
        fleet.start_bot(bot, **GENEROUS_LIMITS, DREAMBOT_DEFAULT_STEPS="8")
        fleet.wait_bots_ready(timeout=120)

        def snap():
            mem, st = conn.info("memory"), conn.info("stats")
            return mem["used_memory"], st["total_net_input_bytes"] + st["total_net_output_bytes"], conn.dbsize()

        def one(i):
            inter = standin.send_slash(bot.app.id, fleet.guild_id, bot.channel_id, members[i % 20], "dream",
                                       {"prompt": f"a lighthouse {i}", "seed": i, "count": 4, "aspect": "1:1"})
            body = inter.wait_ack(5)
            m = re.search(r"job `([0-9a-f]{16})`", str(body.get("data", {}).get("content", "")))
            if not m:
                raise RuntimeError(f"not queued: {body}")
            standin.wait_for_message(lambda mm, _id=inter.id: mm.interaction_id == _id
                                     and any(a[0].startswith("dream-") for a in mm.attachments), timeout=60)
            return m.group(1)

        def driver():
            try:
                time.sleep(1.5)
                # Scripts loaded, streams and consumer group made, the pool's speed measured: not per job.
                out["warm"] = [one(n + i) for i in range(WARM_UP)]
                time.sleep(1.0)
                before = snap()
                jobs = []
                for i in range(n):
                    jobs.append(one(i))
                time.sleep(1.0)  # the relay records the last delivery and acks
                out["after"] = snap()
                out["before"] = before
                out["jobs"] = jobs
            except Exception as err:  # noqa: BLE001
                errors.append(err)

        w = make_worker(settings, conn, pipeline=pipe, checker=None, name=f"bench-memory-{os.getpid()}")
        th = threading.Thread(target=driver, daemon=True)
        th.start()
        w.work(max_jobs=n + WARM_UP, logging_level="WARNING")
        th.join(120)
        if errors:
            raise errors[0]
    finally:
        fleet.stop()
        standin.stop()

    jobs = out["jobs"]
    warm = out["warm"]  # the warm-up jobs' keys are not part of the measured window
    image_bytes = 0
    for j in jobs:
        meta = results.load_meta(conn, j)
        image_bytes += sum(i.size_bytes for i in meta.images) if meta else 0
    (m0, net0, k0), (m1, net1, k1) = out["before"], out["after"]
    per_family: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key in conn.scan_iter("*", count=1000):
        if any(j.encode() in key for j in warm):
            continue
        fam = _family(key)
        per_family[fam][0] += 1
        per_family[fam][1] += conn.memory_usage(key, samples=0) or 0
    mem_kb = (m1 - m0) / n / 1024
    print(f"\n{n} delivered dreams of 4 images at 1024x1024, TTLs as shipped (result {settings.result_ttl_s} s, "
          f"record {settings.params_ttl_s} s, delivery marker 7 days)")
    print(f"  Redis memory per job (used_memory delta / jobs): {mem_kb:8.1f} KB   target <= {TARGET_KB:.0f} KB  "
          f"{'OK' if mem_kb <= TARGET_KB else 'MISSED'}")
    print(f"  keys left per job: {(k1 - k0) / n:.1f}")
    print(f"  bytes through Redis per job (in + out): {(net1 - net0) / n / 1024:8.1f} KB")
    print(f"  image bytes made per job:               {image_bytes / n / 1024:8.1f} KB "
          f"({'none of them through Redis' if (net1 - net0) / n < image_bytes / n / 10 else 'SOME through Redis'})")
    print("  what is left, by key family (MEMORY USAGE):")
    for fam, (count, size) in sorted(per_family.items(), key=lambda x: -x[1][1]):
        print(f"    {fam:34s} {count:6d} keys  {size / 1024:9.1f} KB  ({size / n / 1024:6.2f} KB per job)")
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
