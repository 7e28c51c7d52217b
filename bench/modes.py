"""Turbo against quality through the real worker, side by side in one run: images a minute, what each is
charged, and what switching the adapter between batches costs.

The tiny SDXL-architecture model (worker/tiny.py) with its tiny turbo LoRA, loaded by the worker's own
`load_pipeline` (the adapter included) on this CPU, at the standard 1024x1024. Jobs go in through the bot's
`Backend.submit` (limits, cost, fair queue) and one `make_worker` worker runs them in a burst, batching as it
does in production (DREAMBOT_BATCH_IMAGES). Rows, each the median of `--rounds` interleaved rounds:

  quality   N dreams of 40 steps, base + refiner (split 0.8), guidance 7
  turbo     N dreams in turbo (4 fixed steps, base + Lightning LoRA, no guidance)
  mixed     N/2 of each, queued alternately: the worker switches the adapter between batches

The tiny model's stages weigh differently from SDXL's (its VAE and encoders are a larger share), so the
ratio here is this machine's and this model's. At full size, FlopCounterMode on meta tensors (bench/sdxl_full.py,
no compute) counts a quality dream against a turbo image, the turbo LoRA unfused (peft's layers, rank 64 on
Lightning's layers: about its 394 MB file) and fused, beside what each is charged; the GPU script's turbo row
(bench/gpu_sdxl.py) times it on a lent GPU.

    python bench/modes.py [--jobs 8] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (paths, HF_HUB_OFFLINE, the image folder)
import redis
from _common import GENEROUS_LIMITS, machine, start_redis


def settings_for(url: str, model: Path, batch: int):
    os.environ.update(GENEROUS_LIMITS)
    os.environ.update({
        "REDIS_URL": url, "DREAMBOT_LOG_FORMAT": "json", "DREAMBOT_LOG_LEVEL": "WARNING",
        "DREAMBOT_BASE_MODEL": str(model / "base"), "DREAMBOT_REFINER_MODEL": str(model / "refiner"),
        "DREAMBOT_TURBO_ADAPTER": str(model / "turbo"), "DREAMBOT_DEVICE": "cpu",
        "DREAMBOT_BATCH_IMAGES": str(batch), "DREAMBOT_LIMIT_FACES": "off",
    })
    from dreamcore.settings import get_settings, load_settings

    get_settings.cache_clear()
    return load_settings()


def run_burst(conn, settings, pipe, modes: list[str], tag: str) -> dict:
    """Queue one dream per entry of `modes` (the bot's submit), then one worker runs them all."""
    from bot.backend import Backend
    from dreamcore import keys
    from dreamcore.job import make_job, make_origin, make_request
    from worker.runner import make_worker

    backend = Backend(settings)
    jobs, charged = [], {}
    for i, mode in enumerate(modes):
        req = make_request(prompt=f"a lighthouse at dusk {tag} {i}", seed=i, mode=mode, steps=40, guidance=7.0,
                           split=0.8, faces="off", max_upload_bytes=settings.max_upload_bytes)
        job = make_job(req, make_origin(instance="bench", guild_id=4242, channel_id=77, user_id=1000 + i))
        out = backend.submit(job)
        if not out.ok:
            raise RuntimeError(f"submit refused: {out.message}")
        jobs.append(job)
        charged[mode] = backend.queue.units(job)
    t0 = time.perf_counter()
    make_worker(settings, conn, pipeline=pipe, checker=None, name=f"bench-modes-{tag}-{os.getpid()}").work(
        burst=True, logging_level="WARNING")
    seconds = time.perf_counter() - t0
    batches, steps = [], {}
    for job in jobs:
        meta = json.loads(conn.hget(keys.result_key(job.job_id), "meta"))
        if meta["status"] != "done":
            raise RuntimeError(f"{job.job_id}: {meta.get('error')}")
        batches.append(int(meta["timings"].get("batch_images", 1)))
        steps[job.request.mode] = (meta["base_steps"], meta["refiner_steps"])
    return {"seconds": seconds, "images": len(jobs), "per_min": 60 * len(jobs) / seconds, "charged": charged,
            "batches": sorted(set(batches)), "steps": steps}


def full_size_flops() -> dict[str, float]:
    """Per-image TFLOP at 1024x1024: a quality dream (40 steps, 32 base + 8 refiner, guidance), a turbo image
    (4 base steps without guidance, the LoRA's layers fused away or unfused), and the LoRA's parameters."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from sdxl_full import build_components
    from torch.utils.flop_counter import FlopCounterMode

    from worker.tiny import TURBO_TARGETS

    m = {"device": "meta", "dtype": torch.bfloat16}
    p = build_components("meta", torch.bfloat16)

    def step(name: str, width: int, ids: int, n: int) -> float:  # n = 2: a guided step's two passes
        x, t = torch.zeros(n, 4, 128, 128, **m), torch.full((n,), 500, device="meta")
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            p[name](x, t, encoder_hidden_states=torch.zeros(n, 77, width, **m),
                    added_cond_kwargs={"text_embeds": torch.zeros(n, 1280, **m), "time_ids": torch.zeros(n, ids, **m)})
        return fc.get_total_flops() / 1e12

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        p["vae"].decode(torch.zeros(1, 4, 128, 128, **m))
    decode = fc.get_total_flops() / 1e12
    base2, refiner2, base1 = step("base unet", 2048, 6, 2), step("refiner unet", 1280, 5, 2), step("base unet", 2048, 6, 1)
    inject_adapter_in_model(LoraConfig(r=64, lora_alpha=64, target_modules=list(TURBO_TARGETS)), p["base unet"],
                            adapter_name="turbo")
    lora1 = step("base unet", 2048, 6, 1)
    params = sum(v.numel() for k, v in p["base unet"].named_parameters() if "lora_" in k)
    return {"dream": 32 * base2 + 8 * refiner2 + decode, "turbo fused": 4 * base1 + decode,
            "turbo unfused": 4 * lora1 + decode, "lora step": lora1 / base1, "lora params": params, "decode": decode}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=8, help="dreams per row")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    ap.add_argument("--batch", type=int, default=4, help="DREAMBOT_BATCH_IMAGES")
    ap.add_argument("--quick", action="store_true", help="4 dreams a row, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.rounds = 4, 1
    from worker.tiny import make_tiny_model

    print(f"machine: {machine()}")
    model = make_tiny_model(Path(tempfile.mkdtemp(prefix="dreambot-bench-modes-")))
    server = start_redis()
    conn = redis.Redis.from_url(server.url)
    rows: dict[str, list[dict]] = {"quality": [], "turbo": [], "mixed": []}
    try:
        settings = settings_for(server.url, model, args.batch)
        from worker.runner import load_pipeline

        pipe = load_pipeline(settings)
        run_burst(conn, settings, pipe, ["quality", "turbo"] * 2, "warm-up")  # both modes' shapes, untimed
        half = ["quality", "turbo"] * (args.jobs // 2)
        for r in range(args.rounds):
            rows["quality"].append(run_burst(conn, settings, pipe, ["quality"] * args.jobs, f"q{r}"))
            rows["turbo"].append(run_burst(conn, settings, pipe, ["turbo"] * args.jobs, f"t{r}"))
            rows["mixed"].append(run_burst(conn, settings, pipe, half, f"m{r}"))
    finally:
        conn.close()
        server.close()

    def med(name: str) -> float:
        return statistics.median(r["per_min"] for r in rows[name])

    q, t, m = med("quality"), med("turbo"), med("mixed")
    last = {name: rs[-1] for name, rs in rows.items()}
    print(f"tiny model, 1024x1024, CPU, {args.jobs} dreams a row, batches of up to {args.batch}, "
          f"median of {args.rounds} round(s)")
    print(f"{'row':<10} {'images/min':>10} {'batch sizes':>12}  base+refiner steps  charged per image")
    for name, value in (("quality", q), ("turbo", t)):
        r = last[name]
        print(f"{name:<10} {value:>10.2f} {str(r['batches']):>12}  {r['steps'][name]!s:<19} {r['charged'][name]:.2f} units")
    mixed_fair = 2 / (1 / q + 1 / t)  # the same jobs run as two unmixed bursts
    print(f"{'mixed':<10} {m:>10.2f} {str(last['mixed']['batches']):>12}  adapter switched between batches")
    print(f"turbo / quality images/min: {t / q:.2f}x (charged {last['quality']['charged']['quality'] / last['turbo']['charged']['turbo']:.1f}x less)")
    print(f"mixed / the same jobs unmixed: {m / mixed_fair:.2f}x (the price of switching per batch)")

    from dreamcore import cost

    f = full_size_flops()
    quality_units, turbo_units = cost.dream_units(1024, 1024, 40, 1, 7.0), cost.turbo_image()
    print(f"full size, FlopCounterMode on meta tensors: a quality dream {f['dream']:.1f} TFLOP (32 base + 8 refiner "
          f"steps guided, VAE decode {f['decode']:.1f}); a turbo image {f['turbo unfused']:.1f} TFLOP with the LoRA "
          f"unfused (rank 64, {f['lora params'] / 1e6:.0f} M parameters: each base step {f['lora step']:.3f}x), "
          f"{f['turbo fused']:.1f} fused")
    print(f"turbo / quality FLOPs: {f['turbo unfused'] / f['dream']:.3f} unfused, {f['turbo fused'] / f['dream']:.3f} "
          f"fused; charged {turbo_units / quality_units:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
