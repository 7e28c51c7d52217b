"""The full-size SDXL 1.0 base + refiner through the worker's real loading path and a real job, on a CPU.

No weights can be downloaded here, so the two pipelines are built from SDXL 1.0's published configs
(bench/sdxl_full.py writes them out) with random weights, created directly in bf16 (fp32 first would need
~23 GB), saved as diffusers pipeline folders and loaded back through `DreamPipeline.load` with the shipped
speed defaults (fuse_qkv and channels_last on), exactly as `dreambot worker` loads real weights. Each load
runs in a fresh process so its memory figures are its own:

  build    the two folders (skipped when --dir already has them)
  load     fuse_qkv off, then on (the shipped default): load time, resident memory (RSS, and its peak),
           the bytes of every parameter the pipelines hold (each tensor counted once: text_encoder_2 and the
           VAE are one object in both pipelines), the bytes in fuse's fused projections (the unfused ones
           are freed, so fused or not the pipelines hold the same bytes), and the config flags the published
           pipelines carry
  job      in the fuse-on process: a private redis-server, the real worker (`make_worker`, burst) and the
           real image store; one 256x256 dream (base 3 steps -> refiner 1), then a variation of it and a
           2x upscale of it (one 512x512 refiner tile), each through the queue like a member's click; every
           stage's time from the result's timings

256x256 is this bench's own size (the 1:1 entry of dreamcore.job.ASPECTS shrunk in its process): at
SDXL's 1024x1024 a CPU step takes minutes. Target: base + refiner + encoders + VAE resident <= 16 GiB in
bf16 with the shipped defaults.

    python bench/fullsize.py                 # builds in a temp dir (~11 GB on disk), deletes it after
    python bench/fullsize.py --dir /data/sdxl-random --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (paths, HF offline, a private image store)

TARGET_GIB = 16.0
GIB = 1024 ** 3


def _rss() -> tuple[float, float]:
    """(resident, peak resident) of this process in GiB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024 / GIB, int(fields["VmHWM"].split()[0]) * 1024 / GIB


def build(out: Path) -> dict:
    import torch
    from sdxl_full import PUBLISHED_PARAMS, build_components, sdxl_pipelines

    from worker.tiny import make_tiny_classifier

    t0 = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)  # weights are made in bf16: no fp32 copy ever exists
    try:
        p = build_components("cpu", torch.bfloat16)
    finally:
        torch.set_default_dtype(torch.float32)
    counts = {k: sum(x.numel() for x in p[k].parameters()) for k in PUBLISHED_PARAMS}
    base, refiner = sdxl_pipelines(p)
    t_built = time.perf_counter()
    base.save_pretrained(out / "base")
    refiner.save_pretrained(out / "refiner")
    make_tiny_classifier(out / "safety")  # the job's output check (its full-size cost: bench/safety.py)
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"build_s": t_built - t0, "save_s": time.perf_counter() - t_built, "disk_gb": disk / 1e9,
            "params": counts, "published": PUBLISHED_PARAMS}


def _param_bytes(pipe) -> dict:
    """Bytes of the parameters and buffers the two pipelines hold, each storage counted once."""
    seen: set[int] = set()
    by: dict[str, int] = {}
    fused = 0
    parts = {"base unet": pipe.base.unet, "refiner unet": pipe.refiner.unet, "vae": pipe.base.vae,
             "text_encoder": pipe.base.text_encoder, "text_encoder_2": pipe.base.text_encoder_2,
             "refiner vae": pipe.refiner.vae, "refiner text_encoder_2": pipe.refiner.text_encoder_2}
    for name, module in parts.items():
        total = 0
        for pname, t in [*module.named_parameters(), *module.named_buffers()]:
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            n = t.numel() * t.element_size()
            total += n
            if ".to_qkv." in pname or ".to_kv." in pname:
                fused += n
        by[name] = total
    return {"by_module": by, "total": sum(by.values()), "fused_copies": fused}


def load_and_run(folder: Path, fuse: bool, job: bool) -> dict:
    import torch

    from worker import speed
    from worker.pipeline import DreamPipeline
    from worker.runner import quiet_model_libraries

    quiet_model_libraries()
    rss0, _ = _rss()
    t0 = time.perf_counter()
    pipe = DreamPipeline.load(str(folder / "base"), str(folder / "refiner"), "cpu",
                              levers=speed.Levers(fuse_qkv=fuse, channels_last=True), dtype=torch.bfloat16)
    load_s = time.perf_counter() - t0
    rss, peak = _rss()
    out = {"fuse_qkv": fuse, "load_s": load_s, "rss_gib": rss, "peak_rss_gib": peak, "rss_before_gib": rss0,
           "bytes": _param_bytes(pipe), "dtype": str(pipe.base.unet.dtype),
           "shared_text_encoder_2": pipe.refiner.text_encoder_2 is pipe.base.text_encoder_2,
           "shared_vae": pipe.refiner.vae is pipe.base.vae,
           "force_zeros_for_empty_prompt": bool(pipe.base.config.force_zeros_for_empty_prompt),
           "requires_aesthetics_score": bool(pipe.refiner.config.requires_aesthetics_score),
           "refiner_force_zeros": bool(pipe.refiner.config.force_zeros_for_empty_prompt),
           "vae_slicing": bool(getattr(pipe.base.vae, "use_slicing", False))}
    if job:
        out["jobs"] = run_jobs(folder, pipe)
        out["rss_after_jobs_gib"], out["peak_rss_gib"] = _rss()
    return out


def run_jobs(folder: Path, pipe) -> list[dict]:
    import redis

    from dreamcore import job as jobmod
    from dreamcore import results
    from dreamcore.job import JobSource, make_job, make_origin, make_request
    from dreamcore.localredis import LocalRedis
    from dreamcore.queue.rq_queues import DreamQueue
    from dreamcore.settings import load_settings
    from worker.runner import make_worker

    jobmod.ASPECTS["1:1"] = (256, 256)  # this bench's size; see the docstring
    server = LocalRedis().start()
    conn = redis.Redis.from_url(server.url)
    settings = load_settings(redis_url=server.url, device="cpu", batch_images=1, job_timeout_s=3600,
                             job_retries=0, log_level="WARNING", metrics_port=0,
                             safety_model=str(folder / "safety"), default_steps=4)
    origin = make_origin(instance="bench", guild_id=1, channel_id=2, user_id=3)
    q = DreamQueue(conn, settings)
    done: list[dict] = []
    try:
        def run(job, what: str) -> dict:
            t0 = time.perf_counter()
            q.enqueue(job)
            make_worker(settings, conn, pipe, name=f"bench-fullsize-{what}").work(burst=True, logging_level="WARNING")
            meta = results.load_meta(conn, job.job_id)
            row = {"what": what, "wall_s": time.perf_counter() - t0, "status": meta.status if meta else None,
                   "error": meta.error if meta else "no result",
                   "size": [(i.width, i.height) for i in meta.images] if meta else [],
                   "timings": dict(meta.timings) if meta else {},
                   "steps": (meta.base_steps, meta.refiner_steps) if meta else None}
            done.append(row)
            return row

        request = make_request(prompt="a lighthouse at dusk, oil painting", aspect="1:1", steps=4, seed=1, count=1)
        dream = make_job(request, origin)
        run(dream, "dream (base 3 steps -> refiner 1)")
        for kind, strength in (("variation", settings.variation_strength), ("upscale", settings.upscale_strength)):
            follow = make_job(request.model_copy(update={"seed": 2}), origin, kind=kind,
                              source=JobSource(job_id=dream.job_id, index=0, strength=strength))
            run(follow, f"{kind} (strength {strength:g})")
    finally:
        server.close()
    return done


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(built: dict | None, loads: list[dict]) -> bool:
    print(_common.machine())
    if built:
        print(f"build: {built['build_s']:.0f} s in bf16, save {built['save_s']:.0f} s, {built['disk_gb']:.1f} GB on disk")
        for k, n in built["params"].items():
            ok = "published count" if n == built["published"][k] else f"published {built['published'][k]:,}"
            print(f"  {k:<15} {n:>14,} parameters ({ok})")
    ok = True
    for r in loads:
        b = r["bytes"]
        print(f"load, fuse_qkv {'on ' if r['fuse_qkv'] else 'off'} (channels_last on, {r['dtype']}): "
              f"{r['load_s']:.0f} s; parameters and buffers {b['total'] / GIB:.2f} GiB, of which "
              f"{b['fused_copies'] / GIB:.2f} GiB in fused projections; process resident {r['rss_gib']:.2f} GiB "
              f"(peak {r['peak_rss_gib']:.2f}; safetensors maps the files, pages count once first touched)")
        print("  by module (GiB): " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in b["by_module"].items()))
        print(f"  text_encoder_2 shared: {r['shared_text_encoder_2']}, VAE shared: {r['shared_vae']} "
              f"(their bytes counted once); base force_zeros_for_empty_prompt {r['force_zeros_for_empty_prompt']}, "
              f"refiner requires_aesthetics_score {r['requires_aesthetics_score']} and force_zeros "
              f"{r['refiner_force_zeros']}; VAE sliced decode {r['vae_slicing']}")
        if r["fuse_qkv"]:
            ok = ok and b["total"] / GIB <= TARGET_GIB and r["shared_text_encoder_2"] and r["shared_vae"]
        for j in r.get("jobs", []):
            t = j["timings"]
            stages = " · ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in t.items()
                                if k.endswith("_s") and k != "total_s")
            print(f"  job {j['what']}: {j['status']} {j['size']} in {t.get('total_s', 0):.0f} s ({stages}); "
                  f"{j['wall_s']:.0f} s through the queue" + (f"; error: {j['error']}" if j["status"] != "done" else ""))
            ok = ok and j["status"] == "done"
        if "rss_after_jobs_gib" in r:
            print(f"  process resident after the jobs (every weight touched, CPU activations, the allocator's "
                  f"cache) {r['rss_after_jobs_gib']:.2f} GiB, peak {r['peak_rss_gib']:.2f} GiB")
    shipped = next(r for r in loads if r["fuse_qkv"])
    print(f"VERDICT: {'PASS' if ok else 'FAIL'}: shipped defaults hold {shipped['bytes']['total'] / GIB:.2f} GiB of "
          f"weights (target <= {TARGET_GIB:g} GiB in bf16; {shipped['bytes']['fused_copies'] / GIB:.2f} GiB of it "
          f"in fuse_qkv's fused projections, the unfused ones freed), text_encoder_2 and VAE shared; three jobs "
          f"{'done' if all(j['status'] == 'done' for j in shipped.get('jobs', [])) else 'NOT done'}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, help="where the full-size folders are (built there if missing)")
    p.add_argument("--keep", action="store_true", help="keep the folders the run built")
    p.add_argument("--phase", choices=["build", "load"], help=argparse.SUPPRESS)
    p.add_argument("--fuse", choices=["on", "off"], help=argparse.SUPPRESS)
    p.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase == "build":
        print(json.dumps(build(args.dir)))
        return 0
    if args.phase == "load":
        print(json.dumps(load_and_run(args.dir, args.fuse == "on", args.job)))
        return 0
    folder = args.dir or Path(tempfile.mkdtemp(prefix="dreambot-fullsize-"))
    made = not (folder / "base" / "model_index.json").exists()
    try:
        built = None
        if made:
            folder.mkdir(parents=True, exist_ok=True)
            built = _child(["--phase", "build", "--dir", str(folder)])
        loads = [_child(["--phase", "load", "--dir", str(folder), "--fuse", "off"]),
                 _child(["--phase", "load", "--dir", str(folder), "--fuse", "on", "--job"])]
        return 0 if report(built, loads) else 1
    finally:
        if made and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
