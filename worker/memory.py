"""Where the weights live while the worker runs: all resident on the device, or one model at a time.

DREAMBOT_OFFLOAD picks the tier. `none` keeps base, refiner, both text encoders and the VAE on the device:
the fastest, and what a 24 GB card holds. `model` is diffusers' model CPU offload (accelerate's hooks move
each whole model to the device when its forward runs and back when the next one starts), so the device
holds only the largest model plus the working memory; a 12 GB card serves dreams that way, each paying
for moving both UNets over PCIe (roughly a second per dream on PCIe 4). `auto` measures the device's free
memory against what each tier needs and takes the fastest that fits; a device that fits neither fails at
start with both figures, rather than at the first dream with an out-of-memory error.

The weights' size is counted on the loaded modules, after fuse_qkv (which frees the unfused copies, so
fused weights take what unfused ones did); the working memory is an estimate, written out in working_bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dreamcore.ranges import IMAGES

from .weights import ModelLoadError

TIERS = ("auto", "none", "model")
GIB = 1024**3
FULL_SIZE_UNET_PARAMS = 2_567_463_684  # SDXL 1.0's base UNet


@dataclass(frozen=True)
class MemoryPlan:
    offload: str  # "none" (all resident) or "model" (diffusers' model CPU offload)
    why: str
    weights_bytes: int  # every model once
    largest: str  # the biggest model: what offload holds on the device at once
    largest_bytes: int
    batch_images: int  # the most images one denoising call may hold here (at most DREAMBOT_BATCH_IMAGES)
    working_bytes: int  # the working memory of the largest call it makes (a batch, or one dream's images)
    free_bytes: int | None  # the device's free memory when measured; None on a CPU
    # The most images one call fits on this device whatever DREAMBOT_BATCH_IMAGES says (None: no device
    # limit, a CPU). A dream of more images than this is made in parts (worker/make.py), never one call
    # that runs out of memory.
    call_images: int | None = None

    @property
    def resident_bytes(self) -> int:
        """Device memory this tier needs: weights (all, or the largest model) plus the working memory."""
        return (self.weights_bytes if self.offload == "none" else self.largest_bytes) + self.working_bytes

    def describe(self) -> str:
        parts = (f", a dream of more than {self.call_images} images made in parts"
                 if self.call_images is not None and self.call_images < IMAGES.hi else "")
        return f"offload {self.offload}, batches of up to {self.batch_images} images{parts}: {self.why}"


def module_bytes(modules: dict[str, torch.nn.Module]) -> dict[str, int]:
    """Bytes of each module's parameters and buffers, a tensor shared between modules counted once."""
    seen: set[int] = set()
    out: dict[str, int] = {}
    for name, module in modules.items():
        total = 0
        for t in (*module.parameters(), *module.buffers()):
            key = t.data_ptr() if t.device.type != "meta" else id(t)
            if key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
        out[name] = total
    return out


def working_bytes(unet: torch.nn.Module, batch_images: int) -> int:
    """Device memory a 1024 px denoising call needs beside the weights, for up to `batch_images` images.

    An estimate, scaled from full-size SDXL in 16-bit: ~3 GiB for one image with guidance (the UNet's
    activations under SDPA, and the sliced VAE decode of one 1024 px image, which runs in fp32 where the VAE
    upcasts) plus ~0.75 GiB per further image in the batch. Scaled down for a smaller UNet (the tiny test
    model needs next to nothing) and up for fp32. bench/gpu_sdxl.py measures the real peak on a GPU.
    """
    params = sum(p.numel() for p in unet.parameters())
    itemsize = next(unet.parameters()).element_size()
    scale = params / FULL_SIZE_UNET_PARAMS * itemsize / 2
    return int((3.0 + 0.75 * (max(1, batch_images) - 1)) * GIB * scale)


def free_bytes(dev: torch.device) -> int | None:
    """The device's free memory now (other processes' allocations excluded); None on a CPU."""
    if dev.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(dev)
    return int(free)


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / 1024**2:.1f} MiB"


def needs(sizes: dict[str, int], working: int) -> dict[str, int]:
    """Device memory each tier needs: all weights, or the largest model, plus the working memory."""
    return {"none": sum(sizes.values()) + working, "model": max(sizes.values()) + working}


def plan(setting: str, dev: torch.device, sizes: dict[str, int], working: Callable[[int], int], batch_images: int,
         free: int | None) -> MemoryPlan:
    """The tier for DREAMBOT_OFFLOAD=`setting` on `dev`, given each model's bytes (module_bytes), the working
    memory of a call of n images (`working(n)`), the batch the settings allow and the device's free memory.

    On a GPU, auto keeps every model resident when that fits with batches of at least one image, else takes
    model offload; either way with the largest batch (up to `batch_images`) that fits: a 20 GB card keeps all
    resident with smaller batches, a 16 GB one offloads with larger ones. Raises ModelLoadError, with the
    figures, when the chosen tier (or, for auto, either) does not fit even one image."""
    if setting not in TIERS:
        raise ModelLoadError("DREAMBOT_OFFLOAD", setting, f"must be one of {', '.join(TIERS)}")
    total = sum(sizes.values())
    largest = max(sizes, key=sizes.__getitem__)

    def made(offload: str, batch: int, why: str, call: int | None = None) -> MemoryPlan:
        # The largest call this plan makes: a batch, or one dream (up to `call` images) even with batching off.
        peak = max(batch, min(call, IMAGES.hi)) if call is not None else batch
        return MemoryPlan(offload, why, total, largest, sizes[largest], batch, working(peak), free, call)

    if free is None:  # a CPU: the weights are in RAM already, there is no device memory to save
        if setting == "model":
            return made("model", batch_images, "DREAMBOT_OFFLOAD=model on the CPU: the hooks run, and save nothing")
        return made("none", batch_images, f"the CPU holds the weights ({gib(total)}) in RAM")

    def fits(tier: str) -> int:
        """The most images (0: none) one call of this tier fits in the free memory: up to the settings'
        batch, and at least up to one dream's images, which is one call whatever the batch setting."""
        upto = max(batch_images, IMAGES.hi)
        return max((b for b in range(1, upto + 1) if needs(sizes, working(b))[tier] <= free), default=0)

    one = needs(sizes, working(1))
    sizes_said = (f"with one image, all resident needs {gib(one['none'])} ({gib(total)} of weights), model "
                  f"offload {gib(one['model'])} ({largest} {gib(sizes[largest])})")
    device_said = f"{dev} has {gib(free)} free"
    tiers = ("none", "model") if setting == "auto" else (setting,)
    for tier in tiers:
        most = fits(tier)
        if most:
            batch = min(batch_images, most)
            cut = f" (DREAMBOT_BATCH_IMAGES={batch_images} would not fit)" if batch < batch_images else ""
            if most < IMAGES.hi:
                cut += f"; a dream of more than {most} images is made {most} at a time"
            lead = "auto" if setting == "auto" else f"DREAMBOT_OFFLOAD={setting}"
            return made(tier, batch, f"{lead}; {device_said}; {sizes_said}{cut}", most)
    hint = {"none": ": use auto or model, or a bigger GPU",
            "model": ": too little even for model offload",
            "auto": ": this GPU can't run the models"}[setting]
    raise ModelLoadError("DREAMBOT_OFFLOAD", setting, f"{device_said}; {sizes_said}{hint}")


def place(pipe, offload: str, batch_images: int) -> None:
    """Move a DreamPipeline's weights to its device, or hand them to diffusers' model CPU offload (memory.plan says
    which, in `pipe.memory`; a device too small for either raises ModelLoadError). Done after the speed
    levers that change the weights (speed.before_placing), so the plan counts what is really placed."""
    sizes = module_bytes(pipe.modules_once())
    pipe.memory = plan(offload, pipe.device, sizes, lambda n: working_bytes(pipe.base.unet, n), batch_images,
                       free_bytes(pipe.device))
    if pipe.memory.offload == "model":
        # One whole model on the device at a time, moved there when its forward runs. Each pipeline
        # offloads its own models again at the end of its call (maybe_free_model_hooks), so the base's
        # UNet has left the device before the refiner's arrives; the shared text_encoder_2 and VAE carry
        # the hook of whichever pipeline ran last, which moves them just the same.
        for stage in (pipe.base, pipe.refiner):
            stage.enable_model_cpu_offload(device=pipe.device)
    else:
        for stage in (pipe.base, pipe.refiner):
            stage.to(pipe.device)
