"""What each way of starting from an image costs against a dream of the same size, side by side in one run.

Three measures, each against a plain dream of 1216x832 (the source of every edit; 40 steps, split 0.8, CFG 7):

* FLOPs at full size: SDXL base + refiner built from the published configs on the meta device, each
  stage's forward counted by FlopCounterMode (no compute; bench/sdxl_full.py), times the steps each kind
  runs; plus the VAE encode of the image it starts from (a dream has none);
* what the member is charged: dreamcore.cost's units for the same job (quotas, the fair queue, ETAs);
* seconds on this CPU with the tiny model, through the worker's own functions (worker/pipeline.py,
  img2img.py, inpaint.py), median of 3 after a warm-up: the ratio only, since the tiny model's stages
  weigh differently from SDXL's.

    python bench/edits.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dreamcore import cost  # noqa: E402
from dreamcore.canvas import plan, region_cells  # noqa: E402
from dreamcore.job import Edit, make_job, make_origin, make_request  # noqa: E402

STEPS, SPLIT = 40, 0.8
EDITS = {
    "zoom out 2x": Edit(op="zoom", zoom=2.0), "zoom out 1.5x": Edit(op="zoom", zoom=1.5),
    "pan right": Edit(op="pan", direction="right"), "make square": Edit(op="square"),
    "vary (region), centre + right half": Edit(op="region", cells=region_cells(["c11", "right"])),
}


def kinds(settings) -> list[tuple[str, str, float | None, Edit | None]]:
    """(row, kind, strength, edit) for every way a job starts, at the shipped strengths."""
    return ([("dream", "dream", None, None),
             (f"/dream image, change {0.6:g}", "picture", 0.6, None),
             (f"Vary (Subtle) {settings.vary_subtle_strength:g}", "variation", settings.vary_subtle_strength, None),
             (f"V1..V4 {settings.variation_strength:g}", "variation", settings.variation_strength, None),
             (f"Vary (Strong) {settings.vary_strong_strength:g}", "variation", settings.vary_strong_strength, None)]
            + [(name, "edit", 1.0, e) for name, e in EDITS.items()])


def steps_run(kind: str, strength: float | None) -> tuple[int, int]:
    """(base steps, refiner steps) each kind runs of STEPS at SPLIT (worker/img2img.py, inpaint.py)."""
    base = round(STEPS * SPLIT)
    if kind in ("dream", "edit"):
        return base, STEPS - base
    run = cost.img2img_steps(STEPS, strength)[1]
    if kind == "variation":
        return run, 0
    first = STEPS - run  # a picture job: the base from `first` to the cut, the refiner after it
    return max(0, base - first), STEPS - max(base, first)


def full_size_flops() -> dict[str, float]:
    """Per-image FLOPs of one base step, one refiner step (CFG, 1024x1024), a VAE decode and encode."""
    from sdxl_full import build_components

    m = {"device": "meta", "dtype": torch.bfloat16}
    p = build_components("meta", torch.bfloat16)
    out = {}
    with torch.inference_mode():
        x, t = torch.zeros(2, 4, 128, 128, **m), torch.full((2,), 500, device="meta")
        for name, width, ids in (("base unet", 2048, 6), ("refiner unet", 1280, 5)):
            with FlopCounterMode(display=False) as fc:
                p[name](x, t, encoder_hidden_states=torch.zeros(2, 77, width, **m),
                        added_cond_kwargs={"text_embeds": torch.zeros(2, 1280, **m),
                                           "time_ids": torch.zeros(2, ids, **m)})
            out[name] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            p["vae"].decode(torch.zeros(1, 4, 128, 128, **m))
        out["vae decode"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            p["vae"].encode(torch.zeros(1, 3, 1024, 1024, **m))
        out["vae encode"] = fc.get_total_flops()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one timed run each, 6 steps")
    args = ap.parse_args()
    from dreamcore.settings import load_settings

    settings = load_settings()
    rows = kinds(settings)

    # 1. FLOPs at full size, and the units a member is charged.
    t0 = time.perf_counter()
    f = full_size_flops()
    print(f"full size, FlopCounterMode on meta tensors ({time.perf_counter() - t0:.0f} s): base step "
          f"{f['base unet'] / 1e12:.2f} TFLOP, refiner step {f['refiner unet'] / 1e12:.2f}, VAE decode "
          f"{f['vae decode'] / 1e12:.2f}, VAE encode {f['vae encode'] / 1e12:.2f} (1024x1024, CFG)")
    origin = make_origin(instance="bench", guild_id=1, channel_id=2, user_id=3)
    source = (1216, 832)  # a landscape dream: every edit applies (Make Square needs a source that isn't square)
    flops, units = {}, {}
    for name, kind, strength, edit in rows:
        size = plan(edit, *source).size if edit else source
        area = size[0] * size[1] / (1024 * 1024)
        b, r = steps_run(kind, strength)
        flops[name] = area * (b * f["base unet"] + r * f["refiner unet"] + f["vae decode"]
                              + (f["vae encode"] if kind != "dream" else 0.0))
        req = make_request(prompt="x", steps=STEPS, split=SPLIT, seed=1, aspect="19:13")
        src = None if kind == "dream" else {"job_id": "0123456789abcdef", "index": 0, "strength": strength,
                                             **({"edit": edit} if edit else {})}
        job = make_job(req, origin, kind=kind, source=src)
        units[name] = cost.of_job(job, settings.upscale_tile, settings.upscale_overlap, size)

    # 2. Seconds on this CPU, the tiny model, the worker's own functions.
    from worker import img2img, inpaint
    from worker.pipeline import DreamPipeline
    from worker.tiny import make_tiny_model

    steps = 6 if args.quick else 10
    repeats = 1 if args.quick else 3
    tmp = Path(tempfile.mkdtemp(prefix="dreambot-edits-"))
    make_tiny_model(tmp)
    pipe = DreamPipeline.load(str(tmp / "base"), str(tmp / "refiner"), "cpu")
    photo = Image.effect_mandelbrot(source, (-2, -1.5, 1, 1.5), 60).convert("RGB")

    def run(kind: str, strength: float | None, edit: Edit | None, seed: int):
        req = make_request(prompt="a lighthouse at dusk", steps=steps, split=SPLIT, seed=seed, aspect="19:13")
        if kind == "dream":
            return pipe.generate(req)
        if kind == "picture":
            return img2img.from_picture(pipe, req, photo, strength)
        if kind == "variation":
            return img2img.vary(pipe, req, photo, strength)
        return inpaint.edit(pipe, req, photo, edit)

    seconds = {}
    for name, kind, strength, edit in rows:
        run(kind, strength, edit, 0)  # warm-up
        times = []
        for k in range(repeats):
            t = time.perf_counter()
            run(kind, strength, edit, k + 1)
            times.append(time.perf_counter() - t)
        seconds[name] = statistics.median(times)

    # 3. The table: each row against the dream.
    print(f"\nagainst a dream of the same size ({STEPS} steps, split {SPLIT:g}); CPU column: tiny model, {steps} steps,"
          f" median of {repeats}")
    print(f"{'job':38} {'canvas':>10} {'base+ref':>9} {'TFLOP':>7} {'FLOPs':>6} {'units':>6} {'charged':>8} "
          f"{'CPU s':>6} {'CPU':>6}")
    d = "dream"
    for name, kind, strength, edit in rows:
        size = plan(edit, *source).size if edit else source
        b, r = steps_run(kind, strength)
        print(f"{name:38} {size[0]:>5}x{size[1]:<4} {b:>4}+{r:<4} {flops[name] / 1e12:7.1f} "
              f"{flops[name] / flops[d]:5.2f}x {units[name]:6.2f} {units[name] / units[d]:7.2f}x "
              f"{seconds[name]:6.2f} {seconds[name] / seconds[d]:5.2f}x")


if __name__ == "__main__":
    main()
