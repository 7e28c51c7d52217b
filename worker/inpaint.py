"""Edits: Zoom Out, Pan, Make Square and Vary (Region), painted by SDXL inpainting over the modules the worker
already holds (diffusers' StableDiffusionXLInpaintPipeline built from the base's components, and from the
refiner's for the last steps: no second copy of any weight).

The canvas (dreamcore.canvas) is about one megapixel. What is kept is the source's own pixels, pasted back
exactly over what the models drew; what is painted starts from noise (strength 1), the base running the
request's share of the steps and the refiner the rest through `denoising_end` / `denoising_start`, as
diffusers' SDXL guide shows for inpainting. The base and refiner UNets are text-to-image UNets (4 input
channels): diffusers keeps the unmasked latents on the source's own, noised to each step, so what is
painted is drawn with the whole picture in view.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from diffusers import StableDiffusionXLInpaintPipeline
from PIL import Image, ImageDraw, ImageFilter

from dreamcore.canvas import Canvas, plan
from dreamcore.job import DreamRequest, Edit
from dreamcore.styles import load_styles

from .img2img import TwoStages
from .pipeline import DECODED, DreamPipeline, Generation, StepEvent, checked_images
from .prompts import encode_prompts


def layout(source: Image.Image, canvas: Canvas) -> tuple[Image.Image, Image.Image]:
    """The canvas picture (the source on it, the new border filled with the source stretched and blurred) and
    the mask of what is painted (white)."""
    x0, y0, x1, y1 = canvas.box
    placed = source.convert("RGB").resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
    if canvas.cells:  # a Region: the whole source, the chosen cells painted
        mask = Image.new("L", canvas.size, 0)
        draw = ImageDraw.Draw(mask)
        for box in canvas.cell_boxes():
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
        return placed, mask
    picture = placed.resize(canvas.size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(24))
    picture.paste(placed, (x0, y0))
    mask = Image.new("L", canvas.size, 255)
    mask.paste(0, (x0, y0, x1, y1))
    return picture, mask


@torch.inference_mode()
def edit(
    pipe: DreamPipeline,
    req: DreamRequest,
    source: Image.Image,
    what: Edit,
    on_step: Callable[[StepEvent], None] | None = None,
) -> Generation:
    """`req.count` images of `what` done to `source`, one seeded generator per image."""
    t_start = time.perf_counter()
    # 1. The canvas, the picture on it and the mask of what is painted.
    canvas = plan(what, *source.size)
    picture, mask = layout(source, canvas)
    width, height = canvas.size
    steps = req.steps
    base_steps, refiner_steps, fraction = pipe.split_steps(steps, req.base_steps)
    handover = fraction is not None and pipe.refiner is not None
    if not handover:
        base_steps, refiner_steps = steps, 0
    prompt, negative = load_styles()[req.style].apply(req.prompt, req.negative_prompt)
    encoded = encode_prompts(pipe.base, pipe.refiner if handover else None, prompt, negative)
    pipe.sync()
    t_encoded = time.perf_counter()

    # 2. Step callbacks: progress counts over both stages.
    generators = [torch.Generator("cpu").manual_seed(s) for s in req.seeds]
    stages = TwoStages(pipe, req.count, base_steps + refiner_steps, on_step)

    common = dict(mask_image=[mask] * req.count, width=width, height=height, num_inference_steps=steps,
                  guidance_scale=req.guidance, generator=generators,
                  callback_on_step_end_tensor_inputs=["latents"])
    # 3. The base paints from noise (strength 1) to the cut, the source kept under the mask's black. A
    #    4-channel UNet never reads the masked picture's latents (only 9-channel inpainting UNets take them),
    #    so zeros stand in for them: diffusers would otherwise run one more VAE encode of the whole canvas.
    unused = torch.zeros(req.count, 4, height // 8, width // 8, device=pipe.device,
                         dtype=next(pipe.base.unet.parameters()).dtype)
    out = pipe.reused(StableDiffusionXLInpaintPipeline)(
        **encoded.base.pipeline_kwargs(req.count), **common, image=[picture] * req.count, strength=1.0,
        masked_image_latents=unused,
        denoising_end=fraction if handover else None, output_type="latent" if handover else DECODED,
        callback_on_step_end=stages.callback("base", base_steps),
    ).images
    pipe.sync()
    t_base = time.perf_counter()
    # 4. The refiner finishes from the base's latents.
    if handover:
        out = pipe.reused(StableDiffusionXLInpaintPipeline, "refiner")(
            **encoded.refiner.pipeline_kwargs(req.count), **common, image=out, denoising_start=fraction,
            output_type=DECODED, callback_on_step_end=stages.callback("refiner", refiner_steps),
        ).images
        pipe.sync()
    t_last = stages.last_step.at
    # 5. What is kept is the source's own pixels: the models' version of it is dropped.
    decoded = checked_images(out)
    keep = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    kept = np.asarray(picture, dtype=np.float32)
    images = []
    for im, _ in decoded:
        drawn = np.asarray(im.convert("RGB").resize(canvas.size), dtype=np.float32)
        images.append(Image.fromarray(np.clip(np.rint(drawn * keep + kept * (1 - keep)), 0, 255).astype(np.uint8)))
    t_end = time.perf_counter()
    timings = {"encode_s": t_encoded - t_start, "base_s": (t_base if handover else t_last) - t_encoded,
               "decode_s": t_end - t_last, "total_s": t_end - t_start}
    if handover:
        timings["refiner_s"] = t_last - t_base
    return Generation(
        images=images, seeds=req.seeds, width=width, height=height, base_steps=stages.counted["base"],
        refiner_steps=stages.counted["refiner"], timings=timings, prompt_note=encoded.note,
        nan_detected=any(bad for _, bad in decoded),
    )
