"""SDXL base + refiner as one "ensemble of expert denoisers", the way the worker runs a DreamRequest.

The base model denoises the first (high-noise) part of the schedule and hands over its latents, still
noisy, to the refiner, which was trained only on the low-noise end and finishes them; the VAE decodes the
result. (https://huggingface.co/docs/diffusers/using-diffusers/sdxl#refine-image-quality)

Kept close to plain diffusers on purpose: two stock pipelines, loaded once, called with precomputed prompt
embeddings (so long prompts are chunked, not cut; see prompts.py) and one seeded generator per image.

Several requests that share a size, step count, base/refiner cut and guidance scale (DreamJob.batch_key) can
be denoised in one call: `prepare()` each, then `generate_prepared()`. Each image still comes from its own
seeded generator and its own prompt's embeddings, so it is the image its request gives alone (up to the
last float bit of a batched kernel); the GPU just does the work of many images per UNet pass.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from PIL import Image

from dreamcore.job import DreamRequest
from dreamcore.styles import load_styles

from . import memory
from .prompts import EncodedPrompts, batch_kwargs, encode_prompts
from .weights import choose_dtype, is_full_size, load_pipelines, resolve_device

log = logging.getLogger("dreambot.worker")

@dataclass
class StepEvent:
    """One finished denoising step, for progress reports (and, by raising, for cancelling)."""

    stage: str  # "base" or "refiner"
    step: int  # 1-based within the stage
    stage_total: int
    done: int  # steps finished over both stages
    total: int
    latents: torch.Tensor  # the whole call's latents after this step
    # Which rows of `latents` are whose: item index (its position in generate_prepared's `items`) -> that
    # item's images, for the items in this call. generate(), vary() and upscale() give {0: slice(0, n)}.
    rows: dict[int, slice] = field(default_factory=dict)


@dataclass
class Generation:
    images: list[Image.Image]  # RGB, in the order of `seeds`
    seeds: list[int]
    width: int
    height: int
    base_steps: int  # steps the base actually ran (counted in its step callback)
    refiner_steps: int  # 0 when the refiner was skipped
    # encode_s, base_s, refiner_s, decode_s, total_s; from generate_prepared() also batch_images and
    # batch_jobs (the images and requests in the pipeline call this one shared; its base/refiner/decode
    # times are that whole call's).
    timings: dict[str, float] = field(default_factory=dict)
    prompt_note: str | None = None  # e.g. "prompt is 131 tokens: encoded in 2 chunks of 75"
    nan_detected: bool = False  # any image's latents or pixels non-finite, or the image all black


@dataclass
class Prepared:
    """One request with its style applied and its prompts encoded, ready to be batched with others."""

    req: DreamRequest
    encoded: EncodedPrompts
    use_refiner: bool
    encode_s: float
    base_steps: int  # what split_steps() gives for the request
    refiner_steps: int
    fraction: float | None  # the handover point; None when the refiner is skipped


def batch_geometry(req: DreamRequest) -> tuple:
    """What every request in one denoising call must share: DreamRequest.batch_geometry, which
    DreamJob.batch_key is also built from (one rule for the queue's batch claim and the pipeline's check)."""
    return req.batch_geometry


_loaded: dict[tuple, DreamPipeline] = {}
_load_lock = threading.Lock()


class DreamPipeline:
    def __init__(
        self, base: StableDiffusionXLPipeline, refiner: StableDiffusionXLImg2ImgPipeline, device: torch.device
    ):
        self.base = base
        self.refiner = refiner
        self.device = device
        self._timesteps_cache: dict[tuple[str, int], list[int]] = {}
        self._base_img2img: StableDiffusionXLImg2ImgPipeline | None = None
        self.memory: memory.MemoryPlan | None = None  # set when placed on the device (_place)

    @classmethod
    def load(
        cls,
        base: str,
        refiner: str,
        device: str = "auto",
        *,
        fuse_qkv: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        dtype: torch.dtype | None = None,
        offload: str = "auto",
        batch_images: int = 32,
    ) -> DreamPipeline:
        """Load base and refiner (a hub id or a local folder each); the same arguments return the same instance.

        The speed options change the loaded modules in place, so each combination is its own instance (and
        its own copy of the weights: from_pretrained shares nothing between two loads).
        fuse_qkv: one q/k/v (self-attention) or k/v (cross-attention) matmul instead of three or two, in
            both UNets and the VAE. channels_last: NHWC memory layout for the UNets' and VAE's convolutions,
            what cuDNN's fastest kernels want. compile: torch.compile both UNets, warmed up at load.
        dtype: the weights' dtype; None is bf16 on a GPU and fp32 on a CPU (bench/fullsize.py loads the
            full-size pair in bf16 on a CPU, where fp32 would need ~23 GB).
        offload: DREAMBOT_OFFLOAD, auto|none|model (memory.plan); batch_images: the most images one
            denoising call may hold (DREAMBOT_BATCH_IMAGES); the plan keeps their working memory free, and
            may allow fewer (`.memory.batch_images`) on a device with less room.
        """
        key = (base, refiner, device, fuse_qkv, channels_last, compile, dtype, offload, batch_images)
        with _load_lock:
            if key not in _loaded:
                pipe = cls._load(base, refiner, device, dtype)
                pipe._speed_up(fuse_qkv=fuse_qkv, channels_last=channels_last)
                pipe._place(offload, batch_images)
                if compile:
                    pipe._compile()
                _loaded[key] = pipe
            return _loaded[key]

    @classmethod
    def _load(cls, base: str, refiner: str, device: str, dtype: torch.dtype | None = None) -> DreamPipeline:
        dev = resolve_device(device)
        if dtype is None:
            dtype, why = choose_dtype("auto", dev, full_size=dev.type == "cpu" and is_full_size(base))
            log.info("dtype chosen", extra={"dtype": str(dtype).removeprefix("torch."), "why": why})
        base_pipe, refiner_pipe = load_pipelines(base, refiner, dtype)
        # diffusers decodes the last stage's latents itself (output_type="pt"); sliced, one image at a time,
        # so a batch's decode needs the memory of one 1024 px decode (the peak of a whole job), not eight.
        base_pipe.vae.enable_slicing()
        for pipe in (base_pipe, refiner_pipe):
            # Attention stays diffusers' default for torch 2, AttnProcessor2_0 (FusedAttnProcessor2_0 with
            # fuse_qkv), i.e. torch's scaled_dot_product_attention. On CUDA SDPA already picks the fastest
            # kernel that fits (FlashAttention for bf16 with these head sizes, else memory-efficient
            # attention, else the math fallback), so no custom attention kernels or processors are needed.
            pipe.set_progress_bar_config(disable=True)  # the worker reports progress itself
        return cls(base_pipe, refiner_pipe, dev)

    def _place(self, offload: str, batch_images: int) -> None:
        """Move the weights to the device, or hand them to diffusers' model CPU offload (memory.plan says
        which; a device too small for either raises ModelLoadError). Done after the speed options, so the
        plan counts what fuse_qkv added."""
        sizes = memory.module_bytes(self.modules_once())
        self.memory = memory.plan(offload, self.device, sizes,
                                  lambda n: memory.working_bytes(self.base.unet, n), batch_images,
                                  memory.free_bytes(self.device))
        if self.memory.offload == "model":
            # One whole model on the device at a time, moved there when its forward runs. Each pipeline
            # offloads its own models again at the end of its call (maybe_free_model_hooks), so the base's
            # UNet has left the device before the refiner's arrives; the shared text_encoder_2 and VAE carry
            # the hook of whichever pipeline ran last, which moves them just the same.
            for pipe in (self.base, self.refiner):
                pipe.enable_model_cpu_offload(device=self.device)
        else:
            for pipe in (self.base, self.refiner):
                pipe.to(self.device)

    # -- speed options ------------------------------------------------------------------------------------

    def _modules(self) -> dict[str, torch.nn.Module]:
        """The UNets and the VAE, each once: the refiner's VAE is the base's object, so it is not listed twice
        (a second fuse would redo the work and allocate its fused weights again for nothing)."""
        named = {"base UNet": self.base.unet, "refiner UNet": self.refiner.unet, "VAE": self.base.vae}
        if self.refiner.vae is not self.base.vae:
            named["refiner VAE"] = self.refiner.vae
        return named

    def modules_once(self) -> dict[str, torch.nn.Module]:
        """Every model of both pipelines, a shared one (text_encoder_2, the VAE) once."""
        named: dict[str, torch.nn.Module] = {}
        for prefix, pipe in (("", self.base), ("refiner ", self.refiner)):
            for name, module in pipe.components.items():
                if isinstance(module, torch.nn.Module) and all(module is not m for m in named.values()):
                    named[prefix + name] = module
        return named

    def _speed_up(self, *, fuse_qkv: bool, channels_last: bool) -> None:
        modules = self._modules()
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

    def _compile(self) -> None:
        """torch.compile both UNets and run one small generation so the first member's job doesn't pay for it.

        Off by default (DREAMBOT_COMPILE): on a GPU, max-autotune spends minutes benchmarking kernels, and
        with dynamic=False every new input shape (batch size, prompt chunk count, image size) compiles
        again, each again for minutes, the first time a job of that shape comes; past dynamo's recompile
        limit (8 per function) a shape silently runs uncompiled. Inductor's caches make later starts cheap:
        point TORCHINDUCTOR_CACHE_DIR at a volume that outlives the container.
        """
        cuda = self.device.type == "cuda"
        # No CUDA graphs: each batch shape would hold its own graph memory pool for little gain, the
        # kernels of a 1024px UNet pass being long enough that launch overhead is small.
        mode = "max-autotune-no-cudagraphs" if cuda else None
        for pipe in (self.base, self.refiner):
            pipe.unet.compile(mode=mode, dynamic=False)  # in place: the pipelines keep the same module
        # Warm-up: SDXL's native size at 2 steps (base 1 + refiner 1), one image with guidance (a UNet batch
        # of 2), the shape of the most common job. On a CPU (tests, the tiny model) a 64x64 image only
        # proves the compiled graphs run.
        side = self.base.default_sample_size * self.base.vae_scale_factor if cuda else 64
        t0 = time.perf_counter()
        with torch.inference_mode():
            warm = self.prepare(DreamRequest(prompt="warm-up", seed=0, steps=2, split=0.5, guidance=7.0))
            self._denoise([warm], [0], side, side, None)
        log.info("UNets compiled", extra={"seconds": round(time.perf_counter() - t0, 2),
                                           "mode": mode or "default", "warm_up": f"{side}x{side}"})

    # -- the step split ---------------------------------------------------------------------------------

    def split_steps(self, steps: int, base_steps: int) -> tuple[int, int, float | None]:
        """(base steps, refiner steps, handover fraction), exact for the schedulers' actual timesteps.

        diffusers turns `denoising_end=f` into "run the timesteps t >= round(1000 * (1 - f))" and the
        refiner's `denoising_start=f` into "the timesteps t < that", so the number of base steps follows
        the timestep grid rather than round(steps * f). With SDXL's "leading" spacing and 8 steps
        (timesteps 876, 751, ..., 126, 1), f = 0.7 puts the cut at 300 and the base runs 5 steps where
        round(8 * 0.7) = 6. So instead of passing req.split through, find the fraction whose cut falls
        just above the first timestep the refiner should run: the base then runs exactly `base_steps`.

        Returns a None fraction when the refiner has nothing to do (base_steps == steps).
        """
        base_steps = min(max(base_steps, 1), steps)  # round(1 * 0.5) == 0: the base always runs at least one
        if base_steps == steps:
            return steps, 0, None
        timesteps = self._timesteps("base", steps)  # descending, one per step (Euler is first-order)
        cut = timesteps[base_steps] + 1  # the base keeps t >= cut, the refiner takes t < cut
        n_train = self.base.scheduler.config.num_train_timesteps
        fraction = 1.0 - cut / n_train
        # What the refiner's own scheduler will run from that fraction (the same grid for SDXL's pair).
        ref_cut = int(round(n_train - fraction * n_train))
        refiner_steps = sum(1 for t in self._timesteps("refiner", steps) if t < ref_cut)
        return base_steps, refiner_steps, fraction

    def _timesteps(self, stage: str, steps: int) -> list[int]:
        """The timesteps a stage's scheduler runs for `steps`, from a fresh copy (the pipeline's own keeps its state)."""
        cache = self._timesteps_cache
        if (stage, steps) not in cache:
            scheduler = getattr(self, stage).scheduler
            fresh = type(scheduler).from_config(scheduler.config)
            fresh.set_timesteps(steps)
            cache[stage, steps] = [int(t) for t in fresh.timesteps]
        return cache[stage, steps]

    # -- generation ---------------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, req: DreamRequest, on_step: Callable[[StepEvent], None] | None = None) -> Generation:
        """Run one request: style, prompt encoding, base, refiner, decode. Exceptions from on_step propagate."""
        gen = self.generate_prepared([self.prepare(req)], on_step)[0]
        # A call of its own: batch_images is req.count and batch_jobs 1, which says nothing; generate()'s
        # timings keep the keys they always had.
        gen.timings.pop("batch_images", None)
        gen.timings.pop("batch_jobs", None)
        return gen

    @torch.inference_mode()
    def prepare(self, req: DreamRequest) -> Prepared:
        """Apply the request's style, work out its step split and encode its prompts (base and, when it runs,
        refiner). Raises PromptTooLong (a ValueError) for a prompt past the chunk limit: that request alone
        fails, before it is batched with others."""
        t_start = time.perf_counter()
        prompt, negative = load_styles()[req.style].apply(req.prompt, req.negative_prompt)
        base_steps, refiner_steps, fraction = self.split_steps(req.steps, req.base_steps)
        use_refiner = fraction is not None
        encoded = encode_prompts(self.base, self.refiner if use_refiner else None, prompt, negative)
        self._sync()
        return Prepared(
            req=req,
            encoded=encoded,
            use_refiner=use_refiner,
            encode_s=time.perf_counter() - t_start,
            base_steps=base_steps,
            refiner_steps=refiner_steps,
            fraction=fraction,
        )

    @torch.inference_mode()
    def generate_prepared(
        self, items: list[Prepared], on_step: Callable[[StepEvent], None] | None = None
    ) -> list[Generation]:
        """Denoise several prepared requests together; one Generation per item, in order.

        All items must share size, steps, base steps and guidance (batch_geometry, i.e. DreamJob.batch_key),
        else ValueError. Items whose prompts were encoded in the same number of chunks share one base (and
        refiner) call; each other chunk count gets a call of its own, in the order the items come (their
        embeddings can't be stacked, and padding with empty chunks would change the image). In a call every
        image has its own generator seeded with its seed, and its own request's embeddings, so image i of
        item k is what that seed gives alone. on_step sees each call's steps (`done`/`total` count within the
        call) and `rows` says which latents are whose. An exception from on_step propagates and ends the
        whole batch.
        """
        if not items:
            return []
        geometries = {batch_geometry(it.req) for it in items}
        if len(geometries) > 1:
            raise ValueError(
                "requests in one batch must share size, steps, base steps and guidance; got "
                + ", ".join(f"{w}x{h}/{s}/{b}/{g:g}" for (w, h), s, b, g in sorted(geometries))
            )
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            shape = (
                tuple(it.encoded.base.prompt_embeds.shape),
                tuple(it.encoded.refiner.prompt_embeds.shape) if it.encoded.refiner is not None else None,
            )
            groups.setdefault(shape, []).append(i)
        width, height = items[0].req.size
        out: list[Generation | None] = [None] * len(items)
        for indices in groups.values():
            gens = self._denoise([items[i] for i in indices], indices, width, height, on_step)
            for i, gen in zip(indices, gens, strict=True):
                out[i] = gen
        return out  # type: ignore[return-value]  (every index was filled)

    def _denoise(
        self,
        items: list[Prepared],
        indices: list[int],
        width: int,
        height: int,
        on_step: Callable[[StepEvent], None] | None,
    ) -> list[Generation]:
        """One base (+ refiner) call for items of one geometry and one embedding shape; then the decode."""
        first = items[0]
        base_steps, refiner_steps, fraction = first.base_steps, first.refiner_steps, first.fraction
        use_refiner = first.use_refiner
        total = base_steps + refiner_steps
        rows: dict[int, slice] = {}
        n = 0
        for index, it in zip(indices, items, strict=True):
            rows[index] = slice(n, n + it.req.count)
            n += it.req.count
        seeds = [seed for it in items for seed in it.req.seeds]
        self._sync()
        t_start = time.perf_counter()

        # One generator per image, seeded with that image's seed: randn_tensor draws each image's starting
        # noise from its own generator, so image i of a batch is the image its seed gives alone. CPU
        # generators (diffusers moves the noise to the GPU) make a seed's starting noise the same on every
        # machine, GPU or not; drawing 4x128x128 numbers on the CPU costs nothing.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        counted = {"base": 0, "refiner": 0}

        last_step = _LastStep(self)

        def callback(stage: str, stage_total: int, offset: int):
            def on_step_end(pipe, i: int, t, tensors: dict) -> dict:
                counted[stage] += 1
                if on_step is not None:
                    on_step(StepEvent(stage, i + 1, stage_total, offset + i + 1, total, tensors["latents"],
                                      rows=dict(rows)))
                last_step.mark(i + 1 == stage_total)
                return {}

            return on_step_end

        common = dict(
            num_inference_steps=first.req.steps,
            guidance_scale=first.req.guidance,
            generator=generators,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        # The base hands latents to the refiner; the last stage decodes them the pipelines' own way
        # (un-scaling, VAE, watermark, post-processing: DECODED), timed from its last step.
        out = self.base(
            **batch_kwargs([(it.encoded.base, it.req.count) for it in items]),
            width=width,
            height=height,
            denoising_end=fraction,
            callback_on_step_end=callback("base", base_steps, 0),
            output_type="latent" if use_refiner else DECODED,
            **common,
        ).images
        self._sync()
        t_base = last_step.at if not use_refiner else time.perf_counter()

        if use_refiner:
            out = self.refiner(
                **batch_kwargs([(it.encoded.refiner, it.req.count) for it in items]),
                image=out,  # 4-channel latents go in as they are, no VAE encode
                denoising_start=fraction,  # continue the same schedule: no fresh noise is added
                callback_on_step_end=callback("refiner", refiner_steps, base_steps),
                output_type=DECODED,
                **common,
            ).images
        self._sync()
        t_end = time.perf_counter()
        t_refined = last_step.at if use_refiner else t_base
        decoded = _checked_images(out)
        shared = {
            "base_s": t_base - t_start,
            "refiner_s": t_refined - t_base,
            "decode_s": t_end - t_refined,
        }
        gens = []
        for index, it in zip(indices, items, strict=True):
            mine = decoded[rows[index]]
            gens.append(
                Generation(
                    images=[image for image, _ in mine],
                    seeds=it.req.seeds,
                    width=width,
                    height=height,
                    base_steps=counted["base"],
                    refiner_steps=counted["refiner"],
                    timings={
                        "encode_s": it.encode_s,
                        **shared,
                        "total_s": it.encode_s + (t_end - t_start),
                        "batch_images": n,
                        "batch_jobs": len(items),
                    },
                    prompt_note=it.encoded.note,
                    nan_detected=any(nan for _, nan in mine),
                )
            )
        return gens

    # -- variations and upscales -------------------------------------------------------------------------

    @property
    def base_img2img(self) -> StableDiffusionXLImg2ImgPipeline:
        """The base's own modules as an img2img pipeline: nothing loaded or held twice. Only the scheduler is
        a fresh copy, so img2img's begin index never leaks into the next text-to-image run."""
        if self._base_img2img is None:
            components = dict(self.base.components)
            scheduler = components["scheduler"]
            components["scheduler"] = type(scheduler).from_config(scheduler.config)
            pipe = StableDiffusionXLImg2ImgPipeline(**components)
            pipe.set_progress_bar_config(disable=True)
            if self.memory is not None and self.memory.offload == "model":
                pipe.enable_model_cpu_offload(device=self.device)  # its own hooks, ending each of its calls
            self._base_img2img = pipe
        return self._base_img2img

    @torch.inference_mode()
    def vary(
        self,
        req: DreamRequest,
        source: Image.Image,
        strength: float,
        on_step: Callable[[StepEvent], None] | None = None,
        size: tuple[int, int] | None = None,
    ) -> Generation:
        """`req.count` variations of `source`: the base in img2img at `strength`, one seeded generator per
        image (image i is what seed req.seeds[i] gives alone). The source is brought to the request's size
        (an upscaled source is scaled back down), so a variation costs what a dream of that size costs."""
        t_start = time.perf_counter()
        width, height = size or req.size
        image = source.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        prompt, negative = load_styles()[req.style].apply(req.prompt, req.negative_prompt)
        encoded = encode_prompts(self.base, None, prompt, negative)
        self._sync()
        t_encoded = time.perf_counter()

        n_steps, run_steps = img2img_steps(req.steps, strength)
        generators = [torch.Generator("cpu").manual_seed(s) for s in req.seeds]
        counted = [0]

        last_step = _LastStep(self)

        def on_step_end(pipe, i: int, t, tensors: dict) -> dict:
            counted[0] += 1
            if on_step is not None:
                on_step(StepEvent("base", counted[0], run_steps, counted[0], run_steps, tensors["latents"],
                                  rows={0: slice(0, req.count)}))
            last_step.mark(counted[0] == run_steps)
            return {}

        out = self.base_img2img(
            **encoded.base.pipeline_kwargs(req.count),
            image=[image] * req.count,
            strength=strength,
            num_inference_steps=n_steps,
            guidance_scale=req.guidance,
            generator=generators,
            output_type=DECODED,
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
        ).images
        self._sync()
        t_end = time.perf_counter()
        t_base = last_step.at
        decoded = _checked_images(out)
        images, nan = [im for im, _ in decoded], any(bad for _, bad in decoded)
        return Generation(
            images=images, seeds=req.seeds, width=width, height=height, base_steps=counted[0], refiner_steps=0,
            timings={"encode_s": t_encoded - t_start, "base_s": t_base - t_encoded, "decode_s": t_end - t_base,
                     "total_s": t_end - t_start},
            prompt_note=encoded.note, nan_detected=nan,
        )

    @torch.inference_mode()
    def upscale(
        self,
        req: DreamRequest,
        source: Image.Image,
        strength: float,
        on_step: Callable[[StepEvent], None] | None = None,
        tile: int = 1024,
        overlap: int = 128,
    ) -> Generation:
        """`source` at exactly twice its size: a Lanczos 2x, then the refiner in img2img at a low `strength`
        redraws the detail, one tile (at most `tile` pixels a side) at a time, so GPU memory is that of one
        tile at any output size. Neighbouring tiles share at least `overlap` pixels, blended with linear
        ramps that add up to one (no seams, no dark bands). One generator, seeded with req.seed, runs
        through the tiles in order: the same seed gives the same image."""
        t_start = time.perf_counter()
        image = source.convert("RGB")
        width, height = image.width * 2, image.height * 2
        big = image.resize((width, height), Image.Resampling.LANCZOS)
        prompt, negative = load_styles()[req.style].apply(req.prompt, req.negative_prompt)
        encoded = encode_prompts(self.base, self.refiner, prompt, negative)
        self._sync()
        t_encoded = time.perf_counter()

        xs, ys = tile_spans(width, tile, overlap), tile_spans(height, tile, overlap)
        boxes = [(x0, y0, x1, y1) for y0, y1 in ys for x0, x1 in xs]
        n_steps, run_steps = img2img_steps(req.steps, strength)
        total = run_steps * len(boxes)
        generator = torch.Generator("cpu").manual_seed(req.seed)
        canvas = np.zeros((height, width, 3), dtype=np.float32)
        weight = np.zeros((height, width, 1), dtype=np.float32)
        counted = [0]
        nan = False
        t_refine = t_decode = 0.0

        last_step = _LastStep(self)

        def on_step_end(pipe, i: int, t, tensors: dict) -> dict:
            counted[0] += 1
            if on_step is not None:
                on_step(StepEvent("refiner", counted[0], total, counted[0], total, tensors["latents"],
                                  rows={0: slice(0, 1)}))
            last_step.mark(counted[0] % run_steps == 0)  # a tile's last step
            return {}

        for x0, y0, x1, y1 in boxes:
            t0 = time.perf_counter()
            out = self.refiner(
                **encoded.refiner.pipeline_kwargs(1),
                image=big.crop((x0, y0, x1, y1)),
                strength=strength,
                num_inference_steps=n_steps,
                guidance_scale=req.guidance,
                generator=[generator],
                output_type=DECODED,
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
            ).images
            self._sync()
            t1 = last_step.at
            ((piece, tile_nan),) = _checked_images(out)
            nan = nan or tile_nan
            if piece.size != (x1 - x0, y1 - y0):  # a side that is not a multiple of 8
                piece = piece.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
            w = np.outer(feather((y0, y1), ys), feather((x0, x1), xs))[..., None]
            canvas[y0:y1, x0:x1] += np.asarray(piece, dtype=np.float32) * w
            weight[y0:y1, x0:x1] += w
            t_refine += t1 - t0
            t_decode += time.perf_counter() - t1
        out = Image.fromarray(np.clip(np.rint(canvas / weight), 0, 255).astype(np.uint8), "RGB")
        t_end = time.perf_counter()
        tw, th = xs[0][1] - xs[0][0], ys[0][1] - ys[0][0]
        note = f"upscaled 2x in {len(boxes)} tile{'s' * (len(boxes) > 1)} of {tw}x{th}"
        return Generation(
            images=[out], seeds=[req.seed], width=width, height=height, base_steps=0,
            refiner_steps=run_steps,
            timings={"encode_s": t_encoded - t_start, "refiner_s": t_refine, "decode_s": t_decode,
                     "total_s": t_end - t_start},
            prompt_note="; ".join(n for n in (encoded.note, note) if n), nan_detected=nan,
        )

    def _sync(self) -> None:
        # CUDA runs asynchronously: wait for it so each stage's time is that stage's.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# What the last pipeline call of a job returns: its images decoded by diffusers itself (the latents
# un-scaled with the VAE's latents_mean/std or scaling factor, the VAE's own upcast rule, the watermark when
# installed, the image processor's post-processing) as float tensors in [0, 1], so a NaN survives to be seen.
DECODED = "pt"


class _LastStep:
    """When the last denoising step of a pipeline call ended (synced on a GPU): what comes after it is the
    pipeline's decode."""

    def __init__(self, pipe: DreamPipeline):
        self.pipe = pipe
        self.at = time.perf_counter()

    def mark(self, last: bool) -> None:
        if last:
            self.pipe._sync()
            self.at = time.perf_counter()


def _checked_images(images: torch.Tensor) -> list[tuple[Image.Image, bool]]:
    """PIL images from a DECODED batch and, for each, whether it is broken: non-finite pixels (a NaN in the
    latents or the VAE) or all black (what such a decode turns into)."""
    from diffusers.image_processor import VaeImageProcessor

    out = []
    for x in images:
        bad = not bool(torch.isfinite(x).all())
        x = torch.nan_to_num(x, nan=0.0)  # black, rather than numpy's cast warning
        image = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(x[None].float().cpu()))[0]
        image = image.convert("RGB")
        out.append((image, bad or int(np.asarray(image).max()) == 0))
    return out


def img2img_steps(steps: int, strength: float) -> tuple[int, int]:
    """(num_inference_steps to ask for, steps that will run): diffusers' img2img runs
    int(num_inference_steps * strength) of them and refuses zero, so ask for enough that at least one runs."""
    n = max(1, steps)
    while int(n * strength) < 1:
        n += 1
    return n, min(int(n * strength), n)


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Equal spans (start, end) covering [0, length): each at most `tile` long and a multiple of 8 (the
    VAE's factor), neighbours sharing at least `overlap` (less one for rounding). As few as the tile
    allows, and no longer than needed, so the overlap is not wasted work."""
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    size = min(tile, math.ceil((length + (n - 1) * overlap) / n / 8) * 8)
    starts = [round(i * (length - size) / (n - 1)) for i in range(n)]
    return [(s, s + size) for s in starts]


def feather(span: tuple[int, int], spans: list[tuple[int, int]]) -> np.ndarray:
    """Blend weights along one axis for `span`: ramps up over the overlap with the span before it and down
    over the overlap with the one after, flat elsewhere (and at the image's edges). Two overlapping
    spans' ramps cover the same pixels in opposite directions, so the weights add up to exactly one."""
    start, end = span
    k = np.arange(end - start, dtype=np.float32) + 0.5
    w = np.ones(end - start, dtype=np.float32)
    i = spans.index(span)
    if i > 0:
        ramp = spans[i - 1][1] - start
        w = np.minimum(w, k / ramp)
    if i < len(spans) - 1:
        ramp = end - spans[i + 1][0]
        w = np.minimum(w, (end - start - k) / ramp)
    return w
