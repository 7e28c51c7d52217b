"""SDXL 1.0 base + refiner at full size on one GPU: the worker's own path next to vanilla diffusers.

No download: the two pipelines are built from SDXL 1.0's published configs (written out below) with random
weights, saved as pipeline folders in a temp dir, and loaded from there twice:

  worker   `worker.pipeline.DreamPipeline.load(base, refiner, device)` + `.generate(DreamRequest)`, the code
           a `dreambot worker` runs (bf16 on CUDA, SDPA attention, chunked prompt encoder, one VAE decode
           per image);
  vanilla  diffusers' documented ensemble-of-experts recipe: base(..., denoising_end=0.8,
           output_type="latent"), then refiner(..., denoising_start=0.8, image=latents), sharing
           text_encoder_2 and the VAE, default attention (SDPA).

Setting: 1024x1024, 40 steps (32 on the base, 8 on the refiner), CFG 7, bf16. Speed is the same with random
weights as with the real ones (same shapes, same kernels); the pictures are noise, of course.

Figures: s/image, images/min, peak GPU memory (torch.cuda.max_memory_allocated, weights included), FLOPs
per image counted with torch.utils.flop_counter.FlopCounterMode over one real image (and, on any machine,
over the full-size architecture on meta tensors), achieved TFLOP/s and the share of the dense bf16 peak.

--batch-queue N simulates N jobs waiting: the worker runs them the way it does today, one job after
another (it does not batch), vanilla diffusers runs them as one batch of N. The worker's N-queued vs 1-job
throughput ratio is printed beside its target (>= 2.0x).

    python bench/gpu_sdxl.py                  # on a GPU box (one command)
    python bench/gpu_sdxl.py --smoke          # CPU, the tiny model, a few steps: checks the code path here
    python bench/gpu_sdxl.py --batch-queue 8 --steps 40 --peak-tflops 989 --model-dir /data/sdxl-random
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

PROMPT = "a lighthouse at dusk, oil painting, dramatic sky"  # < 75 tokens for either tokenizer: one chunk
EXPECTED_TFLOP = 560.0  # per image, 1024x1024, 40 steps (32 base + 8 refiner), CFG, one VAE decode
TARGET_BATCH_RATIO = 2.0

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


def save_full_model(out: Path, device: str, dtype: torch.dtype) -> Path:
    """Write out/base and out/refiner as diffusers pipeline folders (about 11 GB in bf16)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from worker.tiny import SCHEDULER_CONFIG

    p = build_components(device, dtype)
    base = StableDiffusionXLPipeline(
        vae=p["vae"], text_encoder=p["text_encoder"], text_encoder_2=p["text_encoder_2"], tokenizer=p["tokenizer"],
        tokenizer_2=p["tokenizer_2"], unet=p["base unet"], scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=p["vae"], text_encoder=None, text_encoder_2=p["text_encoder_2"], tokenizer=None,
        tokenizer_2=p["tokenizer_2"], unet=p["refiner unet"], scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False)
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


def _peak(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB"
    return f"(CPU: process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB)"


def run_worker_path(base_dir: Path, refiner_dir: Path, device: str, steps: int, n: int, warm_steps: int,
                    count_flops: bool) -> dict:
    from dreamcore.job import make_request
    from worker import pipeline as wp

    wp._loaded.clear()
    t = time.perf_counter()
    pipe = wp.DreamPipeline.load(str(base_dir), str(refiner_dir), device)
    load_s = time.perf_counter() - t
    dev = pipe.device

    def req(seed: int, st: int = steps):
        return make_request(prompt=PROMPT, seed=seed, steps=st, guidance=7.0, split=0.8, count=1, aspect="1:1")

    if warm_steps:
        pipe.generate(req(0, warm_steps))  # warm-up: CUDA context, kernels, allocator
    _reset_peak(dev)
    _sync(dev)
    t = time.perf_counter()
    g = pipe.generate(req(1))
    _sync(dev)
    one = time.perf_counter() - t
    split = (g.base_steps, g.refiner_steps)
    # N queued jobs, the way the worker runs them today: one generate() per job, one after another.
    t = time.perf_counter()
    for i in range(n):
        pipe.generate(req(100 + i))
    _sync(dev)
    queued = time.perf_counter() - t
    peak = _peak(dev)
    flops = None
    if count_flops:
        with FlopCounterMode(display=False) as fc:
            pipe.generate(req(2))
        flops = fc.get_total_flops()
    # The PNG encode the worker then does on its CPU thread, for the record.
    from worker.encode import encode_images

    t = time.perf_counter()
    encode_images(g.images, 25 * 1024 * 1024, "x", g.seeds)
    png_s = time.perf_counter() - t
    del pipe, g
    wp._loaded.clear()
    _free()
    return {"load_s": load_s, "one_s": one, "queued_s": queued, "n": n, "peak": peak, "flops": flops,
            "split": split, "png_s": png_s, "dev": dev}


def run_vanilla(base_dir: Path, refiner_dir: Path, dev: torch.device, steps: int, n: int, warm_steps: int) -> dict:
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from worker.pipeline import _DTYPE_KW

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    t = time.perf_counter()
    base = StableDiffusionXLPipeline.from_pretrained(str(base_dir), **{_DTYPE_KW: dtype}).to(dev)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        str(refiner_dir), text_encoder_2=base.text_encoder_2, vae=base.vae, **{_DTYPE_KW: dtype}).to(dev)
    load_s = time.perf_counter() - t
    pipes = {"base": base, "refiner": refiner}
    del base, refiner
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)

    def make(count: int, st: int, seed: int):
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]
        latents = pipes["base"](prompt=PROMPT, num_inference_steps=st, denoising_end=0.8, guidance_scale=7.0,
                       num_images_per_prompt=count, generator=gens, output_type="latent").images
        return pipes["refiner"](prompt=PROMPT, num_inference_steps=st, denoising_start=0.8, guidance_scale=7.0,
                       num_images_per_prompt=count, generator=gens, image=latents).images

    if warm_steps:
        make(1, warm_steps, 0)
    _reset_peak(dev)
    _sync(dev)
    t = time.perf_counter()
    make(1, steps, 1)
    _sync(dev)
    one = time.perf_counter() - t
    peak_one = _peak(dev)
    _reset_peak(dev)
    t = time.perf_counter()
    make(n, steps, 100)
    _sync(dev)
    batch = time.perf_counter() - t
    peak_batch = _peak(dev)
    pipes.clear()
    _free()
    return {"load_s": load_s, "one_s": one, "batch_s": batch, "n": n, "peak_one": peak_one, "peak_batch": peak_batch}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-queue", type=int, default=4, help="waiting jobs to simulate (1 image each)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="dense bf16 peak to compare with (H100/H200 SXM: 989)")
    ap.add_argument("--model-dir", default=None,
                    help="keep the random-weight pipelines here (reused when base/ and refiner/ exist)")
    ap.add_argument("--no-flops", action="store_true", help="skip the FlopCounterMode pass over a real image")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, the tiny model (worker.tiny), few steps: the same code, in well under a minute")
    args = ap.parse_args()
    _quiet()
    if args.smoke:
        args.device, args.steps = "cpu", min(args.steps, 3)
        args.batch_queue = min(args.batch_queue, 2)
    warm_steps = 0 if args.smoke else 5  # the smoke run checks the code path; no warm-up needed
    t_start = time.monotonic()
    torch.set_grad_enabled(False)

    load = "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    dev_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") and \
        torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {dev_name}; torch {torch.__version__}; "
          f"{'tiny model (smoke)' if args.smoke else 'SDXL 1.0 base + refiner, full size, random weights'}; "
          f"1024x1024, {args.steps} steps, split 0.8, CFG 7, {'fp32' if args.device == 'cpu' else 'bf16'}; {load}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --smoke (CPU, tiny model) or on a GPU box")
        return 2

    # The full-size architecture, on meta tensors: parameter counts against the published ones, and the
    # FLOP count of one image. Needs no GPU and no memory, so it runs in the smoke test too.
    t = time.perf_counter()
    mf = meta_flops(args.steps if not args.smoke else 40, 0.8)
    params = mf.pop("_params")
    print(f"full-size architecture (meta tensors, {time.perf_counter() - t:.1f} s): parameters "
          + ", ".join(f"{k} {v / 1e6:,.1f}M{'' if v == PUBLISHED_PARAMS[k] else ' (published: ' + str(PUBLISHED_PARAMS[k]) + ')'}"
                      for k, v in params.items()))
    meta_total = sum(mf.values())
    print(f"FLOPs per 1024x1024 image, {'40' if args.smoke else args.steps} steps, CFG (FlopCounterMode on meta tensors): "
          f"{meta_total / 1e12:.1f} TFLOP (expected ~{EXPECTED_TFLOP:g}) = "
          + " + ".join(f"{k} {v / 1e12:.1f}" for k, v in mf.items()))

    tmp = None
    if args.model_dir:
        model_dir = Path(args.model_dir)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="dreambot-sdxl-"))
        model_dir = tmp
    try:
        if not ((model_dir / "base" / "model_index.json").exists() and (model_dir / "refiner" / "model_index.json").exists()):
            t = time.perf_counter()
            if args.smoke:
                from worker.tiny import make_tiny_model

                make_tiny_model(model_dir)
            else:
                save_full_model(model_dir, args.device, torch.bfloat16)
            print(f"pipelines written to {model_dir} in {time.perf_counter() - t:.1f} s")
        n = args.batch_queue
        w = run_worker_path(model_dir / "base", model_dir / "refiner", args.device, args.steps, n, warm_steps,
                            count_flops=not args.no_flops)
        v = run_vanilla(model_dir / "base", model_dir / "refiner", w["dev"], args.steps, n, warm_steps)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    flops = w["flops"] if w["flops"] else (None if args.smoke else meta_total)
    print(f"loaded: worker path {w['load_s']:.1f} s, vanilla {v['load_s']:.1f} s; base/refiner steps run by the "
          f"worker: {w['split'][0]}/{w['split'][1]}")
    if w["flops"]:
        print(f"FLOPs per image, counted over one real image of the worker path: {w['flops'] / 1e12:.3f} TFLOP"
              + ("" if args.smoke else f" (expected ~{EXPECTED_TFLOP:g})"))

    def row(name: str, images: int, seconds: float, peak: str) -> None:
        spi = seconds / images
        tf = f"{flops / spi / 1e12:8.1f} {100 * flops / spi / 1e12 / args.peak_tflops:6.1f}%" if flops else f"{'-':>8} {'-':>7}"
        print(f"{name:<40} {images:>6} {spi:>9.3f} {60 / spi:>10.2f} {tf} {peak:>14}")

    print()
    print(f"{'path':<40} {'images':>6} {'s/image':>9} {'images/min':>10} {'TFLOP/s':>8} {'of peak':>7} {'peak memory':>14}")
    row("worker (DreamPipeline), 1 job", 1, w["one_s"], w["peak"])
    row(f"worker, {n} queued jobs, one at a time", n, w["queued_s"], w["peak"])
    row("vanilla diffusers, 1 image", 1, v["one_s"], v["peak_one"])
    row(f"vanilla diffusers, batch of {n}", n, v["batch_s"], v["peak_batch"])
    print(f"(peak of {args.peak_tflops:g} TFLOP/s dense bf16; "
          f"{'FLOPs of the tiny model' if args.smoke else 'FLOPs of the full model'} per image)")
    if args.smoke:
        print("(smoke: the tiny model on a CPU, no warm-up: these speeds only show that the code path runs)")
    ratio = (n / w["queued_s"]) / (1 / w["one_s"])
    vratio = (n / v["batch_s"]) / (1 / v["one_s"])
    print(f"worker throughput with {n} jobs queued vs 1 job: {ratio:.2f}x   target >= {TARGET_BATCH_RATIO:.1f}x "
          f"(the worker does not batch yet; vanilla diffusers batching {n}: {vratio:.2f}x)")
    print(f"worker vs vanilla, 1 image: {v['one_s'] / w['one_s']:.2f}x the vanilla speed")
    print(f"PNG encode of the worker's image on this host's CPU: {w['png_s']:.3f} s (on the worker thread, GPU idle)")
    print(f"total wall time {time.monotonic() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
