"""`dreambot fetch-models`: download the files the worker will load, and nothing else, before it starts.

A model repo on the hub holds far more than one worker reads: SDXL 1.0 base ships its weights in fp32 and
fp16, as safetensors and as .bin, for Flax, ONNX and OpenVINO, and as one single-file checkpoint besides
(a plain `snapshot_download` of it is tens of GB). The worker loads, for each pipeline, the components its
model_index.json names, each from its fp16 safetensors when the repo has them and from its plain ones
otherwise (weights.py), and the refiner without its text_encoder_2 and VAE, which it takes from the base.
This picks exactly those files from the repo's listing, prints how many bytes that is, and downloads them
with huggingface_hub into the cache the worker reads (HF_HOME, HF_HUB_CACHE; a gated repo takes HF_TOKEN).
The turbo adapter (DREAMBOT_TURBO_ADAPTER, "owner/repo/file.safetensors") is one file of its repo: that file
alone (SDXL-Lightning's repo also holds full UNets and checkpoints, tens of GB).

Resuming: huggingface_hub resumes a dropped connection inside a file (a ranged request, retried) and never
fetches a file that is complete in the cache, so a run that is stopped and started again fetches only what
it had not finished. (A file cut off by a killed process starts again from its beginning: huggingface_hub
gives each attempt a fresh temporary file.)
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from dreamcore.settings import Settings

from .sources import FP16_VARIANT, ModelLoadError, adapter_source, hub_id_or_folder

log = logging.getLogger("dreambot.fetch")

# Components a pipeline loads from its own folder (the refiner takes these two from the base instead).
SHARED_FROM_BASE = ("text_encoder_2", "vae")
# Files beside the weights that from_pretrained reads: configs, tokenizers, schedulers, processors.
_SIDE_FILES = ("*.json", "*.txt", "*.model")


@dataclass(frozen=True)
class RepoFile:
    name: str
    size: int
    cached: bool


@dataclass(frozen=True)
class Fetch:
    """One repo's share of the download."""

    setting: str  # the setting that names the repo, for messages
    repo: str
    files: list[RepoFile]
    value: str = ""  # the setting's value where it is not the repo's id (an adapter's "owner/repo/file")

    @property
    def named(self) -> str:
        """The setting as the operator wrote it: SETTING=value."""
        return f"{self.setting}={self.value or self.repo}"

    @property
    def missing_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.cached)

    @property
    def cached_bytes(self) -> int:
        return sum(f.size for f in self.files if f.cached)


class FetchError(RuntimeError):
    """A repo can't be fetched; the message names the setting and says what to do."""


# A weight file, maybe of a variant, maybe one shard: diffusion_pytorch_model.fp16.safetensors,
# model.fp16-00001-of-00002.safetensors; and a sharded one's index: model.safetensors.index.fp16.json.
_WEIGHT = re.compile(r"^[^.]+(?:\.(?P<v>\w+))?(?:-\d+-of-\d+)?\.(?P<ext>safetensors|bin)$")
_INDEX = re.compile(r"^[^.]+\.(?P<ext>safetensors|bin)\.index(?:\.(?P<v>\w+))?\.json$")


def _weights(names: list[str], prefer_fp16: bool = True) -> list[str]:
    """Of one folder's files, the weights from_pretrained(variant="fp16") reads: the fp16 safetensors (with
    their shard index) when there are any, else the plain safetensors, else the same order for .bin."""
    parsed = []
    for n in names:
        m = _WEIGHT.match(posixpath.basename(n)) or _INDEX.match(posixpath.basename(n))
        if m:
            parsed.append((n, m["ext"], m["v"]))
    for ext in ("safetensors", "bin"):
        for variant in ((FP16_VARIANT, None) if prefer_fp16 else (None,)):
            got = [n for n, e, v in parsed if e == ext and v == variant]
            if got:
                return got
    return []


def pick_files(listing: list[str], model_index: dict | None, skip: tuple[str, ...] = ()) -> list[str]:
    """The files of a repo (its full `listing`) that the worker loads. With a model_index.json (a diffusers
    pipeline): that file, and for each component it names (minus `skip`) the folder's side files and
    weights. Without one (a transformers model such as the output classifier): the top folder's."""
    def folder(name: str) -> list[str]:
        return [n for n in listing if posixpath.dirname(n) == name]

    def side_and_weights(files: list[str], prefer_fp16: bool = True) -> list[str]:
        side = [n for n in files if any(fnmatch.fnmatch(posixpath.basename(n), p) for p in _SIDE_FILES)
                and not _INDEX.match(posixpath.basename(n))]
        return side + _weights(files, prefer_fp16)

    if model_index is None:
        # A transformers model (the classifier) is loaded with no variant: its plain files, never fp16 ones.
        return sorted(side_and_weights(folder(""), prefer_fp16=False))
    out = ["model_index.json"]
    for name, spec in model_index.items():
        if name.startswith("_") or name in skip or not isinstance(spec, list) or None in spec:
            continue
        out += side_and_weights(folder(name))
    return sorted(set(out))


def _sources(settings: Settings) -> list[tuple[str, str, tuple[str, ...], bool]]:
    """(setting, value, components to skip, is a pipeline) for each model the worker will load."""
    out = [("DREAMBOT_BASE_MODEL", settings.base_model, (), True),
           ("DREAMBOT_REFINER_MODEL", settings.refiner_model, SHARED_FROM_BASE, True)]
    if settings.safety_check:
        out.append(("DREAMBOT_SAFETY_MODEL", settings.safety_model, (), False))
    return out


def _adapter_fetch(setting: str, value: str, endpoint: str | None) -> Fetch | None:
    """The one file of a hub repo an adapter setting names; None for off or a local file (nothing to fetch)."""
    from huggingface_hub import snapshot_download

    try:
        kind, repo, name = adapter_source(setting, value)
    except ModelLoadError as err:
        raise FetchError(str(err)) from err
    if kind != "hub":
        log.info("off or a local file: nothing to fetch", extra={"setting": setting, "value": value})
        return None
    try:
        listing = {f.filename: f for f in snapshot_download(repo, dry_run=True, endpoint=endpoint)}
    except Exception as err:  # noqa: BLE001 - see survey
        raise _hub_error(setting, value, err) from err
    if name not in listing:
        raise FetchError(f"{setting}={value}: the repo {repo} has no file {name}")
    return Fetch(setting, repo, [RepoFile(name, int(listing[name].file_size or 0), listing[name].is_cached)], value)


def _hub_error(setting: str, repo: str, err: Exception) -> FetchError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, RepositoryNotFoundError | RevisionNotFoundError):
        cause = cause.__cause__ or cause.__context__  # a dry run wraps the hub's answer in a DryRunError
    err = cause or err
    if isinstance(err, GatedRepoError):
        why = "the hub wants a token for it: accept its licence on huggingface.co and set HF_TOKEN"
    elif isinstance(err, RepositoryNotFoundError):
        why = "the hub has no such repo (or it is private: set HF_TOKEN)"
    elif isinstance(err, RevisionNotFoundError):
        why = "the hub has no such revision of it"
    else:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        why = f"{type(err).__name__}: {first}; run fetch-models again (complete files are kept)"
    return FetchError(f"{setting}={repo}: {why}")


def survey(settings: Settings, endpoint: str | None = None) -> list[Fetch]:
    """What fetch-models would download, repo by repo, with each file's size and whether it is cached.
    Reads the repos' listings and model_index.json (a few KB), nothing else."""
    from huggingface_hub import hf_hub_download, snapshot_download

    fetches = []
    for setting, value, skip, is_pipeline in _sources(settings):
        try:
            kind = hub_id_or_folder(setting, value)
        except ModelLoadError as err:
            raise FetchError(str(err)) from err
        if kind == "folder":
            log.info("a local folder: nothing to fetch", extra={"setting": setting, "path": value})
            continue
        try:
            listing = {f.filename: f for f in snapshot_download(value, dry_run=True, endpoint=endpoint)}
            index = None
            if is_pipeline:
                if "model_index.json" not in listing:
                    raise FetchError(f"{setting}={value}: that repo has no model_index.json, so it is not a "
                                     "diffusers pipeline")
                index = json.loads(Path(hf_hub_download(value, "model_index.json", endpoint=endpoint)).read_text())
        except FetchError:
            raise
        except Exception as err:  # noqa: BLE001 - huggingface_hub raises its errors, httpx's, OSError ...
            raise _hub_error(setting, value, err) from err
        files = []
        for name in pick_files(list(listing), index, skip):
            # model_index.json was just downloaded to read it: cached now, whatever the dry run said.
            cached = listing[name].is_cached or (name == "model_index.json" and index is not None)
            files.append(RepoFile(name, int(listing[name].file_size or 0), cached))
        fetches.append(Fetch(setting, value, files))
    adapter = _adapter_fetch("DREAMBOT_TURBO_ADAPTER", settings.turbo_adapter, endpoint)
    if adapter is not None:
        fetches.append(adapter)
    return fetches


def human(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def run(settings: Settings, endpoint: str | None = None, out: TextIO = sys.stdout,
        dry_run: bool = False) -> int:
    """Entry point of `dreambot fetch-models`: print the bytes, then download. Exit 0 when every file the
    worker loads is in the cache, 2 for a repo that can't be had as set, 1 for a download that broke off."""
    from huggingface_hub import snapshot_download

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        print("fetch-models: HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it for this command",
              file=out, flush=True)
        return 2
    try:
        fetches = survey(settings, endpoint)
    except FetchError as err:
        print(f"fetch-models: {err}", file=out, flush=True)
        return 2
    for f in fetches:
        print(f"{f.named}: {len(f.files)} files, {human(f.missing_bytes)} to download"
              f"{f' ({human(f.cached_bytes)} already in the cache)' if f.cached_bytes else ''}", file=out)
    total = sum(f.missing_bytes for f in fetches)
    print(f"total to download: {human(total)} ({total} bytes) into {_cache_dir()}", file=out, flush=True)
    if dry_run:
        return 0
    for f in fetches:
        try:
            # huggingface_hub draws one progress bar for the repo's files and one per file being fetched.
            path = snapshot_download(f.repo, allow_patterns=[x.name for x in f.files], endpoint=endpoint)
        except Exception as err:  # noqa: BLE001 - see survey
            print(f"fetch-models: {_hub_error(f.setting, f.value or f.repo, err)}", file=out, flush=True)
            return 1
        print(f"{f.named}: ready in {path}", file=out, flush=True)
    print("fetch-models: done; the worker loads these from the cache", file=out, flush=True)
    return 0


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
