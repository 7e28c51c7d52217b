"""The worker process's state that every job uses: settings, Redis, the loaded models, the image store and
the output classifier, installed once at start (`install`) so a job never loads a model. A worker holds no
limits: quotas are settled by the bot that queued the job, when its result comes back (bot.relay), so a
worker's Redis user needs no access to them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from dreamcore.images import ImageStore, open_store
from dreamcore.settings import Settings

from .classifier import load_checker
from .pipeline import DreamPipeline

LOAD = object()  # Runtime.checker's default: load the classifier the settings name


@dataclass
class Runtime:
    settings: Settings
    conn: redis.Redis
    pipeline: DreamPipeline
    name: str = "worker"
    store: ImageStore | None = None
    # The output classifier every image passes before it is published; by default loaded from the settings
    # (None there only when DREAMBOT_SAFETY_CHECK=false), so no way of building a worker skips it.
    checker: Any = LOAD

    def __post_init__(self):
        if self.store is None:
            self.store = open_store(self.settings)
        if self.checker is LOAD:
            self.checker = load_checker(self.settings, getattr(self.pipeline, "device", None))


_runtime: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("worker runtime not installed: run jobs with `dreambot worker`")
    return _runtime
