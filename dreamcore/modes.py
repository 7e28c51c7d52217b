"""The three ways a dream spends GPU time, as members choose them with `/dream mode:`.

quality  today's path: the base for most of the steps, the refiner for the last ones, guidance, negatives.
turbo    SDXL-Lightning's 4-step LoRA on the base alone: its own scheduler (Euler, "trailing" timesteps),
         4 steps, no classifier-free guidance (so no negative prompt) and no refiner, all fixed: the
         distilled model gives garbage at any other setting (AI Horde's finding), so members set none of it.
         About a tenth of a standard image's GPU time, and charged that (dreamcore.cost).
relax    the quality path, queued behind every fast queue (dreamcore.queue.rq_queues: `dream-relax`, which workers
         serve only when the others are empty, fairly between servers like any queue) and drawn from no
         quota: unlimited, slow when the pool is busy.

Why Lightning: of the few-step SDXL models whose licence lets a public service run them (SDXL-Turbo's does
not), SDXL-Lightning (openrail++) gives the best images at 4 steps and costs 4 UNet passes per image; LCM-LoRA
(also openrail++) is visibly softer at 4 steps; Hyper-SD's 8-step CFG LoRA keeps negative prompts but runs 16
passes (8 steps, each twice for guidance), which is not "turbo" any more. Lightning's price is the negative
prompt, which a guidance-free model cannot use: a turbo reply says so.

The kinds with a turbo path are those the base draws from noise or from an image (a dream, a Reroll, a
variation). Upscales, edits, Fix faces and dreams from a member's picture use the refiner or the
inpainting path, which the adapter was not trained for: made from a turbo result, they run in quality mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["quality", "turbo", "relax"]
MODE_LABELS = {
    "quality": "Quality: base + refiner, every setting yours",
    "turbo": "Turbo: 4 steps, about 10x cheaper, no negative prompt",
    "relax": "Relax: quality, unlimited, runs when the GPUs are free",
}


@dataclass(frozen=True)
class Recipe:
    """What a turbo dream runs, fixed: the adapter's training settings."""

    adapter: str  # the worker's name for the LoRA (worker/adapters.py)
    steps: int
    guidance: float  # 0: no classifier-free guidance, so no negative prompt
    split: float  # 1.0: the base alone
    scheduler: str  # worker/adapters.SCHEDULERS


TURBO = Recipe(adapter="turbo", steps=4, guidance=0.0, split=1.0, scheduler="euler-trailing")
# The kinds that run the turbo recipe; any other kind made from a turbo result runs in quality mode.
TURBO_KINDS = ("dream", "variation")
# The queue relax dreams wait in: after every queue an operator grants (dreamcore.servers' priorities).
RELAX_QUEUE = "relax"


def allowed(mode: str, turbo: str, relax: str) -> bool:
    """Whether `mode` runs where turbo and relax are switched "on" or "off" (a server's limits, or the
    operator's defaults of them); quality always does."""
    return mode == "quality" or {"turbo": turbo, "relax": relax}[mode] == "on"


def fast(mode: str) -> bool:
    """Whether a dream in `mode` draws from the quotas (relax does not)."""
    return mode != "relax"
