"""Which weights the worker loads, and in what precision: the device, the dtype for it, and each pipeline's
`from_pretrained` (a hub id or a local folder, the published fp16 files first), with every failure turned
into a message that names the setting at fault.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .sources import FP16_VARIANT, ModelLoadError, hub_id_or_folder

log = logging.getLogger("dreambot.worker")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "DREAMBOT_DEVICE", device, "CUDA is not available on this machine (torch sees no GPU)"
        )
    return dev


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# A base UNet past this many parameters is a full-size SDXL (2.6 B); on a CPU it is loaded in bf16, since
# base + refiner in fp32 need ~23 GB of RAM. The tiny test model has well under a million.
FULL_SIZE_PARAMS = 1_000_000_000


def choose_dtype(setting: str, dev: torch.device, capability: tuple[int, int] | None = None,
                 full_size: bool = False) -> tuple[torch.dtype, str]:
    """(the weights' dtype, why) for DREAMBOT_DTYPE=`setting` on `dev`. auto: bf16 on a GPU that runs it fast
    (compute capability 8.0 and up: A100, L4, H100, RTX 30xx/40xx), fp16 on older ones (T4, V100), whose
    SDXL VAE then decodes in fp32 (its config's force_upcast, honoured by diffusers' own decode); on a CPU
    fp32, or bf16 for a full-size model."""
    if setting != "auto":
        return DTYPES[setting], f"DREAMBOT_DTYPE={setting}"
    if dev.type == "cuda":
        major, minor = capability or torch.cuda.get_device_capability(dev)
        if major >= 8:
            return torch.bfloat16, f"bf16: compute capability {major}.{minor} runs bf16 at full speed"
        return torch.float16, (f"fp16: compute capability {major}.{minor} has no fast bf16; the VAE decodes "
                               "in fp32 (force_upcast)")
    if full_size:
        return torch.bfloat16, "bf16 on the CPU: a full-size base + refiner would need ~23 GB in fp32"
    return torch.float32, "fp32 on the CPU"


def dtype_for(setting: str, dev: torch.device, base: str) -> tuple[torch.dtype, str]:
    """choose_dtype for the model at `base`: whether it is full-size is read from its config only where it
    matters (auto on a CPU)."""
    full = dev.type == "cpu" and setting == "auto" and is_full_size(base)
    return choose_dtype(setting, dev, full_size=full)


def is_full_size(base: str) -> bool:
    """Whether the base model's UNet, as its config describes it, is full-size (counted on meta tensors: no
    weights are read). False when the config can't be read: the load reports that itself."""
    from diffusers import UNet2DConditionModel

    path = Path(base).expanduser()
    try:
        config = UNet2DConditionModel.load_config(str(path) if path.is_dir() else base, subfolder="unet",
                                                  local_files_only=path.is_dir())
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
        return sum(p.numel() for p in unet.parameters()) > FULL_SIZE_PARAMS
    except Exception:  # noqa: BLE001 - a missing or odd config is _from_pretrained's to report
        return False


def _from_pretrained(pipeline_cls, setting: str, value: str, **kwargs):
    """`pipeline_cls.from_pretrained(value)`, with every failure turned into a ModelLoadError naming the setting."""
    local = hub_id_or_folder(setting, value) == "folder"
    source = str(Path(value).expanduser()) if local else value
    try:
        # The published fp16 files first: half the download and disk of the full-precision ones, and the
        # same weights at the precision a GPU runs them in. A folder or repo without them loads its plain files.
        try:
            pipe = pipeline_cls.from_pretrained(source, local_files_only=local, variant=FP16_VARIANT, **kwargs)
            log.info("weights loaded", extra={"setting": setting, "variant": FP16_VARIANT})
            return pipe
        except ValueError as err:
            if "variant" not in str(err):
                raise
            log.info("no fp16 variant; loading the plain weights", extra={"setting": setting})
        return pipeline_cls.from_pretrained(source, local_files_only=local, **kwargs)
    # Broad on purpose: diffusers raises OSError, ValueError, KeyError, ... depending on what is off.
    except Exception as err:
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        if local:
            raise ModelLoadError(setting, value, f"no model found there ({reason})") from err
        offline = (
            " (HF_HUB_OFFLINE is set, so it must already be in the cache)"
            if os.environ.get("HF_HUB_OFFLINE")
            else ""
        )
        raise ModelLoadError(
            setting, value, f"could not load it from the hub or its cache{offline} ({reason})"
        ) from err


def load_pipelines(base: str, refiner: str, dtype: torch.dtype):
    """(base, refiner) pipelines in `dtype`, on the CPU (where from_pretrained puts them; the caller places
    them). The refiner reuses the base's text_encoder_2 and VAE."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base_pipe = _from_pretrained(StableDiffusionXLPipeline, "DREAMBOT_BASE_MODEL", base, dtype=dtype)
    if base_pipe.text_encoder is None or base_pipe.text_encoder_2 is None:
        raise ModelLoadError(
            "DREAMBOT_BASE_MODEL", base, "that is not an SDXL base model (it lacks text_encoder; a refiner?)"
        )
    # The refiner uses the same OpenCLIP text encoder and VAE as the base: pass the base's objects so they are
    # neither read from disk nor held in memory twice (about 1.5 GB saved in bf16). diffusers also leaves
    # their files out of a hub download (fetch.py downloads only what this loads).
    refiner_pipe = _from_pretrained(
        StableDiffusionXLImg2ImgPipeline,
        "DREAMBOT_REFINER_MODEL",
        refiner,
        dtype=dtype,
        text_encoder_2=base_pipe.text_encoder_2,
        vae=base_pipe.vae,
    )
    return base_pipe, refiner_pipe
