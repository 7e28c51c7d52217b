"""The GPU run: the real worker against vanilla diffusers, SDXL 1.0 base + refiner at full size, one call.

Everything a GPU lease must show, in the order that keeps the most important figures if time runs out; each
row is printed and appended to OUT/rows.jsonl the moment it ends, and a table comes last:

  1. versions, and the attention kernel SDPA picks for SDXL's shapes
  2. smoke: the tiny model through the real worker on the device (from_pretrained, a private Redis, the queue,
     make_worker, the classifier): seconds; the run stops at once if it fails
  3. ceilings: a large matrix product and a device-to-device copy, measured (what MFU is taken against)
  4. vanilla diffusers, 1 image: the denominator (the documented ensemble-of-experts recipe, stock pipelines)
  5. the worker on a queue of 8 one-image jobs: a private Redis, DreamQueue.enqueue, make_worker in burst
     mode, the full-size-shaped classifier; timed from the first job's start to the last result published
  6. the worker with one job alone, its peak GPU memory; then the queue of 8 in turbo (dreamcore.modes: 4 steps
     on the base with the turbo LoRA, here a random one of rank 64 in Lightning's layers) on the same worker,
     which holds the adapter from its load as a production worker does (its quality rows run with it off)
  7. vanilla diffusers, one batch of 8 prompts: batching on both sides
  8. compile, on the worker of rows 5-6 in place (cold: its warm-up timed), then the queue of 8 compiled
  9. a restarted worker (a new process, empty inductor and Triton caches, the compiled code saved in step 8):
     from its start to its first dream published
 10. each lossy lever on a fresh worker, the queue of 8: its speed beside the lossless worker's and the
     deviation of its images from that worker's (same seeds), fp8 also its UNets' output error
 11. the table and the VERDICT: the best lossless worker row against vanilla at batch 1 and at batch 8,
     MFU against the measured matrix ceiling, peak memory at batch 1, the restart

Setting: 1024x1024, 40 steps (32 base + 8 refiner), CFG 7, bf16. The full-size modules are built with random
weights directly in GPU memory (bench/sdxl_full.py): same shapes and kernels as the real ones, pictures of
noise, no 13 GB round trip through disk. Before each row the clock is checked against --budget-s; a row that
would not fit is skipped and said so.

    python3 bench/gpu_sdxl.py --out DIR                 # on the GPU (bench/device_check.sh runs it)
    python3 bench/gpu_sdxl.py --rehearse --out DIR      # here: the same rows on the CPU with the tiny model at
                                                        # 256x256, compile traced with aot_eager
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, Path(__file__).resolve().parent):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPT = "a lighthouse at dusk, oil painting, dramatic sky"  # one 75-token chunk for either tokenizer
QUEUE = 8  # the queue depth the speed targets are set at
TARGET_VS_B1 = 2.0  # the lossless worker's images/min over vanilla diffusers' at batch 1
TARGET_VS_B8 = 1.5  # ... over vanilla diffusers' at batch 8
TARGET_MEMORY_GIB = 16.0  # peak GPU memory of the worker at batch 1
TARGET_RESTART_S = 60.0  # a restarted worker's first dream, the compiled code on disk
# The lossy levers measured, each alone on the lossless worker (worker/speed.py).
LOSSY = (("step cache every 3 steps", {"step_cache": 3}),
         ("fp8 dynamic", {"fp8": "dynamic"}),
         ("refiner's last 4 steps unguided", {"refiner_unguided_steps": 4}))


@dataclass
class Setup:
    dev: torch.device
    dtype: torch.dtype
    side: int
    steps: int
    rehearse: bool
    out: Path
    split: float = 0.8
    guidance: float = 7.0


# --- output: each row at once, the table last ---------------------------------------------------------------


@dataclass
class Row:
    section: str
    name: str
    images: int = 0
    seconds: float = 0.0
    peak_gib: float | None = None
    status: str = "ok"  # ok | failed | skipped
    extra: dict = field(default_factory=dict)  # ceilings, deviations, phase times
    note: str = ""

    @property
    def per_min(self) -> float:
        return 60 * self.images / self.seconds if self.images and self.seconds else 0.0

    @property
    def s_per_image(self) -> float:
        return self.seconds / self.images if self.images else 0.0


class Report:
    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.rows: list[Row] = []
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = (out / "rows.jsonl").open("a", encoding="utf-8")

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f} s] {msg}", flush=True)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        self.jsonl.write(json.dumps({**dataclasses.asdict(row), "at_s": round(time.monotonic() - self.t0, 1)}) + "\n")
        self.jsonl.flush()
        if row.status != "ok":
            self.say(f"{row.name}: {row.status.upper()} {row.note}")
        elif row.images:
            peak = f", peak {row.peak_gib:.2f} GiB" if row.peak_gib is not None else ""
            self.say(f"{row.name}: {row.s_per_image:.3f} s/image, {row.per_min:.2f} images/min{peak}"
                     f"{'; ' + row.note if row.note else ''}")
        else:
            self.say(f"{row.name}: {row.note}")
        return row

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def fits(self, section: str, name: str, need_s: float) -> bool:
        """The clock check before a row: skipped (and said so) when it would not end inside the budget."""
        if need_s <= self.left():
            return True
        self.add(Row(section, name, status="skipped", note=f"needs ~{need_s:.0f} s, {self.left():.0f} s left"))
        return False

    def find(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name and r.status == "ok"), None)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _peak_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def _peak(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None


def _ts(dt: datetime) -> float:
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


# --- 1. versions and the attention kernel ----------------------------------------------------------------


def versions(setup: Setup) -> str:
    import diffusers
    import transformers

    try:
        import torchao

        ao = torchao.__version__
    except ImportError:
        ao = "absent"
    dev = setup.dev
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    cap = ".".join(map(str, torch.cuda.get_device_capability(dev))) if dev.type == "cuda" else "-"
    import pydantic
    import redis

    # Where the carried packages were imported from: the install folder on PYTHONPATH, not an older copy.
    carried = sorted({str(Path(m.__file__).parent.parent) for m in (diffusers, pydantic, redis)})
    return (f"device {name} (compute capability {cap}); python {sys.version.split()[0]}; torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}); diffusers {diffusers.__version__}; transformers "
            f"{transformers.__version__}; torchao {ao}; diffusers, pydantic and redis from {', '.join(carried)}; "
            f"redis-server {shutil.which('redis-server')}")


def sdpa_kernel(setup: Setup) -> str:
    """The aten attention op SDPA dispatches to for the base UNet's 64x64 level (4096 tokens, 10 heads of 64)."""
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    tokens = 4096 if not setup.rehearse else 256
    q = torch.randn(2, 10, tokens, 64, device=setup.dev, dtype=setup.dtype)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, q, q)
        _sync(setup.dev)
    ops = sorted({e.key for e in prof.key_averages() if "scaled_dot_product" in e.key and e.key != "aten::scaled_dot_product_attention"})
    return ", ".join(ops) or "none recorded"


# --- 3. ceilings ------------------------------------------------------------------------------------------


def _median_ms(fn, warm: int, reps: int, dev: torch.device) -> float:
    for _ in range(warm):
        fn()
    _sync(dev)
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def ceilings(setup: Setup) -> tuple[float, float]:
    """(matrix TFLOP/s, copy TB/s counting bytes read and written), on random data (never zeros)."""
    n = 8192 if not setup.rehearse else 1024
    elems = (2**30 if not setup.rehearse else 2**24) // 2

    def matrix() -> float:
        a = torch.randn(n, n, device=setup.dev, dtype=setup.dtype)
        b = torch.randn(n, n, device=setup.dev, dtype=setup.dtype)
        return 2 * n**3 / (_median_ms(lambda: a @ b, 3, 10, setup.dev) / 1000) / 1e12

    def copy() -> float:
        src = torch.randn(elems, device=setup.dev, dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        return 2 * src.numel() * src.element_size() / (_median_ms(lambda: dst.copy_(src), 3, 10, setup.dev) / 1000) / 1e12

    tflops, tbs = matrix(), copy()
    _free()
    return tflops, tbs


# --- the models -----------------------------------------------------------------------------------------------


def stock_pipelines(setup: Setup):
    """Two stock diffusers pipelines (base, refiner) over fresh modules on the device: the full-size ones with
    random weights (seeded: every build is the same weights), or the tiny model in the rehearsal."""
    if setup.rehearse:
        from worker.tiny import tiny_pipelines

        base, refiner = tiny_pipelines()
        base.to(setup.dev, setup.dtype)
        refiner.to(setup.dev, setup.dtype)
        return base, refiner
    from sdxl_full import build_components, sdxl_pipelines

    return sdxl_pipelines(build_components(str(setup.dev), setup.dtype))


def checker_for(setup: Setup):
    from worker.classifier import SafetyChecker

    if setup.rehearse:
        from worker.tiny import tiny_classifier

        model, processor = tiny_classifier()
        return SafetyChecker(model.to(setup.dev), processor, setup.dev, [1], "tiny classifier")
    from sdxl_full import full_classifier

    return full_classifier(setup.dev)


SOURCES = ("random full-size SDXL 1.0 base", "random full-size SDXL 1.0 refiner")


def worker_pipeline(setup: Setup, turbo: bool = False, **levers):
    from worker import speed
    from worker.pipeline import DreamPipeline

    base, refiner = stock_pipelines(setup)
    lv = speed.Levers(fuse_qkv=True, channels_last=True, **levers)
    return DreamPipeline.from_parts(base, refiner, setup.dev, levers=lv, offload="none", batch_images=QUEUE,
                                   sources=SOURCES, turbo_adapter=turbo_file(setup, base.unet) if turbo else "off")


TURBO_RANK_FULL = 64


def turbo_file(setup: Setup, unet) -> str:
    """A random LoRA on the base UNet's layers that Lightning's adapts, saved as DREAMBOT_TURBO_ADAPTER reads
    one: the full-size one at rank 64 in fp16 (what an unfused Lightning LoRA costs a step, about), the tiny
    model's own in the rehearsal. Small B: random weights under a large LoRA overflow bf16."""
    from diffusers import StableDiffusionXLPipeline

    from worker.tiny import TURBO_RANK, random_lora

    rank = TURBO_RANK if setup.rehearse else TURBO_RANK_FULL
    state = random_lora(unet, rank, seed=7, gain=0.2, dtype=torch.float32 if setup.rehearse else torch.float16)
    # One folder for this process and the restarted one (row 9): the compiled code's file is named after it.
    folder = Path(tempfile.gettempdir()) / f"dreambot-turbo-{'tiny' if setup.rehearse else 'full'}-r{rank}"
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=state)
    return str(folder)


def compile_levers(pipe, cache_dir: Path):
    """The levers of `pipe` with compile on, for the bucket the queue of 8 runs at: what step 8 compiles and
    what the restarted worker of step 9 must name identically to find its code."""
    return dataclasses.replace(pipe.levers, compile=True, compile_buckets=(QUEUE,), compile_cache=str(cache_dir))


# --- the worker through the queue ------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    wall: float
    images: int
    peak: float | None
    batches: list[int]
    by_seed: dict[int, np.ndarray]
    first_done: float  # epoch seconds of the first result published


class QueueBench:
    """A private Redis (the PATH's redis-server: carried on the device), the dream queue and a folder image store."""

    def __init__(self, setup: Setup):
        import redis
        from _common import start_redis

        from dreamcore.settings import load_settings

        self.setup = setup
        self.server = start_redis()
        self.conn = redis.Redis.from_url(self.server.url)
        self.image_dir = Path(tempfile.mkdtemp(prefix="dreambot-gpu-images-"))
        self.settings = load_settings(redis_url=self.server.url, image_dir=str(self.image_dir), metrics_port=0,
                                      log_level="WARNING", job_timeout_s=3600, job_retries=0, batch_images=QUEUE,
                                      max_wait_min=1440)
        self.serial = 0

    def enqueue(self, counts: list[int], steps: int | None = None, mode: str = "quality") -> list[tuple[str, int]]:
        """One job per entry (that many images); job i of any row has prompt i and seed 1000 + 10 i, so rows
        with the same counts make the same images and can be compared seed by seed."""
        from dreamcore.job import make_job, make_origin, make_request
        from dreamcore.queue.rq_queues import DreamQueue

        q = DreamQueue(self.conn, self.settings)
        out = []
        for i, n in enumerate(counts):
            self.serial += 1
            req = make_request(prompt=f"{PROMPT}, study {i}", seed=1000 + 10 * i, steps=steps or self.setup.steps,
                               guidance=self.setup.guidance, split=self.setup.split, count=n, aspect="1:1",
                               faces="off",  # base + refiner as measured before the face pass (bench/faces.py)
                               mode=mode,  # turbo: its own steps, guidance and split whatever is given
                               max_upload_bytes=self.settings.max_upload_bytes)
            origin = make_origin(instance="bench", guild_id=4242, channel_id=77, user_id=10_000 + self.serial)
            job = make_job(req, origin)
            q.enqueue(job)
            out.append((job.job_id, req.seed))
        return out

    def run(self, pipe, checker, counts: list[int], steps: int | None = None, mode: str = "quality") -> Run:
        from worker.runner import make_worker

        jobs = self.enqueue(counts, steps, mode)
        dev = self.setup.dev
        _free()
        _peak_reset(dev)
        worker = make_worker(self.settings, self.conn, pipe, name=f"bench-{os.getpid()}-{self.serial}",
                             checker=checker)
        t = time.perf_counter()
        worker.work(burst=True, logging_level="WARNING")
        wall = time.perf_counter() - t
        _sync(dev)
        return self.collect(jobs, wall, _peak(dev))

    def collect(self, jobs: list[tuple[str, int]], wall: float, peak: float | None) -> Run:
        from PIL import Image
        from rq.job import Job
        from rq.serializers import JSONSerializer

        from dreamcore import results
        from dreamcore.images import open_store

        store = open_store(self.settings)
        starts, ends, batches, by_seed, errors = [], [], [], {}, []
        for job_id, seed in jobs:
            rq_job = Job.fetch(job_id, connection=self.conn, serializer=JSONSerializer)
            if rq_job.started_at is not None:
                starts.append(_ts(rq_job.started_at))
            got = results.load(self.conn, store, job_id)
            if got is None or got[0].status != "done":
                errors.append(got[0].error if got else f"no result for {job_id} (RQ: {rq_job.get_status()})")
                continue
            res, images = got
            ends.append(res.finished_at)
            batches.append(int(res.timings.get("batch_images", len(images))))
            for k, data in enumerate(images):
                by_seed[seed + k] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
        if errors:
            raise RuntimeError(f"{len(errors)} of {len(jobs)} jobs failed: {errors[0]}")
        return Run(max(ends) - min(starts), wall, len(by_seed), peak, sorted(set(batches)), by_seed, min(ends))

    def close(self) -> None:
        self.conn.close()
        self.server.close()


def deviation(got: dict[int, np.ndarray], want: dict[int, np.ndarray]) -> float:
    """The largest ‖got − want‖ / ‖want‖ over the images both rows made with the same seed."""
    return max(float(np.linalg.norm(got[s] - want[s]) / np.linalg.norm(want[s])) for s in got.keys() & want.keys())


# --- vanilla diffusers ---------------------------------------------------------------------------------------


def vanilla(setup: Setup, count: int, reps: int) -> tuple[float, float | None, float]:
    """diffusers' documented ensemble of experts with stock pipelines: (median seconds for `count` images,
    peak GPU memory, build seconds). A batch is a list of prompts, one seeded generator each."""
    t = time.perf_counter()
    pipes = dict(zip(("base", "refiner"), stock_pipelines(setup), strict=True))
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    built = time.perf_counter() - t

    def make(n: int, steps: int) -> None:
        prompts = [f"{PROMPT}, study {i}" for i in range(n)]
        gens = [torch.Generator("cpu").manual_seed(1000 + 10 * i) for i in range(n)]
        latents = pipes["base"](prompt=prompts, width=setup.side, height=setup.side, num_inference_steps=steps,
                                denoising_end=setup.split, guidance_scale=setup.guidance, generator=gens,
                                output_type="latent").images
        pipes["refiner"](prompt=prompts, num_inference_steps=steps, denoising_start=setup.split,
                         guidance_scale=setup.guidance, generator=gens, image=latents)

    with torch.inference_mode():
        make(count, 5)  # warm-up: both stages, this batch's shapes
        times = []
        _peak_reset(setup.dev)
        for _ in range(reps):
            _sync(setup.dev)
            t = time.perf_counter()
            make(count, setup.steps)
            _sync(setup.dev)
            times.append(time.perf_counter() - t)
    peak = _peak(setup.dev)
    pipes.clear()
    _free()
    return statistics.median(times), peak, built


# --- 9. the restarted worker, a process of its own -----------------------------------------------------------


def restart_child(args) -> int:
    """The restarted worker: builds its models, loads the compiled code from the cache folder, warms up, and
    serves what waits on the parent's Redis (burst); prints its phase times as JSON."""
    t0 = time.monotonic()
    setup = _setup(args)
    import redis

    from dreamcore.settings import load_settings
    from worker import speed
    from worker.runner import make_worker

    if setup.rehearse:
        speed.Compiled.BACKEND = "aot_eager"
    phases = {"imports_s": time.monotonic() - t0}
    pipe = worker_pipeline(setup, turbo=True)  # as the worker that saved the code: the adapter's layers are in it
    checker = checker_for(setup)
    phases["models_s"] = time.monotonic() - t0
    speed.after_placing(pipe, compile_levers(pipe, Path(args.cache_dir)), QUEUE)
    pipe.levers = compile_levers(pipe, Path(args.cache_dir))
    phases["warm_up_s"] = time.monotonic() - t0
    settings = load_settings(redis_url=args.redis_url, image_dir=args.image_dir, metrics_port=0, log_level="WARNING",
                             job_timeout_s=3600, job_retries=0, batch_images=QUEUE)
    conn = redis.Redis.from_url(args.redis_url)
    make_worker(settings, conn, pipe, name=f"restarted-{os.getpid()}", checker=checker).work(
        burst=True, logging_level="WARNING")
    phases["served_s"] = time.monotonic() - t0
    print(json.dumps({"phases": phases, "cache": pipe.speed.compile_cache, "compile_s": pipe.speed.compile_s,
                      "graphs": pipe.speed.graphs, "compile_error": pipe.speed.compile_error}), flush=True)
    return 0


def restart(setup: Setup, qb: QueueBench, cache_dir: Path, report: Report) -> Row:
    jobs = qb.enqueue([1] * QUEUE)
    fresh = Path(tempfile.mkdtemp(prefix="dreambot-restart-"))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(fresh / "inductor"), "TRITON_CACHE_DIR": str(fresh / "triton"),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--restart-child", "--redis-url", qb.server.url,
           "--image-dir", str(qb.image_dir), "--cache-dir", str(cache_dir), "--steps", str(setup.steps)]
    if setup.rehearse:
        cmd.append("--rehearse")
    t_spawn = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(30, report.left()))
    if done.returncode != 0:
        raise RuntimeError(f"the restarted worker exited {done.returncode}: {done.stderr.strip()[-800:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    run = qb.collect(jobs, 0.0, None)
    first = run.first_done - t_spawn
    ph = child["phases"]
    note = (f"first dream published {first:.1f} s after the process started (target < {TARGET_RESTART_S:g} s); "
            f"imports {ph['imports_s']:.1f} s, models built {ph['models_s']:.1f} s, compiled code ready "
            f"{ph['warm_up_s']:.1f} s ({child['graphs']} graphs compiled afresh; cache: {child['cache']})")
    if child["compile_error"]:
        note += f"; COMPILE FAILED: {child['compile_error']}"
    return Row("lever", "restart with the compiled code on disk", 0, 0.0, None, extra={"first_dream_s": first, **ph},
               note=note)


# --- main ------------------------------------------------------------------------------------------------------


def _setup(args) -> Setup:
    rehearse = args.rehearse
    side = 256 if rehearse else 1024
    if rehearse:  # the tiny model on a CPU: 1024x1024 decodes and PNGs take seconds each, and prove nothing more
        from dreamcore import job as dj

        dj.ASPECTS["1:1"] = (side, side)
    dev = torch.device("cpu" if rehearse else "cuda")
    return Setup(dev, torch.float32 if rehearse else torch.bfloat16, side, args.steps or (10 if rehearse else 40),
                 rehearse, Path(args.out or "gpu-sdxl-out"))


def _budget_spent(signum, frame):
    raise TimeoutError("the run's time budget is spent")


def smoke(setup: Setup, report: Report) -> None:
    """The tiny model, from disk, through the real worker on this device: two jobs (1 and 2 images)."""
    from worker.classifier import SafetyChecker
    from worker.pipeline import DreamPipeline
    from worker.tiny import make_tiny_model

    folder = make_tiny_model(Path(tempfile.mkdtemp(prefix="dreambot-tiny-")))
    pipe = DreamPipeline.load(str(folder / "base"), str(folder / "refiner"), str(setup.dev), dtype=setup.dtype,
                              offload="none", batch_images=QUEUE)
    checker = SafetyChecker.load(str(folder / "safety"), ["nsfw"], setup.dev)
    qb = QueueBench(setup)
    try:
        t = time.perf_counter()
        run = qb.run(pipe, checker, [1, 2], steps=4)
        shapes = {im.shape for im in run.by_seed.values()}
        if run.images != 3 or shapes != {(setup.side, setup.side, 3)}:
            raise RuntimeError(f"smoke made {run.images} images of shapes {shapes}")
        report.add(Row("setup", "smoke: tiny model through the worker", note=(
            f"2 jobs, 3 images of {setup.side}x{setup.side} decoded, in {time.perf_counter() - t:.1f} s "
            f"({str(setup.dtype).removeprefix('torch.')} on {setup.dev.type})")))
    finally:
        qb.close()
        from worker import pipeline as wp

        wp._loaded.clear()
        _free()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for gpu_sdxl.txt and rows.jsonl (default ./gpu-sdxl-out)")
    ap.add_argument("--budget-s", type=float, default=540, help="end every row inside this many seconds")
    ap.add_argument("--steps", type=int, default=None, help="default 40 (rehearsal: 10)")
    ap.add_argument("--rehearse", action="store_true", help="the CPU, the tiny model at 256x256, aot_eager")
    ap.add_argument("--restart-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    ap.add_argument("--image-dir", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lg in (dlog, tlog):
        lg.set_verbosity_error()
        lg.disable_progress_bar()
    torch.set_grad_enabled(False)
    if args.restart_child:
        return restart_child(args)

    setup = _setup(args)
    report = Report(setup.out, args.budget_s)
    sys.stdout = _Tee(sys.stdout, setup.out / "gpu_sdxl.txt")
    # Past the budget, the row in progress ends as failed and the rest are skipped: the table still comes.
    # SIGUSR1 from a timer thread, not SIGALRM: RQ's job timeout takes SIGALRM over.
    signal.signal(signal.SIGUSR1, _budget_spent)
    main_thread = threading.get_ident()
    watchdog = threading.Timer(args.budget_s + 1, signal.pthread_kill, (main_thread, signal.SIGUSR1))
    watchdog.daemon = True
    watchdog.start()
    if not setup.rehearse and not torch.cuda.is_available():
        report.say("no CUDA device: run with --rehearse here, or on the GPU machine")
        return 2
    from worker import speed

    if setup.rehearse:
        speed.Compiled.BACKEND = "aot_eager"
    report.say(versions(setup))
    report.say(f"{'REHEARSAL (CPU, tiny model, aot_eager): no figure here is a measurement; ' if setup.rehearse else ''}"
               f"{setup.side}x{setup.side}, {setup.steps} steps, split {setup.split}, CFG {setup.guidance:g}, "
               f"{str(setup.dtype).removeprefix('torch.')}; budget {args.budget_s:.0f} s")
    try:
        report.add(Row("setup", "SDPA kernel", note=sdpa_kernel(setup)))
        smoke(setup, report)
    except Exception as err:
        report.add(Row("setup", "smoke", status="failed", note=f"{type(err).__name__}: {err}"))
        traceback.print_exc()
        report.say("STOP: the worker does not run on this device; nothing after this would mean anything")
        return 4
    status = 0
    try:
        rows(setup, report)
    except Exception as err:  # a row's own failure is caught in rows(); this is the unforeseen
        report.add(Row("run", "unexpected", status="failed", note=f"{type(err).__name__}: {err}"))
        traceback.print_exc()
        status = 1
    finally:
        watchdog.cancel()
        table(setup, report)
    return status


def rows(setup: Setup, report: Report) -> None:
    from worker import speed

    tflops, tbs = ceilings(setup)
    report.add(Row("ceiling", "matrix product", extra={"tflops": tflops},
                   note=f"{tflops:.1f} TFLOP/s ({'8192^3 bf16' if not setup.rehearse else '1024^3 fp32'}, random)"))
    report.add(Row("ceiling", "device copy", extra={"tbs": tbs}, note=f"{tbs:.2f} TB/s (read + written)"))
    flops = None
    if not setup.rehearse:
        from sdxl_full import meta_flops, step_cache_flops

        mf = meta_flops(setup.steps, setup.split)
        mf.pop("_params")
        flops = sum(mf.values())
        full, cached = step_cache_flops()
        report.add(Row("setup", "FLOPs per image", extra={"tflop": flops / 1e12}, note=(
            f"{flops / 1e12:.1f} TFLOP (FlopCounterMode on meta tensors: " + ", ".join(
                f"{k} {v / 1e12:.1f}" for k, v in mf.items()) + f"); a base step reusing its deep features costs "
            f"{100 * cached / full:.1f}% of a full one")))

    def guarded(section: str, name: str, need_s: float, fn) -> Row | None:
        if not report.fits(section, name, need_s):
            return None
        try:
            return fn()
        except Exception as err:
            traceback.print_exc()
            _free()
            return report.add(Row(section, name, status="failed", note=f"{type(err).__name__}: {err}"))

    # 4. vanilla at batch 1: the denominator.
    def vanilla_row(n: int, reps: int) -> Row:
        seconds, peak, built = vanilla(setup, n, reps)
        return report.add(Row("vanilla", f"vanilla diffusers, batch of {n}", n, seconds, peak,
                              note=f"median of {reps}; models built in {built:.1f} s"))

    v1 = guarded("vanilla", "vanilla diffusers, batch of 1", 60, lambda: vanilla_row(1, 2))
    est = v1.s_per_image if v1 is not None and v1.status == "ok" else 10.0

    # 5-6. the lossless worker, uncompiled, through the queue.
    qb = QueueBench(setup)
    checker = checker_for(setup)
    state: dict = {}
    try:
        def worker_rows() -> Row:
            t = time.perf_counter()
            pipe = state["pipe"] = worker_pipeline(setup, turbo=True)
            built = time.perf_counter() - t
            qb.run(pipe, checker, [1] * QUEUE, steps=3)  # warm-up: this batch's shapes, not timed
            run = state["eager"] = qb.run(pipe, checker, [1] * QUEUE)
            return report.add(Row("worker", f"worker, queue of {QUEUE}, uncompiled", run.images, run.seconds,
                                  note=f"batches of {run.batches}; models built in {built:.1f} s; fuse_qkv freed "
                                       f"{pipe.speed.freed_bytes / 2**30:.2f} GiB"))

        guarded("worker", f"worker, queue of {QUEUE}, uncompiled", 2 * QUEUE * est + 40, worker_rows)

        def alone() -> Row:
            run = qb.run(state["pipe"], checker, [1])
            return report.add(Row("worker", "worker, 1 job alone", run.images, run.seconds, run.peak,
                                  note="peak: every model resident, the classifier too"))

        if "pipe" in state:
            guarded("worker", "worker, 1 job alone", 2 * est + 10, alone)

        def turbo_row() -> Row:
            from dreamcore import cost
            from dreamcore.modes import TURBO

            pipe = state["pipe"]
            qb.run(pipe, checker, [1] * QUEUE, mode="turbo")  # warm-up: the eager UNet at this batch's shapes
            run = qb.run(pipe, checker, [1] * QUEUE, mode="turbo")
            quality = state["eager"]
            charged = cost.dream_units(setup.side, setup.side, TURBO.steps, 1, TURBO.guidance)
            held = pipe.adapters["turbo"]
            return report.add(Row("mode", f"worker, queue of {QUEUE}, turbo", run.images, run.seconds, extra={
                "vs_quality": run.images / run.seconds / (quality.images / quality.seconds), "charged": charged},
                note=f"{run.images / run.seconds / (quality.images / quality.seconds):.2f}x the uncompiled quality "
                     f"worker's images/min, charged {charged:.3f} of a standard image; batches of {run.batches}; "
                     f"{TURBO.steps} steps, LoRA unfused on {len(held.layers)} layers"))

        if "eager" in state:
            guarded("mode", f"worker, queue of {QUEUE}, turbo", QUEUE * est * 0.3 + 60, turbo_row)

        # 7. vanilla at batch 8.
        guarded("vanilla", f"vanilla diffusers, batch of {QUEUE}", QUEUE * est * 1.2 + 30, lambda: vanilla_row(QUEUE, 1))

        # 8. compile, on the same worker, in place.
        cache_dir = Path(tempfile.mkdtemp(prefix="dreambot-compile-cache-"))

        def compiled_rows() -> Row:
            pipe = state["pipe"]
            levers = compile_levers(pipe, cache_dir)
            speed.after_placing(pipe, levers, QUEUE)
            pipe.levers = levers
            done = pipe.speed
            if done.compile_error:
                raise RuntimeError(f"compile failed at the warm-up: {done.compile_error}")
            report.add(Row("lever", "compile: cold warm-up", note=(
                f"{done.compile_s:.1f} s for {done.graphs} graphs (bucket {QUEUE}, 1:1); cache {done.compile_cache}")))
            run = state["compiled"] = qb.run(pipe, checker, [1] * QUEUE)
            same = deviation(run.by_seed, state["eager"].by_seed)
            return report.add(Row("worker", f"worker, queue of {QUEUE}, compiled", run.images, run.seconds,
                                  extra={"deviation": same},
                                  note=f"batches of {run.batches}; image deviation from uncompiled {same:.2e}"))

        if "eager" in state:
            guarded("worker", f"worker, queue of {QUEUE}, compiled", 300 if not setup.rehearse else 120, compiled_rows)

        # 9. a restarted worker finds the compiled code.
        if "compiled" in state:
            guarded("lever", "restart with the compiled code on disk", 120 if not setup.rehearse else 90,
                    lambda: report.add(restart(setup, qb, cache_dir, report)))

        # 10. the lossy levers, each alone on a fresh, uncompiled worker.
        base_row = report.find(f"worker, queue of {QUEUE}, uncompiled")
        for label, lever in LOSSY:
            if base_row is None:
                break
            name = f"worker, queue of {QUEUE}, uncompiled + {label}"

            def lossy_row(lever=lever, name=name) -> Row:
                state.pop("lossy", None)
                _free()
                if setup.rehearse and lever.get("fp8") == "dynamic":  # a CPU has no fp8 matrix units
                    lever = {"fp8": "weights"}
                pipe = state["lossy"] = worker_pipeline(setup, **lever)
                qb.run(pipe, checker, [1] * QUEUE, steps=3)
                run = qb.run(pipe, checker, [1] * QUEUE)
                dev_ = deviation(run.by_seed, state["eager"].by_seed)
                row = Row("lossy", name, run.images, run.seconds, extra={"deviation": dev_, **{
                    f"fp8 error, {k}": v for k, v in pipe.speed.fp8_error.items()}})
                unet = "; UNet output error " + ", ".join(f"{k} {v:.2e}" for k, v in pipe.speed.fp8_error.items()) \
                    if pipe.speed.fp8_error else ""
                row.note = (f"{row.per_min / base_row.per_min:.2f}x the uncompiled worker; image deviation "
                            f"{dev_:.3f}{unet}{' (fp8 weights: the rehearsal CPU has no fp8 units)' if setup.rehearse and 'fp8' in lever else ''}")
                return report.add(row)

            guarded("lossy", name, QUEUE * est + 40, lossy_row)
    finally:
        state.clear()
        qb.close()
        _free()


def table(setup: Setup, report: Report) -> None:
    rows_ = report.rows
    tflops = next((r.extra["tflops"] for r in rows_ if r.name == "matrix product"), None)
    flop_row = next((r for r in rows_ if r.name == "FLOPs per image"), None)
    flops = flop_row.extra["tflop"] * 1e12 if flop_row else None
    print(flush=True)
    print(f"{'row':<62} {'images':>6} {'s/image':>8} {'img/min':>8} {'MFU':>6} {'peak GiB':>8}  note")
    for r in rows_:
        if not r.images:
            print(f"{r.name:<62} {'':>6} {'':>8} {'':>8} {'':>6} {'':>8}  {r.status if r.status != 'ok' else ''} {r.note}")
            continue
        # MFU of the work vanilla does: a lossy lever does less, so it has none.
        mfu = f"{100 * flops / r.s_per_image / 1e12 / tflops:5.1f}%" if flops and tflops and r.section not in ("lossy", "mode") else "-"
        peak = f"{r.peak_gib:.2f}" if r.peak_gib is not None else "-"
        print(f"{r.name:<62} {r.images:>6} {r.s_per_image:>8.3f} {r.per_min:>8.2f} {mfu:>6} {peak:>8}  {r.note}")
    v1, v8 = report.find("vanilla diffusers, batch of 1"), report.find(f"vanilla diffusers, batch of {QUEUE}")
    best = max((r for r in rows_ if r.section == "worker" and r.status == "ok" and r.name.startswith("worker, queue")),
               key=lambda r: r.per_min, default=None)
    judged = not setup.rehearse

    def mark(ok: bool) -> str:
        return ("PASS" if ok else "FAIL") if judged else "-"

    parts = []
    if best is not None and v1 is not None:
        parts.append(f"{best.name}: {best.per_min / v1.per_min:.2f}x vanilla batch 1 (>= {TARGET_VS_B1:g} "
                     f"{mark(best.per_min / v1.per_min >= TARGET_VS_B1)})")
    if best is not None and v8 is not None:
        parts.append(f"{best.per_min / v8.per_min:.2f}x vanilla batch {QUEUE} (>= {TARGET_VS_B8:g} "
                     f"{mark(best.per_min / v8.per_min >= TARGET_VS_B8)})")
    if best is not None and flops and tflops:
        parts.append(f"MFU {100 * flops / best.s_per_image / 1e12 / tflops:.1f}% of the measured {tflops:.0f} TFLOP/s")
    one = report.find("worker, 1 job alone")
    if one is not None and one.peak_gib is not None:
        parts.append(f"peak at batch 1 {one.peak_gib:.2f} GiB (<= {TARGET_MEMORY_GIB:g} {mark(one.peak_gib <= TARGET_MEMORY_GIB)})")
    again = report.find("restart with the compiled code on disk")
    if again is not None:
        s = again.extra["first_dream_s"]
        parts.append(f"restart to first dream {s:.1f} s (< {TARGET_RESTART_S:g} {mark(s < TARGET_RESTART_S)})")
    missing = [r.name for r in rows_ if r.status != "ok"]
    if missing:
        parts.append(f"not measured: {'; '.join(missing)}")
    label = "VERDICT" if judged else "VERDICT (rehearsal: not a measurement)"
    print(f"{label}: " + "; ".join(parts or ["nothing measured"]), flush=True)
    print(f"total wall time {time.monotonic() - report.t0:.1f} s", flush=True)


class _Tee:
    """stdout, copied into a file as it is written."""

    def __init__(self, stream, path: Path):
        self.stream = stream
        self.file = path.open("w", encoding="utf-8")

    def write(self, s: str) -> int:
        self.stream.write(s)
        self.file.write(s)
        return len(s)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()


if __name__ == "__main__":
    raise SystemExit(main())
