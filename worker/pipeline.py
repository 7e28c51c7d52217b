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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from PIL import Image

from dreamcore.job import DreamRequest, geometry_text
from dreamcore.styles import load_styles

from . import adapters, memory, speed
from .prompts import EncodedPrompts, batch_kwargs, encode_prompts
from .weights import dtype_for, load_pipelines, resolve_device

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
    # A dream made in parts (worker/make.py): which part this call is, of how many; done/total count over all.
    part: int = 1
    parts: int = 1


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
    # The output classifier's score of the picture a picture job started from (None: other kinds, or no
    # classifier); what it made is judged by the higher of this and each image's own (dreamcore.moderation).
    source_score: float | None = None


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
        self, base: StableDiffusionXLPipeline, refiner: StableDiffusionXLImg2ImgPipeline, device: torch.device,
        sources: tuple[str, str] = ("", ""),
    ):
        self.base = base
        self.refiner = refiner
        self.device = device
        self.sources = sources  # where base and refiner came from (the compile cache's file is theirs)
        self._timesteps_cache: dict[tuple[str, int], list[int]] = {}
        self._reused: dict[tuple[type, str], object] = {}  # see reused()
        self.memory: memory.MemoryPlan | None = None  # set when placed on the device (memory.place)
        self.levers = speed.PLAIN
        self.speed = speed.SpeedReport()
        self.step_cache = None  # a stepcache.StepCache on the base UNet, with DREAMBOT_STEP_CACHE
        self.compiled: speed.Compiled | None = None  # with compile
        # The LoRA adapters the base UNet holds, by name (worker/adapters.py): {"turbo": ...}, or none.
        self.adapters: dict[str, adapters.Adapter] = {}

    @classmethod
    def load(
        cls,
        base: str,
        refiner: str,
        device: str = "auto",
        *,
        levers: speed.Levers = speed.PLAIN,
        dtype: torch.dtype | None = None,
        offload: str = "auto",
        batch_images: int = 32,
        turbo_adapter: str = "off",
    ) -> DreamPipeline:
        """Load base and refiner (a hub id or a local folder each); the same arguments return the same instance.

        The levers (worker/speed.py) change the loaded modules in place, so each combination is its own
        instance (and its own copy of the weights: from_pretrained shares nothing between two loads).
        dtype: the weights' dtype; None is bf16 on a GPU and fp32 on a CPU (bench/fullsize.py loads the
            full-size pair in bf16 on a CPU, where fp32 would need ~23 GB).
        offload: DREAMBOT_OFFLOAD, auto|none|model (memory.plan); batch_images: the most images one
            denoising call may hold (DREAMBOT_BATCH_IMAGES); the plan keeps their working memory free, and
            may allow fewer (`.memory.batch_images`) on a device with less room.
        turbo_adapter: DREAMBOT_TURBO_ADAPTER, the turbo LoRA put on the base UNet (worker/adapters.py); off: none.
        """
        key = (base, refiner, device, levers, dtype, offload, batch_images, turbo_adapter)
        with _load_lock:
            if key not in _loaded:
                dev = resolve_device(device)
                if dtype is None:
                    dtype, why = dtype_for("auto", dev, base)
                    log.info("dtype chosen", extra={"dtype": str(dtype).removeprefix("torch."), "why": why})
                base_pipe, refiner_pipe = load_pipelines(base, refiner, dtype)
                _loaded[key] = cls.from_parts(base_pipe, refiner_pipe, dev, levers=levers, offload=offload,
                                              batch_images=batch_images, sources=(base, refiner),
                                              turbo_adapter=turbo_adapter)
            return _loaded[key]

    @classmethod
    def from_parts(
        cls,
        base: StableDiffusionXLPipeline,
        refiner: StableDiffusionXLImg2ImgPipeline,
        device: torch.device,
        *,
        levers: speed.Levers = speed.PLAIN,
        offload: str = "auto",
        batch_images: int = 32,
        sources: tuple[str, str] = ("", ""),
        turbo_adapter: str = "off",
    ) -> DreamPipeline:
        """The worker's pipeline over two stock pipelines already built (load's from disk; bench/gpu_sdxl.py's
        from random weights made on the GPU): the numbered steps every worker's models go through."""
        # 1. diffusers decodes the last stage's latents itself (output_type="pt"); sliced, one image at a
        # time, so a batch's decode needs the memory of one 1024 px decode (the peak of a whole job).
        base.vae.enable_slicing()
        for stage in (base, refiner):
            # Attention stays diffusers' default for torch 2, AttnProcessor2_0 (FusedAttnProcessor2_0 with
            # fuse_qkv), i.e. torch's scaled_dot_product_attention. On CUDA SDPA already picks the fastest
            # kernel that fits (FlashAttention for bf16 with these head sizes, else memory-efficient
            # attention, else the math fallback), so no custom attention kernels or processors are needed.
            stage.set_progress_bar_config(disable=True)  # the worker reports progress itself
        pipe = cls(base, refiner, device, sources)
        pipe.levers = levers
        # 2. The turbo adapter, read as diffusers loads it on the plain base UNet ...
        turbo = adapters.load_turbo(pipe, turbo_adapter, levers)
        # 3. ... the levers that change what the weights are (fused projections, layout) ...
        speed.before_placing(pipe, levers)
        # 4. ... the adapter put on the layers they left (worker/adapters.py), off until a turbo call ...
        if turbo is not None:
            adapters.attach(pipe, turbo_adapter, turbo)
        # 5. ... so that the memory plan counts what is really placed on the device ...
        memory.place(pipe, offload, batch_images)
        # 6. ... and those that work on the placed weights: fp8 quantizes where it runs, compile warms up.
        speed.after_placing(pipe, levers, pipe.memory.batch_images)
        return pipe

    def modules_once(self) -> dict[str, torch.nn.Module]:
        """Every model of both pipelines, a shared one (text_encoder_2, the VAE) once."""
        named: dict[str, torch.nn.Module] = {}
        for prefix, pipe in (("", self.base), ("refiner ", self.refiner)):
            for name, module in pipe.components.items():
                if isinstance(module, torch.nn.Module) and all(module is not m for m in named.values()):
                    named[prefix + name] = module
        return named

    # -- the step split ---------------------------------------------------------------------------------

    def reused(self, cls: type, which: str = "base"):
        """The base's (or the refiner's) own modules as a `cls` pipeline (img2img, inpainting), built once:
        nothing loaded or held twice. Only the scheduler is a fresh copy, so one pipeline's begin index never
        leaks into another's next run."""
        key = (cls, which)
        if key not in self._reused:
            src = self.base if which == "base" else self.refiner
            components = dict(src.components)
            scheduler = components["scheduler"]
            components["scheduler"] = type(scheduler).from_config(scheduler.config)
            built = cls(**components,
                        requires_aesthetics_score=src.config.get("requires_aesthetics_score", False),
                        force_zeros_for_empty_prompt=src.config.get("force_zeros_for_empty_prompt", True))
            built.set_progress_bar_config(disable=True)
            if self.memory is not None and self.memory.offload == "model":
                built.enable_model_cpu_offload(device=self.device)  # its own hooks, ending each of its calls
            self._reused[key] = built
        return self._reused[key]

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
        adapters.check(self, req)  # a turbo dream on a worker without turbo: the member is told
        prompt, negative = load_styles()[req.style].apply(req.prompt, req.negative_prompt)
        base_steps, refiner_steps, fraction = self.split_steps(req.steps, req.base_steps)
        use_refiner = fraction is not None
        encoded = encode_prompts(self.base, self.refiner if use_refiner else None, prompt, negative)
        self.sync()
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

        All items must share size, steps, base steps, guidance and adapter (batch_geometry, i.e.
        DreamJob.batch_key), else ValueError: a turbo and a quality request never share a call. Items whose prompts were encoded in the same number of chunks share one base (and
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
                "requests in one batch must share size, steps, base steps and guidance, and one adapter; got "
                + ", ".join(geometry_text(g) for g in sorted(geometries))
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
        # Compiled for this geometry: the batch runs at its bucket (speed.Compiled), the rows past `n` being
        # fillers (the first item's prompt, seed 0) that are dropped before the decode.
        tokens = first.encoded.base.prompt_embeds.shape[1]
        # A turbo call runs the base UNet uncompiled (adapters.running): no filler rows for it.
        adapter = first.req.adapter
        padded = self.compiled.bucket(width, height, tokens, n) if self.compiled is not None and not adapter else n
        self.sync()
        t_start = time.perf_counter()

        # One generator per image, seeded with that image's seed: randn_tensor draws each image's starting
        # noise from its own generator, so image i of a batch is the image its seed gives alone. CPU
        # generators (diffusers moves the noise to the GPU) make a seed's starting noise the same on every
        # machine, GPU or not; drawing 4x128x128 numbers on the CPU costs nothing.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds + [0] * (padded - n)]
        counted = {"base": 0, "refiner": 0}
        last_step = LastStep(self)
        cache = self.step_cache if not adapter else None  # 4 distilled steps: none to reuse
        unguided_after = (speed.unguided_from(refiner_steps, self.levers.refiner_unguided_steps)
                          if use_refiner else None)

        def callback(stage: str, stage_total: int, offset: int, last_stage: bool):
            def on_step_end(pipe, i: int, t, tensors: dict) -> dict:
                counted[stage] += 1
                if on_step is not None:
                    on_step(StepEvent(stage, i + 1, stage_total, offset + i + 1, total, tensors["latents"],
                                      rows=dict(rows)))
                last_step.mark(i + 1 == stage_total)
                changed = {}
                if cache is not None and stage == "base":
                    cache.step_done(i)
                if stage == "refiner" and i == unguided_after:
                    changed.update(speed.drop_guidance(pipe, tensors))
                if last_stage and i + 1 == stage_total and padded > n:
                    changed["latents"] = tensors["latents"][:n]  # the fillers are never decoded
                return changed

            return on_step_end

        common = dict(
            num_inference_steps=first.req.steps,
            guidance_scale=first.req.guidance,
            generator=generators,
        )

        def parts(stage: str) -> dict[str, torch.Tensor]:
            embeds = [(getattr(it.encoded, stage), it.req.count) for it in items]
            return batch_kwargs(embeds + ([(getattr(first.encoded, stage), padded - n)] if padded > n else []))

        # The base hands latents to the refiner; the last stage decodes them the pipelines' own way
        # (un-scaling, VAE, watermark, post-processing: DECODED), timed from its last step.
        if cache is not None:
            cache.start()
        try:
            # The adapter (and its scheduler) on for this call alone, or every adapter off.
            with adapters.running(self, self.base, adapter):
                out = self.base(
                    **parts("base"),
                    width=width,
                    height=height,
                    denoising_end=fraction,
                    callback_on_step_end=callback("base", base_steps, 0, not use_refiner),
                    callback_on_step_end_tensor_inputs=["latents"],
                    output_type="latent" if use_refiner else DECODED,
                    **common,
                ).images
        finally:
            if cache is not None:
                cache.stop()
        self.sync()
        t_base = last_step.at if not use_refiner else time.perf_counter()

        if use_refiner:
            out = self.refiner(
                **parts("refiner"),
                image=out,  # 4-channel latents go in as they are, no VAE encode
                denoising_start=fraction,  # continue the same schedule: no fresh noise is added
                callback_on_step_end=callback("refiner", refiner_steps, base_steps, True),
                callback_on_step_end_tensor_inputs=["latents"] + (speed.GUIDED_TENSORS if unguided_after is not None
                                                                  else []),
                output_type=DECODED,
                **common,
            ).images
        if self.compiled is not None:
            self.compiled.after_call()
        self.sync()
        t_end = time.perf_counter()
        t_refined = last_step.at if use_refiner else t_base
        decoded = checked_images(out)
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

    def sync(self) -> None:
        # CUDA runs asynchronously: wait for it so each stage's time is that stage's.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# What the last pipeline call of a job returns: its images decoded by diffusers itself (the latents
# un-scaled with the VAE's latents_mean/std or scaling factor, the VAE's own upcast rule, the watermark when
# installed, the image processor's post-processing) as float tensors in [0, 1], so a NaN survives to be seen.
DECODED = "pt"


class LastStep:
    """When the last denoising step of a pipeline call ended (synced on a GPU): what comes after it is the
    pipeline's decode."""

    def __init__(self, pipe: DreamPipeline):
        self.pipe = pipe
        self.at = time.perf_counter()

    def mark(self, last: bool) -> None:
        if last:
            self.pipe.sync()
            self.at = time.perf_counter()


def checked_images(images: torch.Tensor) -> list[tuple[Image.Image, bool]]:
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
