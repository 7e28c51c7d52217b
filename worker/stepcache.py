"""Step caching on the base UNet (DREAMBOT_STEP_CACHE): the deep features of one step reused by the next few.

DeepCache (Ma et al., CVPR 2024, arXiv 2312.00858) observes that a UNet's high-level features change little
between neighbouring denoising steps, while the outermost blocks carry the detail. So every `interval`
steps the UNet runs whole and the output of its second-to-last up block is kept; on the steps between, only
the outermost down block and the last up block run (with conv_in, the embeddings and conv_out around them),
and the kept features stand in for everything deeper. On SDXL's base that skips every attention block: a
cached step costs a small part of a full one (bench/gpu_sdxl.py prints the FLOP count of each).

Lossy: the image differs from the uncached one (bench/gpu_sdxl.py and the tests measure by how much), so it
is off by default and used only for the base; the refiner's last steps, where the detail is made, run whole.

Mechanics: each deep block's `forward` is replaced on the instance by one that asks this object whether the
current UNet call reuses. Only DreamPipeline's text-to-image call turns caching on (`start` before the base
call, `step_done` from its step callback, `stop` after it); every other use of the same UNet (variations,
upscale tiles, img2img) runs whole, as does the first step of each call and any call whose batch shape
differs from the kept features'.
"""

from __future__ import annotations

import torch


class StepCache:
    def __init__(self, unet: torch.nn.Module, interval: int):
        if interval < 2:
            raise ValueError("a step cache needs an interval of at least 2 steps")
        self.interval = interval
        self.active = False  # inside a text-to-image base call
        self.reuse = False  # this UNet call reuses the kept features
        self.kept: torch.Tensor | None = None
        # Steps of text-to-image base calls that ran whole, and that reused: counted outside the UNet's forward,
        # which torch.compile may trace (a Python counter read there would be a guard that changes every step).
        self.full_steps = 0
        self.cached_steps = 0
        down, up = list(unet.down_blocks), list(unet.up_blocks)
        if len(down) < 2 or len(up) < 2:
            raise ValueError("step caching needs a UNet of at least two down and two up blocks")
        # What a skipped down block must still hand on: as many skip tensors as the real one would add, since
        # the UNet pairs them with the up blocks by count. None of them is read on a reused step (only the
        # outermost up block runs, and it takes the outermost down block's, which runs).
        for block in down[1:]:
            self._wrap_down(block)
        self._wrap_passthrough(unet.mid_block)
        for block in up[:-2]:
            self._wrap_passthrough(block)
        self._wrap_kept(up[-2])
        self.unet = unet

    # -- the switch, driven by DreamPipeline ---------------------------------------------------------------

    def start(self) -> None:
        self.active, self.reuse, self.kept = True, False, None

    def step_done(self, index: int) -> None:
        """After step `index` (0-based) of the base call: count how it ran, and whether step index + 1 reuses."""
        if self.reuse:
            self.cached_steps += 1
        else:
            self.full_steps += 1
        self.reuse = self.active and (index + 1) % self.interval != 0 and self.kept is not None

    def stop(self) -> None:
        self.active, self.reuse, self.kept = False, False, None  # the kept features are a batch's activations

    # -- the wrapped blocks -------------------------------------------------------------------------------

    def _skipping(self, hidden_states: torch.Tensor) -> bool:
        return self.reuse and self.kept is not None and self.kept.shape[0] == hidden_states.shape[0]

    def _wrap_down(self, block: torch.nn.Module) -> None:
        real = block.forward
        count = len(block.resnets) + (len(block.downsamplers) if getattr(block, "downsamplers", None) else 0)

        def forward(hidden_states, *args, **kwargs):
            if self._skipping(hidden_states):
                return hidden_states, (hidden_states,) * count
            return real(hidden_states, *args, **kwargs)

        block.forward = forward

    def _wrap_passthrough(self, block: torch.nn.Module | None) -> None:
        if block is None:
            return
        real = block.forward

        def forward(hidden_states, *args, **kwargs):
            if self._skipping(hidden_states):
                return hidden_states
            return real(hidden_states, *args, **kwargs)

        block.forward = forward

    def _wrap_kept(self, block: torch.nn.Module) -> None:
        real = block.forward

        def forward(hidden_states, *args, **kwargs):
            if self._skipping(hidden_states):
                return self.kept
            out = real(hidden_states, *args, **kwargs)
            if self.active:
                self.kept = out
            return out

        block.forward = forward
