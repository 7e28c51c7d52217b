"""What a model setting names: a local folder or a hub id, the weights variant preferred, and the error that
names the setting at fault. No torch here: `dreambot fetch-models` needs these and starts in a moment."""

from __future__ import annotations

import re
from pathlib import Path

FP16_VARIANT = "fp16"  # the published half-precision files: half the download and disk of the plain ones
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(RuntimeError):
    """The weights a setting points at can't be loaded; the message names the setting and its value."""

    def __init__(self, setting: str, value: str, reason: str):
        self.setting = setting
        self.value = value
        super().__init__(f"{setting}={value}: {reason}")


def hub_id_or_folder(setting: str, value: str) -> str:
    """"folder" for a local folder (a missing file there must never turn into a hub download attempt), "hub"
    for a hub id (resolved through the HF cache, honouring HF_HUB_OFFLINE); ModelLoadError for neither."""
    if Path(value).expanduser().is_dir():
        return "folder"
    if _HUB_ID.match(value) and not value.startswith((".", "~")):
        return "hub"
    raise ModelLoadError(setting, value, "no model found there (not a folder, and not a hub id like org/name)")


# A LoRA adapter (worker/adapters.py) is one file: these are the names looked for in a folder, diffusers' own
# (save_lora_weights) first, then SDXL-Lightning's 4-step LoRA as the hub publishes it.
ADAPTER_FILES = ("pytorch_lora_weights.safetensors", "sdxl_lightning_4step_lora.safetensors")
ADAPTER_OFF = "off"
_HUB_FILE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)/(?P<file>[\w.-]+(?:/[\w.-]+)*\.safetensors)$")


def adapter_source(setting: str, value: str) -> tuple[str, str, str]:
    """Where an adapter setting points: ("off", "", "") for off, ("file", path, "") for a local .safetensors
    file or a folder holding one of ADAPTER_FILES, ("hub", repo, file) for "owner/repo/file.safetensors" (one
    file of a hub repo, read from the HF cache); ModelLoadError for anything else."""
    if value == ADAPTER_OFF:
        return ADAPTER_OFF, "", ""
    path = Path(value).expanduser()
    if path.is_dir():
        for name in ADAPTER_FILES:
            if (path / name).is_file():
                return "file", str(path / name), ""
        raise ModelLoadError(setting, value, f"a folder without {' or '.join(ADAPTER_FILES)}")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelLoadError(setting, value, "not a .safetensors file")
        return "file", str(path), ""
    hub = _HUB_FILE.match(value)
    if hub and not value.startswith((".", "~")):
        return "hub", hub["repo"], hub["file"]
    raise ModelLoadError(setting, value, "no adapter found there (not a .safetensors file or a folder holding one, "
                         "and not a hub file like owner/repo/file.safetensors); off runs no turbo")
