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
