"""The worker's speed options for the UNets and the VAE (DREAMBOT_FUSE_QKV, DREAMBOT_CHANNELS_LAST,
DREAMBOT_COMPILE), applied in place to a loaded DreamPipeline."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from dreamcore.job import DreamRequest

if TYPE_CHECKING:  # pipeline.py imports this module to apply the options at load
    from .pipeline import DreamPipeline

log = logging.getLogger("dreambot.worker")


def denoisers(pipe: DreamPipeline) -> dict[str, torch.nn.Module]:
    """The UNets and the VAE, each once: the refiner's VAE is the base's object, so it is not listed twice
    (a second fuse would redo the work and allocate its fused weights again for nothing)."""
    named = {"base UNet": pipe.base.unet, "refiner UNet": pipe.refiner.unet, "VAE": pipe.base.vae}
    if pipe.refiner.vae is not pipe.base.vae:
        named["refiner VAE"] = pipe.refiner.vae
    return named

def speed_up(pipe: DreamPipeline, *, fuse_qkv: bool, channels_last: bool) -> None:
    """The speed options, in place on the loaded modules (DreamPipeline.load says what each does)."""
    modules = denoisers(pipe)
    if fuse_qkv:
        for name, module in modules.items():
            fuse = getattr(module, "fuse_qkv_projections", None)
            if fuse is None:
                log.info("fuse_qkv skipped", extra={"module": name, "reason": "no fuse_qkv_projections()"})
                continue
            try:
                # Concatenates the projections' weights into to_qkv / to_kv and switches the module to
                # FusedAttnProcessor2_0. diffusers keeps the original to_q/k/v (for unfusing), so those
                # weights are held twice: for SDXL's UNets, some extra GPU memory, not speed.
                fuse()
            except ValueError as err:  # e.g. "not supported for models having added KV projections"
                log.info("fuse_qkv skipped", extra={"module": name, "reason": str(err)})
    if channels_last:
        for module in modules.values():
            module.to(memory_format=torch.channels_last)

def compile_unets(pipe: DreamPipeline) -> None:
    """torch.compile both UNets and run one small generation so the first member's job doesn't pay for it.

    Off by default (DREAMBOT_COMPILE): on a GPU, max-autotune spends minutes benchmarking kernels, and
    with dynamic=False every new input shape (batch size, prompt chunk count, image size) compiles
    again, each again for minutes, the first time a job of that shape comes; past dynamo's recompile
    limit (8 per function) a shape silently runs uncompiled. Inductor's caches make later starts cheap:
    point TORCHINDUCTOR_CACHE_DIR at a volume that outlives the container.
    """
    cuda = pipe.device.type == "cuda"
    # No CUDA graphs: each batch shape would hold its own graph memory pool for little gain, the
    # kernels of a 1024px UNet pass being long enough that launch overhead is small.
    mode = "max-autotune-no-cudagraphs" if cuda else None
    for stage in (pipe.base, pipe.refiner):
        stage.unet.compile(mode=mode, dynamic=False)  # in place: the pipelines keep the same module
    # Warm-up: SDXL's native size at 2 steps (base 1 + refiner 1), one image with guidance (a UNet batch
    # of 2), the shape of the most common job. On a CPU (tests, the tiny model) a 64x64 image only
    # proves the compiled graphs run.
    side = pipe.base.default_sample_size * pipe.base.vae_scale_factor if cuda else 64
    t0 = time.perf_counter()
    with torch.inference_mode():
        warm = pipe.prepare(DreamRequest(prompt="warm-up", seed=0, steps=2, split=0.5, guidance=7.0))
        pipe._denoise([warm], [0], side, side, None)
    log.info("UNets compiled", extra={"seconds": round(time.perf_counter() - t0, 2),
                                       "mode": mode or "default", "warm_up": f"{side}x{side}"})
