"""SDXL 1.0 base + refiner at full size on one GPU: the real worker next to vanilla diffusers, in one run.

No download: the two pipelines are built from SDXL 1.0's published configs (written out below) with random
weights, saved as pipeline folders in a temp dir, and loaded from there twice:

  worker   the product itself: a private redis-server (dreamcore.localredis, AOF fsync once a second as in
           docker-compose), dreams enqueued with `DreamQueue.enqueue` (distinct prompts, seeds and members),
           and `worker.runner.make_worker(settings, conn, pipeline)` run in burst mode in this process on a
           `DreamPipeline.load(...)` with the settings' speed levers (fuse_qkv, channels_last, compile).
           Time per row: from the first job's RQ start to the last result published (its finished_at), so
           parsing, batching, denoising, VAE decodes, PNG encodes and publishing all count.
  vanilla  diffusers' documented ensemble-of-experts recipe: base(..., denoising_end=0.8,
           output_type="latent"), then refiner(..., denoising_start=0.8, image=latents), sharing
           text_encoder_2 and the VAE, default attention (SDPA); a batch is a list of prompts.

Setting: 1024x1024, 40 steps (32 on the base, 8 on the refiner), CFG 7, bf16. Speed is the same with random
weights as with the real ones (same shapes, same kernels); the pictures are noise, of course.

Rows: worker, 1 job alone (median of 3); worker, a queue of 8 one-image jobs with batching on
(settings batch_images=8) and off (batch_images=1); worker, a queue of 4-image jobs; the same at
--batch-queue N when N > 8; vanilla, 1 image; vanilla, one batch of 8 prompts (what batching alone gives).
Each row: s/image, images/min, achieved TFLOP/s (FLOPs per image counted with FlopCounterMode, on meta
tensors for the full-size model, and over one real image) and its share of the dense bf16 peak, peak GPU
memory (torch.cuda.max_memory_allocated, weights included). Then a VERDICT line against the targets:
worker at a queue of >= 8 >= 2.0x the vanilla 1-image images/min, >= 45% of peak, <= 16 GiB at batch 1.

    python bench/gpu_sdxl.py                  # on a GPU box: one command, about 5 minutes on an H100/H200
    python bench/gpu_sdxl.py --smoke          # CPU, the tiny model, a few steps: checks the code path here
    python bench/gpu_sdxl.py --compile        # also torch.compile the worker's UNets (warm-up timed apart)
    python bench/gpu_sdxl.py --no-levers      # the worker without fused QKV and channels_last
    python bench/gpu_sdxl.py --batch-queue 16 --peak-tflops 989 --model-dir /data/sdxl-random --out gpu.txt
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, Path(__file__).resolve().parent):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

PROMPT = "a lighthouse at dusk, oil painting, dramatic sky"  # < 75 tokens for either tokenizer: one chunk
EXPECTED_TFLOP = 560.0  # per image, 1024x1024, 40 steps (32 base + 8 refiner), CFG, one VAE decode
TARGET_SPEEDUP = 2.0  # worker images/min at a queue of >= 8 vs vanilla diffusers' 1 image
TARGET_PEAK_SHARE = 0.45  # of the GPU's dense bf16 peak
TARGET_MEMORY_GIB = 16.0  # peak GPU memory of the worker at batch 1
QUEUE = 8  # the queue depth the speed target is set at
SMOKE_SIDE = 256  # --smoke: image side (the real runs are 1024x1024)
# Dense bf16 tensor-core peaks (TFLOP/s) by device name; --peak-tflops overrides.
PEAKS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("B200", 2250.0),
         ("A100", 312.0), ("L40S", 362.0))

# --- SDXL 1.0's published configs (stabilityai/stable-diffusion-xl-{base,refiner}-1.0, */config.json) -----

BASE_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, act_fn="silu", norm_num_groups=32,
    norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, center_input_sample=False, downsample_padding=1,
    mid_block_scale_factor=1,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 1280 pooled text + 6 x 256 size/crop embeddings
)
REFINER_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, act_fn="silu", norm_num_groups=32,
    norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, center_input_sample=False, downsample_padding=1,
    mid_block_scale_factor=1,
    block_out_channels=(384, 768, 1536, 1536),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    transformer_layers_per_block=4,
    attention_head_dim=(6, 12, 24, 24),
    cross_attention_dim=1280,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2560,  # 1280 pooled text + 5 x 256 (size, crop, aesthetic score)
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, act_fn="silu", norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
TEXT_ENCODER = dict(  # CLIP ViT-L/14 text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
TEXT_ENCODER_2 = dict(  # OpenCLIP ViT-bigG/14 text tower, with its projection
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)
PUBLISHED_PARAMS = {"base unet": 2_567_463_684, "refiner unet": 2_259_526_660, "vae": 83_653_863,
                    "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}


def _quiet() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lg in (dlog, tlog):
        lg.set_verbosity_error()
        lg.disable_progress_bar()


def _text_config(tokenizer, spec: dict):
    from transformers import CLIPTextConfig

    # The byte-level tokenizer of worker/tiny.py (no vocabulary download) uses ids < 514 of the 49408; the
    # encoder reads its pooled output at the tokenizer's own end token.
    return CLIPTextConfig(**spec, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)


def build_components(device: str, dtype: torch.dtype, tokenizer=None, tokenizer_2=None) -> dict:
    """The full-size modules with random weights, created directly on `device` ("meta": shapes only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from worker.tiny import make_tokenizer

    tokenizer = tokenizer or make_tokenizer()
    tokenizer_2 = tokenizer_2 or make_tokenizer(pad_token="!")
    torch.manual_seed(0)
    with torch.device(device):
        parts = {
            "base unet": UNet2DConditionModel(**BASE_UNET),
            "refiner unet": UNet2DConditionModel(**REFINER_UNET),
            "vae": AutoencoderKL(**VAE),
            "text_encoder": CLIPTextModel(_text_config(tokenizer, TEXT_ENCODER)),
            "text_encoder_2": CLIPTextModelWithProjection(_text_config(tokenizer_2, TEXT_ENCODER_2)),
        }
    for m in parts.values():
        m.to(dtype).eval()
    parts["tokenizer"], parts["tokenizer_2"] = tokenizer, tokenizer_2
    return parts


def sdxl_pipelines(p: dict):
    """The base and refiner pipelines over `build_components`' modules, wired as the published ones are
    (worker.tiny.sdxl_pipelines, the tiny model's own wiring)."""
    from worker.tiny import sdxl_pipelines as wire

    return wire(p["vae"], p["text_encoder"], p["text_encoder_2"], p["tokenizer"], p["tokenizer_2"],
                p["base unet"], p["refiner unet"])


def save_full_model(out: Path, device: str, dtype: torch.dtype) -> Path:
    """Write out/base and out/refiner as diffusers pipeline folders (about 11 GB in bf16)."""
    p = build_components(device, dtype)
    base, refiner = sdxl_pipelines(p)
    base.save_pretrained(out / "base")
    refiner.save_pretrained(out / "refiner")
    del base, refiner, p
    _free()
    return out


def meta_flops(steps: int, split: float, batch: int = 1) -> dict[str, float]:
    """FLOPs of one image of the full-size architecture, counted by FlopCounterMode on meta tensors (no
    compute, any machine): UNet forwards at CFG batch 2 x steps, text encoders, one VAE decode."""
    dt = torch.bfloat16
    p = build_components("meta", dt)
    m = {"device": "meta", "dtype": dt}
    base_steps = round(steps * split)
    ref_steps = steps - base_steps
    out = {}
    with torch.inference_mode():
        ids = torch.zeros(2 * batch, 77, dtype=torch.long, device="meta")
        with FlopCounterMode(display=False) as fc:
            p["text_encoder"](ids, output_hidden_states=True)
            p["text_encoder_2"](ids, output_hidden_states=True)
            p["text_encoder_2"](ids, output_hidden_states=True)  # the refiner's own encoding
        out["text encoders"] = fc.get_total_flops()
        x = torch.zeros(2 * batch, 4, 128, 128, **m)
        t = torch.full((2 * batch,), 500, device="meta")
        with FlopCounterMode(display=False) as fc:
            p["base unet"](x, t, encoder_hidden_states=torch.zeros(2 * batch, 77, 2048, **m),
                           added_cond_kwargs={"text_embeds": torch.zeros(2 * batch, 1280, **m),
                                              "time_ids": torch.zeros(2 * batch, 6, **m)})
        out[f"base unet x {base_steps}"] = fc.get_total_flops() * base_steps
        with FlopCounterMode(display=False) as fc:
            p["refiner unet"](x, t, encoder_hidden_states=torch.zeros(2 * batch, 77, 1280, **m),
                              added_cond_kwargs={"text_embeds": torch.zeros(2 * batch, 1280, **m),
                                                 "time_ids": torch.zeros(2 * batch, 5, **m)})
        out[f"refiner unet x {ref_steps}"] = fc.get_total_flops() * ref_steps
        with FlopCounterMode(display=False) as fc:
            p["vae"].decode(torch.zeros(batch, 4, 128, 128, **m))
        out["vae decode"] = fc.get_total_flops()
    params = {k: sum(q.numel() for q in v.parameters()) for k, v in p.items() if hasattr(v, "parameters")}
    out["_params"] = params  # type: ignore[assignment]
    return out


# --- timing ------------------------------------------------------------------------------------------------

_T0 = time.monotonic()


def say(*parts) -> None:
    """Print at once (a run cut short by a timeout still shows what it measured)."""
    print(*parts, flush=True)


def progress(msg: str) -> None:
    say(f"[{time.monotonic() - _T0:6.1f} s] {msg}")


class _Tee:
    """stdout, copied line by line into --out FILE."""

    def __init__(self, stream, path: str):
        self.stream = stream
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115  (closed at exit by the interpreter)

    def write(self, s: str) -> int:
        self.stream.write(s)
        self.file.write(s)
        return len(s)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gib(dev: torch.device) -> float:
    """Peak GPU memory since the last reset; on a CPU the process's max RSS (never reset)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _fmt_peak(gib: float | None, dev: torch.device) -> str:
    if gib is None:
        return "-"
    return f"{gib:.1f} GiB" if dev.type == "cuda" else f"(CPU RSS {gib:.1f} GiB)"


def _ts(dt: datetime) -> float:
    """RQ's datetimes are UTC, naive in some releases."""
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


class Row:
    def __init__(self, name: str, images: int, seconds: float, peak: float | None, note: str = ""):
        self.name, self.images, self.seconds, self.peak, self.note = name, images, seconds, peak, note

    @property
    def s_per_image(self) -> float:
        return self.seconds / self.images

    @property
    def per_min(self) -> float:
        return 60 * self.images / self.seconds


# --- the worker, for real: Redis, the queue, make_worker in burst mode -------------------------------------


class WorkerBench:
    def __init__(self, model_dir: Path, device: str, steps: int, levers: bool, compile_: bool, batch_images: int):
        import redis
        from _common import start_redis

        self.server = start_redis()
        self.conn = redis.Redis.from_url(self.server.url)
        self.steps = steps
        common = dict(redis_url=self.server.url, base_model=str(model_dir / "base"),
                      refiner_model=str(model_dir / "refiner"), device=device, metrics_port=0,
                      log_level="WARNING", job_timeout_s=3600, job_retries=0,
                      fuse_qkv=levers, channels_last=levers, compile=compile_)
        if (model_dir / "safety").is_dir():  # the tiny model's classifier; real weights use DREAMBOT_SAFETY_MODEL
            common["safety_model"] = str(model_dir / "safety")
        self.settings = self._settings(batch_images=batch_images, **common)
        self.settings_off = self._settings(batch_images=1, **common)
        self.pipe = None
        self.seq = 0

    @staticmethod
    def _settings(**fields):
        from dreamcore.settings import Settings, load_settings

        known = {k: v for k, v in fields.items() if k in Settings.model_fields}
        return load_settings(**known)

    def load(self) -> float:
        from worker import pipeline as wp
        from worker.runner import quiet_model_libraries

        quiet_model_libraries()
        s = self.settings
        wanted = {"fuse_qkv": s.fuse_qkv, "channels_last": s.channels_last, "compile": s.compile}
        accepted = inspect.signature(wp.DreamPipeline.load).parameters
        missing = [k for k in wanted if k not in accepted]
        if missing:
            say(f"note: DreamPipeline.load takes no {', '.join(missing)} in this checkout (the speed options "
                f"have not landed): the worker runs without them")
        wp._loaded.clear()
        t = time.perf_counter()
        self.pipe = wp.DreamPipeline.load(s.base_model, s.refiner_model, s.device,
                                          **{k: v for k, v in wanted.items() if k in accepted})
        self.levers = {k: v for k, v in wanted.items() if k in accepted}
        return time.perf_counter() - t

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    def run(self, counts: list[int], batching: bool = True, steps: int | None = None) -> dict:
        """Enqueue one job per entry of `counts` (that many images each), then let a burst worker empty the queue."""
        from rq.job import Job
        from rq.serializers import JSONSerializer

        from dreamcore import results
        from dreamcore.images import open_store
        from dreamcore.job import make_job, make_origin, make_request
        from dreamcore.queue import DreamQueue
        from worker.runner import make_worker

        settings = self.settings if batching else self.settings_off
        q = DreamQueue(self.conn, settings)
        ids = []
        for n in counts:
            self.seq += 1
            i = self.seq
            req = make_request(prompt=f"{PROMPT}, study {i}", seed=1000 * i, steps=steps or self.steps,
                               guidance=7.0, split=0.8, count=n, aspect="1:1",
                               max_upload_bytes=settings.max_upload_bytes)
            origin = make_origin(instance="bench", guild_id=4242, channel_id=77, user_id=10_000 + i)
            job = make_job(req, origin)
            q.enqueue(job)
            ids.append(job.job_id)
        waiting = q.waiting()
        if waiting != len(ids):
            raise RuntimeError(f"{waiting} jobs waiting, {len(ids)} enqueued")
        dev = self.device
        _free()
        _reset_peak(dev)
        worker = make_worker(settings, self.conn, self.pipe, name=f"bench-{os.getpid()}-{self.seq}")
        graphs = _compiled_graphs()
        t = time.perf_counter()
        worker.work(burst=True, logging_level="WARNING")
        wall = time.perf_counter() - t
        graphs = _compiled_graphs() - graphs  # torch.compile work inside the timed span (should be 0)
        _sync(dev)
        peak = _peak_gib(dev)
        starts, ends, images, errors, batches, png, steps_run = [], [], 0, [], [], [], set()
        for jid in ids:
            rq_job = Job.fetch(jid, connection=self.conn, serializer=JSONSerializer)
            if rq_job.started_at is not None:
                starts.append(_ts(rq_job.started_at))
            got = results.load(self.conn, open_store(self.settings), jid)
            if got is None or got[0].status != "done":
                errors.append(got[0].error if got else f"no result for job {jid} (RQ: {rq_job.get_status()})")
                continue
            res = got[0]
            ends.append(res.finished_at)
            images += len(res.images)
            batches.append(int(res.timings.get("batch_images", len(res.images))))
            png.append(res.timings.get("png_s", 0.0))
            steps_run.add((res.base_steps, res.refiner_steps))
        if errors:
            raise RuntimeError(f"{len(errors)} of {len(ids)} jobs failed: {errors[0]}")
        return {"seconds": max(ends) - min(starts), "wall": wall, "images": images, "peak": peak,
                "batches": sorted(set(batches)), "png_s": statistics.mean(png) if png else 0.0,
                "steps": sorted(steps_run), "graphs": graphs}

    def close(self) -> None:
        """Drop every reference to the worker's pipeline (the load cache, the jobs' runtime, compiled graphs) so
        its GPU memory is free before vanilla diffusers loads and measures its own peak."""
        from worker import pipeline as wp
        from worker import runtime as worker_runtime

        dev = self.pipe.device if self.pipe is not None else torch.device("cpu")
        self.pipe = None
        wp._loaded.clear()
        worker_runtime._runtime = None
        if self.settings.compile:
            torch._dynamo.reset()
        self.conn.close()
        self.server.close()
        _free()
        if dev.type == "cuda":
            progress(f"worker closed; GPU memory still allocated: {torch.cuda.memory_allocated(dev) / 2**30:.2f} GiB")


def _compiled_graphs() -> int:
    """Graphs torch.compile (dynamo) has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _warm_worker(wb: WorkerBench, warm_steps: int, batch_images: int) -> float:
    t = time.perf_counter()
    wb.run([1], steps=warm_steps)
    if batch_images > 1:  # the batched shapes too (and, compiled, their graphs)
        wb.run([1] * batch_images, steps=warm_steps)
    return time.perf_counter() - t


def worker_rows(wb: WorkerBench, queues: list[int], reps_one: int, rows: list[Row], notes: dict) -> None:
    dev = wb.device

    def add(name: str, r: dict) -> None:
        note = f"batches of {'/'.join(map(str, r['batches']))} images; PNG {r['png_s']:.2f} s/job"
        if r["graphs"]:
            note += f"; {r['graphs']} graphs compiled while timed"
        row = Row(name, r["images"], r["seconds"], r["peak"], note)
        rows.append(row)
        progress(f"{name}: {row.s_per_image:.3f} s/image, {row.per_min:.2f} images/min, peak "
                 f"{_fmt_peak(r['peak'], dev)} ({note}; worker wall {r['wall']:.1f} s)")

    spans, peak = [], 0.0
    for _ in range(reps_one):
        r = wb.run([1])
        spans.append(r["seconds"])
        peak = max(peak, r["peak"])
        notes["split"] = r["steps"]
        notes["png_one"] = r["png_s"]
    r["seconds"], r["peak"] = statistics.median(spans), peak
    add(f"worker, 1 job alone{f' (median of {reps_one})' if reps_one > 1 else ''}", r)
    notes["peak_one"] = peak
    for n in queues:
        r = wb.run([1] * n)
        add(f"worker, {n} queued 1-image jobs, batching", r)
        notes.setdefault("queued", {})[n] = rows[-1]
        add(f"worker, {n} queued 1-image jobs, no batching", wb.run([1] * n, batching=False))
    n4 = max(2, queues[0] // 4)
    add(f"worker, {n4} queued 4-image jobs, batching", wb.run([4] * n4))


# --- vanilla diffusers -------------------------------------------------------------------------------------


def vanilla_rows(model_dir: Path, dev: torch.device, side: int, steps: int, batch: int, warm_steps: int,
                 count_flops: bool, rows: list[Row], notes: dict) -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from worker.weights import _DTYPE_KW

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    t = time.perf_counter()
    base = StableDiffusionXLPipeline.from_pretrained(str(model_dir / "base"), **{_DTYPE_KW: dtype}).to(dev)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        str(model_dir / "refiner"), text_encoder_2=base.text_encoder_2, vae=base.vae, **{_DTYPE_KW: dtype}).to(dev)
    notes["vanilla_load_s"] = time.perf_counter() - t
    progress(f"vanilla diffusers loaded in {notes['vanilla_load_s']:.1f} s")
    pipes = {"base": base, "refiner": refiner}
    del base, refiner
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)

    def make(count: int, st: int, seed: int):
        prompts = [f"{PROMPT}, study {seed + i}" for i in range(count)]
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]
        latents = pipes["base"](prompt=prompts, width=side, height=side, num_inference_steps=st, denoising_end=0.8, guidance_scale=7.0,
                                generator=gens, output_type="latent").images
        return pipes["refiner"](prompt=prompts, num_inference_steps=st, denoising_start=0.8, guidance_scale=7.0,
                                generator=gens, image=latents).images

    def timed(name: str, count: int, seed: int) -> None:
        _free()
        _reset_peak(dev)
        _sync(dev)
        t = time.perf_counter()
        make(count, steps, seed)
        _sync(dev)
        row = Row(name, count, time.perf_counter() - t, _peak_gib(dev))
        rows.append(row)
        progress(f"{name}: {row.s_per_image:.3f} s/image, {row.per_min:.2f} images/min, peak "
                 f"{_fmt_peak(row.peak, dev)}")

    if warm_steps:
        t = time.perf_counter()
        make(1, warm_steps, 0)
        make(batch, warm_steps, 0)
        progress(f"vanilla warm-up ({warm_steps} steps, batch 1 and {batch}): {time.perf_counter() - t:.1f} s")
    timed("vanilla diffusers, 1 image", 1, 1)
    notes["vanilla_one"] = rows[-1]
    timed(f"vanilla diffusers, batch of {batch} prompts", batch, 100)
    if count_flops:
        with FlopCounterMode(display=False) as fc:
            make(1, steps, 2)
        notes["real_flops"] = fc.get_total_flops()
        progress(f"FlopCounterMode over one real image (vanilla recipe): {notes['real_flops'] / 1e12:.4g} TFLOP")
    pipes.clear()
    _free()


# --- main --------------------------------------------------------------------------------------------------


def _peak_for(name: str) -> float | None:
    for key, tf in PEAKS:
        if key in name:
            return tf
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-queue", type=int, default=QUEUE,
                    help=f"also measure a queue of this many 1-image jobs when above {QUEUE}")
    ap.add_argument("--batch-images", type=int, default=None,
                    help="the worker's batch_images (default: the settings' default, 8)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense bf16 peak to compare with (default: by device name; H100/H200 SXM: 989)")
    ap.add_argument("--model-dir", default=None,
                    help="keep the random-weight pipelines here (reused when base/ and refiner/ exist)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the worker's UNets (settings compile=True); warm-up timed apart")
    ap.add_argument("--no-levers", action="store_true", help="the worker without fuse_qkv and channels_last")
    ap.add_argument("--no-flops", action="store_true", help="skip the FlopCounterMode pass over a real image")
    ap.add_argument("--out", default=None, help="also write everything printed to this file")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, the tiny model (worker.tiny), few steps: the same code, in about a minute")
    args = ap.parse_args()
    if args.out:
        sys.stdout = _Tee(sys.stdout, args.out)
    _quiet()
    side = 1024
    if args.smoke:
        args.device, args.steps = "cpu", min(args.steps, 3)
        # A 1024x1024 VAE decode + PNG encode takes seconds per image on a CPU even for the tiny model; the
        # smoke run checks the code path, so its square dreams are 256x256 (the same code, smaller tensors).
        from dreamcore import job as dj

        side = SMOKE_SIDE
        dj.ASPECTS["1:1"] = (side, side)
    # Warm-up runs both stages (3 steps: 2 base + 1 refiner; 5: 4 + 1), at batch 1 and batch_images.
    warm_steps = 3 if args.smoke else 5
    reps_one = 1 if args.smoke else 3
    queues = [args.batch_queue] if args.batch_queue <= QUEUE else [QUEUE, args.batch_queue]
    torch.set_grad_enabled(False)

    from dreamcore.settings import Settings

    batch_images = args.batch_images or Settings.model_fields["batch_images"].default
    load = "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    cuda = args.device == "cuda"
    dev_name = torch.cuda.get_device_name(0) if cuda and torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    peak_tflops = args.peak_tflops or _peak_for(dev_name) or 989.0
    say(f"device: {dev_name}; torch {torch.__version__}; "
        f"{'tiny model (smoke)' if args.smoke else 'SDXL 1.0 base + refiner, full size, random weights'}; "
        f"{side}x{side}, {args.steps} steps, split 0.8, CFG 7, {'bf16' if cuda else 'fp32'}; {load}")
    say(f"worker settings: batch_images={batch_images}, fuse_qkv={not args.no_levers}, "
        f"channels_last={not args.no_levers}, compile={args.compile}; queues of {', '.join(map(str, queues))}")
    if cuda and not torch.cuda.is_available():
        say("no CUDA device here: run with --smoke (CPU, tiny model) or on a GPU box")
        return 2

    # The full-size architecture, on meta tensors: parameter counts against the published ones, and the
    # FLOP count of one image. Needs no GPU and no memory, so it runs in the smoke test too.
    t = time.perf_counter()
    mf = meta_flops(args.steps if not args.smoke else 40, 0.8)
    params = mf.pop("_params")
    say(f"full-size architecture (meta tensors, {time.perf_counter() - t:.1f} s): parameters "
        + ", ".join(f"{k} {v / 1e6:,.1f}M{'' if v == PUBLISHED_PARAMS[k] else ' (published: ' + str(PUBLISHED_PARAMS[k]) + ')'}"
                    for k, v in params.items()))
    meta_total = sum(mf.values())
    say(f"FLOPs per 1024x1024 image, {'40' if args.smoke else args.steps} steps, CFG (FlopCounterMode on meta "
        f"tensors): {meta_total / 1e12:.1f} TFLOP (expected ~{EXPECTED_TFLOP:g}) = "
        + " + ".join(f"{k} {v / 1e12:.1f}" for k, v in mf.items()))

    rows: list[Row] = []
    notes: dict = {}
    tmp = None
    if args.model_dir:
        model_dir = Path(args.model_dir)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="dreambot-sdxl-"))
        model_dir = tmp
    wb = None
    try:
        if not ((model_dir / "base" / "model_index.json").exists() and (model_dir / "refiner" / "model_index.json").exists()):
            t = time.perf_counter()
            if args.smoke:
                from worker.tiny import make_tiny_model

                make_tiny_model(model_dir)
            else:
                save_full_model(model_dir, args.device, torch.bfloat16)
            progress(f"pipelines written to {model_dir} in {time.perf_counter() - t:.1f} s")

        wb = WorkerBench(model_dir, args.device, args.steps, levers=not args.no_levers, compile_=args.compile,
                         batch_images=batch_images)
        notes["worker_load_s"] = wb.load()
        dev = wb.device
        progress(f"worker pipeline loaded in {notes['worker_load_s']:.1f} s"
                 f"{' (DreamPipeline.load compiles and warms up the UNets: included)' if args.compile else ''} (levers: "
                 + (", ".join(f"{k}={v}" for k, v in wb.levers.items()) or "none") + f"); redis {wb.server.url}")
        graphs = _compiled_graphs()
        warm = _warm_worker(wb, warm_steps, batch_images)
        graphs = _compiled_graphs() - graphs
        progress(f"worker warm-up through the queue ({warm_steps} steps, batch 1 and {batch_images}"
                 f"{f', torch.compile included: {graphs} graphs' if args.compile else ''}): "
                 f"{warm:.1f} s, not in the figures")
        worker_rows(wb, queues, reps_one, rows, notes)
        wb.close()
        wb = None
        vanilla_rows(model_dir, dev, side, args.steps, batch_images, warm_steps, not args.no_flops, rows, notes)
    finally:
        if wb is not None:
            wb.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    # FLOPs per image for the TFLOP/s column: the full-size count on a GPU (the real image's count agrees
    # with it); the tiny model's own count, over a real image, in the smoke run.
    real = notes.get("real_flops")
    flops = real if args.smoke else meta_total
    say()
    say(f"loaded: worker {notes['worker_load_s']:.1f} s, vanilla {notes['vanilla_load_s']:.1f} s; base/refiner "
        f"steps the worker ran: {', '.join(f'{a}/{b}' for a, b in notes['split'])}")
    if real:
        say(f"FLOPs per image over one real image (FlopCounterMode): {real / 1e12:.4g} TFLOP"
            + ("" if args.smoke else f" (meta count {meta_total / 1e12:.1f}, expected ~{EXPECTED_TFLOP:g})"))
    say(f"{'path':<46} {'images':>6} {'s/image':>9} {'images/min':>10} {'TFLOP/s':>8} {'of peak':>7} "
        f"{'peak memory':>14}  notes")
    for r in rows:
        tf = flops / r.s_per_image / 1e12 if flops else None
        if tf is None:
            tcol = f"{'-':>8} {'-':>7}"
        else:  # the smoke run's tiny model does a few GFLOP/s
            tcol = (f"{tf:8.1f}" if tf >= 1 else f"{tf:8.4f}") + f" {100 * tf / peak_tflops:6.1f}%"
        say(f"{r.name:<46} {r.images:>6} {r.s_per_image:>9.3f} {r.per_min:>10.2f} {tcol} "
            f"{_fmt_peak(r.peak, dev):>14}  {r.note}")
    what = ("the full model" if not args.smoke else "the tiny model, counted over a real image" if flops
            else "not counted (--no-flops)")
    say(f"(peak {peak_tflops:g} TFLOP/s dense bf16; FLOPs per image: {what}; worker rows time "
        f"the first job's start to the last result published)")

    # The verdict: the best worker row at a queue of >= QUEUE 1-image jobs with batching, against vanilla's 1 image.
    queued = notes.get("queued", {})
    deep = [queued[n] for n in sorted(queued) if n >= QUEUE]
    best = max(deep, key=lambda r: r.per_min) if deep else None
    van = notes["vanilla_one"]
    judged = cuda and not args.smoke

    def mark(ok: bool) -> str:
        return ("PASS" if ok else "FAIL") if judged else "-"

    parts = []
    if best is not None:
        speed = best.per_min / van.per_min
        parts.append(f"speed {speed:.2f}x vanilla 1-image images/min ({best.name}) vs >= {TARGET_SPEEDUP:.1f}x "
                     f"{mark(speed >= TARGET_SPEEDUP)}")
        if flops:
            share = flops / best.s_per_image / 1e12 / peak_tflops
            parts.append(f"{100 * share:.1f}% of peak vs >= {100 * TARGET_PEAK_SHARE:.0f}% {mark(share >= TARGET_PEAK_SHARE)}")
    else:
        parts.append(f"no queue of >= {QUEUE} measured (--batch-queue {args.batch_queue})")
    mem = notes["peak_one"]
    parts.append(f"peak memory at batch 1 {_fmt_peak(mem, dev)} vs <= {TARGET_MEMORY_GIB:g} GiB "
                 f"{mark(mem <= TARGET_MEMORY_GIB) if cuda else '-'}")
    label = "VERDICT" if judged else "VERDICT (smoke: not a measurement)"
    say(f"{label}: " + "; ".join(parts))
    if args.smoke:
        say("(smoke: the tiny model on a CPU: these speeds only show that the code path runs)")
    say(f"total wall time {time.monotonic() - _T0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
