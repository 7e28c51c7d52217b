"""The ways a job ends early, as exceptions the worker's modules raise to one another, and the one check for
a GPU out of memory (torch spells it two ways)."""

from __future__ import annotations


class JobRejected(Exception):
    """The job can't succeed however often it is tried; its member has been told why."""


class JobCancelled(Exception):
    """A member or an admin cancelled the job while it ran."""


class SafetyCheckFailed(RuntimeError):
    """The output classifier could not score a job's images: nothing unscored is posted."""


class SourceGone(ValueError):
    """A variation's or an upscale's source image has expired (or can't be read): the member is told why."""


class TurboUnavailable(ValueError):
    """A turbo job on a worker that loaded no turbo adapter (DREAMBOT_TURBO_ADAPTER=off): the member is told."""

    def __init__(self) -> None:
        super().__init__("Turbo isn't set up on this pool's GPUs; try mode:quality")


def is_oom(err: Exception) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def free_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
