"""Variations, upscales and dreams from a member's picture: img2img on the models a DreamPipeline already
holds. A variation is the base in img2img at the button's strength; a picture job the base in img2img from
the member's picture, the refiner on the last steps as for a dream; an upscale is a Lanczos 2x redrawn by
the refiner in img2img, tile by tile, so its GPU memory is that of one tile at any output size."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from PIL import Image

from dreamcore.cost import img2img_steps, tile_spans  # noqa: F401  (tile_spans: the tests read it here too)
from dreamcore.job import DreamRequest
from dreamcore.styles import load_styles

from . import adapters
from .pipeline import DECODED, DreamPipeline, Generation, LastStep, StepEvent, checked_images
from .prompts import encode_prompts


@torch.inference_mode()
def vary(
    pipe: DreamPipeline,
    req: DreamRequest,
    source: Image.Image,
    strength: float,
    on_step: Callable[[StepEvent], None] | None = None,
    size: tuple[int, int] | None = None,
) -> Generation:
    """`req.count` variations of `source`: the base in img2img at `strength`, one seeded generator per
    image (image i is what seed req.seeds[i] gives alone). The source is brought to the request's size
    (an upscaled source is scaled back down), so a variation costs what a dream of that size costs.

    A turbo variation (req.adapter) runs the adapter and its scheduler on this call alone: img2img_steps(4, s)
    asks for the 4-step schedule the adapter was distilled on and runs its last int(4 s) steps (two at 0.55:
    timesteps 499 and 249), which is also what dreamcore.cost charges."""
    adapters.check(pipe, req)
    t_start = time.perf_counter()
    width, height = size or req.size
    image = source.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    prompt, negative = load_styles()[req.style].apply(req.prompt, req.negative_prompt)
    encoded = encode_prompts(pipe.base, None, prompt, negative)
    pipe.sync()
    t_encoded = time.perf_counter()

    n_steps, run_steps = img2img_steps(req.steps, strength)
    generators = [torch.Generator("cpu").manual_seed(s) for s in req.seeds]
    counted = [0]

    last_step = LastStep(pipe)

    def on_step_end(_pipe, i: int, t, tensors: dict) -> dict:
        counted[0] += 1
        if on_step is not None:
            on_step(StepEvent("base", counted[0], run_steps, counted[0], run_steps, tensors["latents"],
                              rows={0: slice(0, req.count)}))
        last_step.mark(counted[0] == run_steps)
        return {}

    stage = pipe.reused(StableDiffusionXLImg2ImgPipeline)
    with adapters.running(pipe, stage, req.adapter):
        out = stage(
            **encoded.base.pipeline_kwargs(req.count),
            image=[image] * req.count,
            strength=strength,
            num_inference_steps=n_steps,
            guidance_scale=req.guidance,
            generator=generators,
            output_type=DECODED,
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
        ).images
    pipe.sync()
    t_end = time.perf_counter()
    t_base = last_step.at
    decoded = checked_images(out)
    images, nan = [im for im, _ in decoded], any(bad for _, bad in decoded)
    return Generation(
        images=images, seeds=req.seeds, width=width, height=height, base_steps=counted[0], refiner_steps=0,
        timings={"encode_s": t_encoded - t_start, "base_s": t_base - t_encoded, "decode_s": t_end - t_base,
                 "total_s": t_end - t_start},
        prompt_note=encoded.note, nan_detected=nan,
    )

class TwoStages:
    """The step callbacks of a base call followed by a refiner call: progress counted over both stages, the
    last step's end marked (what comes after it is the decode)."""

    def __init__(self, pipe: DreamPipeline, count: int, total: int, on_step: Callable[[StepEvent], None] | None):
        self.count, self.total, self.on_step = count, total, on_step
        self.counted = {"base": 0, "refiner": 0}
        self.last_step = LastStep(pipe)

    def callback(self, stage: str, stage_total: int):
        def on_step_end(_pipe, i: int, t, tensors: dict) -> dict:
            self.counted[stage] += 1
            done = self.counted["base"] + self.counted["refiner"]
            if self.on_step is not None:
                self.on_step(StepEvent(stage, self.counted[stage], stage_total, done, self.total, tensors["latents"],
                                       rows={0: slice(0, self.count)}))
            self.last_step.mark(done == self.total)
            return {}
        return on_step_end


@torch.inference_mode()
def from_picture(
    pipe: DreamPipeline,
    req: DreamRequest,
    source: Image.Image,
    strength: float,
    on_step: Callable[[StepEvent], None] | None = None,
) -> Generation:
    """`req.count` images from a member's picture, as a dream is made from noise: the base in img2img at
    `strength`, handing over to the refiner for the last steps at the request's split (diffusers'
    `denoising_end` / `denoising_start`, the ensemble-of-experts recipe), one seeded generator per image.

    img2img runs the last `strength` share of an n-step schedule; the base keeps the part of it above the
    split's cut and the refiner the rest. A strength so low that every step it runs falls below the cut
    runs on the refiner alone, in img2img from the picture (the base would have nothing to do)."""
    t_start = time.perf_counter()
    width, height = req.size
    image = source.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    n_steps, run_steps = img2img_steps(req.steps, strength)
    # 1. Who runs which steps: the base indices [first, cut), the refiner [cut, n) of the n-step schedule.
    base_share, _, fraction = pipe.split_steps(n_steps, round(n_steps * req.split))
    first = n_steps - run_steps
    handover = fraction is not None and pipe.refiner is not None
    base_run = max(0, base_share - first) if handover else run_steps
    refiner_run = run_steps - base_run
    prompt, negative = load_styles()[req.style].apply(req.prompt, req.negative_prompt)
    encoded = encode_prompts(pipe.base, pipe.refiner if refiner_run else None, prompt, negative)
    pipe.sync()
    t_encoded = time.perf_counter()

    # 2. Step callbacks: progress counts over both stages.
    generators = [torch.Generator("cpu").manual_seed(s) for s in req.seeds]
    stages = TwoStages(pipe, req.count, run_steps, on_step)

    # 3. The base from the picture, to the cut (latents out when the refiner follows).
    t_base = t_encoded
    latents = None
    if base_run:
        out = pipe.reused(StableDiffusionXLImg2ImgPipeline)(
            **encoded.base.pipeline_kwargs(req.count),
            image=[image] * req.count,
            strength=strength,
            num_inference_steps=n_steps,
            denoising_end=fraction if refiner_run else None,
            guidance_scale=req.guidance,
            generator=generators,
            output_type="latent" if refiner_run else DECODED,
            callback_on_step_end=stages.callback("base", base_run),
            callback_on_step_end_tensor_inputs=["latents"],
        ).images
        pipe.sync()
        t_base = time.perf_counter()
        if refiner_run:
            latents = out

    # 4. The refiner: from the base's latents at the cut, or alone from the picture.
    if refiner_run:
        start = {"image": latents, "denoising_start": fraction} if latents is not None else \
            {"image": [image] * req.count, "strength": strength}
        out = pipe.refiner(
            **encoded.refiner.pipeline_kwargs(req.count),
            **start,
            num_inference_steps=n_steps,
            guidance_scale=req.guidance,
            generator=generators,
            output_type=DECODED,
            callback_on_step_end=stages.callback("refiner", refiner_run),
            callback_on_step_end_tensor_inputs=["latents"],
        ).images
        pipe.sync()
    t_end = time.perf_counter()
    t_last = stages.last_step.at
    decoded = checked_images(out)
    images, nan = [im for im, _ in decoded], any(bad for _, bad in decoded)
    timings = {"encode_s": t_encoded - t_start, "base_s": t_base - t_encoded, "decode_s": t_end - t_last,
               "total_s": t_end - t_start}
    if refiner_run:
        timings["refiner_s"] = t_last - t_base
    else:
        timings["base_s"] = t_last - t_encoded
    return Generation(
        images=images, seeds=req.seeds, width=width, height=height, base_steps=stages.counted["base"],
        refiner_steps=stages.counted["refiner"], timings=timings, prompt_note=encoded.note, nan_detected=nan,
    )


@torch.inference_mode()
def upscale(
    pipe: DreamPipeline,
    req: DreamRequest,
    source: Image.Image,
    strength: float,
    on_step: Callable[[StepEvent], None] | None = None,
    tile: int = 1024,
    overlap: int = 128,
) -> Generation:
    """`source` at exactly twice its size: a Lanczos 2x, then the refiner in img2img at a low `strength`
    redraws the detail, one tile (at most `tile` pixels a side) at a time, so GPU memory is that of one
    tile at any output size. Neighbouring tiles share at least `overlap` pixels, blended with linear
    ramps that add up to one (no seams, no dark bands). One generator, seeded with req.seed, runs
    through the tiles in order: the same seed gives the same image."""
    t_start = time.perf_counter()
    image = source.convert("RGB")
    width, height = image.width * 2, image.height * 2
    big = image.resize((width, height), Image.Resampling.LANCZOS)
    prompt, negative = load_styles()[req.style].apply(req.prompt, req.negative_prompt)
    encoded = encode_prompts(pipe.base, pipe.refiner, prompt, negative)
    pipe.sync()
    t_encoded = time.perf_counter()

    xs, ys = tile_spans(width, tile, overlap), tile_spans(height, tile, overlap)
    boxes = [(x0, y0, x1, y1) for y0, y1 in ys for x0, x1 in xs]
    n_steps, run_steps = img2img_steps(req.steps, strength)
    total = run_steps * len(boxes)
    generator = torch.Generator("cpu").manual_seed(req.seed)
    canvas = np.zeros((height, width, 3), dtype=np.float32)
    weight = np.zeros((height, width, 1), dtype=np.float32)
    counted = [0]
    nan = False
    t_refine = t_decode = 0.0

    last_step = LastStep(pipe)

    def on_step_end(_pipe, i: int, t, tensors: dict) -> dict:
        counted[0] += 1
        if on_step is not None:
            on_step(StepEvent("refiner", counted[0], total, counted[0], total, tensors["latents"],
                              rows={0: slice(0, 1)}))
        last_step.mark(counted[0] % run_steps == 0)  # a tile's last step
        return {}

    for x0, y0, x1, y1 in boxes:
        t0 = time.perf_counter()
        out = pipe.refiner(
            **encoded.refiner.pipeline_kwargs(1),
            image=big.crop((x0, y0, x1, y1)),
            strength=strength,
            num_inference_steps=n_steps,
            guidance_scale=req.guidance,
            generator=[generator],
            output_type=DECODED,
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
        ).images
        pipe.sync()
        t1 = last_step.at
        ((piece, tile_nan),) = checked_images(out)
        nan = nan or tile_nan
        if piece.size != (x1 - x0, y1 - y0):  # a side that is not a multiple of 8
            piece = piece.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
        w = np.outer(feather((y0, y1), ys), feather((x0, x1), xs))[..., None]
        canvas[y0:y1, x0:x1] += np.asarray(piece, dtype=np.float32) * w
        weight[y0:y1, x0:x1] += w
        t_refine += t1 - t0
        t_decode += time.perf_counter() - t1
    out = Image.fromarray(np.clip(np.rint(canvas / weight), 0, 255).astype(np.uint8), "RGB")
    t_end = time.perf_counter()
    tw, th = xs[0][1] - xs[0][0], ys[0][1] - ys[0][0]
    note = f"upscaled 2x in {len(boxes)} tile{'s' * (len(boxes) > 1)} of {tw}x{th}"
    return Generation(
        images=[out], seeds=[req.seed], width=width, height=height, base_steps=0,
        refiner_steps=run_steps,
        timings={"encode_s": t_encoded - t_start, "refiner_s": t_refine, "decode_s": t_decode,
                 "total_s": t_end - t_start},
        prompt_note="; ".join(n for n in (encoded.note, note) if n), nan_detected=nan,
    )


def feather(span: tuple[int, int], spans: list[tuple[int, int]]) -> np.ndarray:
    """Blend weights along one axis for `span`: ramps up over the overlap with the span before it and down
    over the overlap with the one after, flat elsewhere (and at the image's edges). Two overlapping
    spans' ramps cover the same pixels in opposite directions, so the weights add up to exactly one."""
    start, end = span
    k = np.arange(end - start, dtype=np.float32) + 0.5
    w = np.ones(end - start, dtype=np.float32)
    i = spans.index(span)
    if i > 0:
        ramp = spans[i - 1][1] - start
        w = np.minimum(w, k / ramp)
    if i < len(spans) - 1:
        ramp = end - spans[i + 1][0]
        w = np.minimum(w, (end - start - k) / ramp)
    return w
