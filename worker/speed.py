"""The worker's speed levers, applied in place to a DreamPipeline when it is built (DreamPipeline.from_parts).

Lossless (on by default; each keeps a seed's image within bf16 tolerance, tests/unit/test_speed_levers.py):
  fuse_qkv       one q/k/v (self-attention) or k/v (cross-attention) matmul instead of three or two, in both
                 UNets and the VAE; the unfused copies diffusers keeps for unfusing are freed (1.84 GiB for
                 SDXL's pair in bf16), since the worker never unfuses.
  channels_last  NHWC memory for the convolutions, the layout cuDNN's fastest kernels want.
  compile        torch.compile of both UNets and the VAE decoder, for the shapes warmed up at start only
                 (every batch bucket of each aspect in DREAMBOT_COMPILE_ASPECTS): a member's job never waits on
                 a compile, and other shapes run uncompiled. A batch is padded up to its bucket (powers of two)
                 so the compiled shapes stay few. The compiled code is saved with torch.compiler's cache
                 artifacts and loaded at the next start, so a restarted worker skips inductor's work.
Lossy (off by default; bench/gpu_sdxl.py reports each one's deviation beside its speed):
  fp8            the UNets' transformer linears in float8 through torchao: `weights` (memory), or `dynamic`
                 (activations too, on fp8 matrix units). The UNets' output error against the unquantized
                 ones, on fresh random inputs, is measured at load and logged.
  step_cache     DeepCache on the base (worker/stepcache.py).
  refiner_unguided_steps  the refiner's last steps without classifier-free guidance: one UNet pass each
                 instead of two (`drop_guidance`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dreamcore.job import ASPECTS, DreamRequest
from dreamcore.ranges import IMAGES

from .errors import is_oom
from .sources import ModelLoadError

if TYPE_CHECKING:  # pipeline.py imports this module to apply the levers at load
    from dreamcore.settings import Settings

    from .pipeline import DreamPipeline

log = logging.getLogger("dreambot.worker")


@dataclass(frozen=True)
class Levers:
    """Which levers a DreamPipeline is built with (the settings' of the same names)."""

    fuse_qkv: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_cache: str = ""  # a folder for the compiled code; "" keeps it in this process only
    compile_aspects: tuple[str, ...] = ("1:1",)
    # The batch buckets compiled; () is every bucket the batch limit allows (`buckets`). bench/gpu_sdxl.py
    # names the two it measures, to spend its minutes of GPU time on timing rather than compiling.
    compile_buckets: tuple[int, ...] = ()
    fp8: str = "off"
    step_cache: int = 0
    refiner_unguided_steps: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, device: torch.device) -> Levers:
        return cls(
            fuse_qkv=settings.fuse_qkv,
            channels_last=settings.channels_last,
            compile=settings.compile == "on" or (settings.compile == "auto" and device.type == "cuda"),
            compile_cache=settings.compile_cache,
            compile_aspects=tuple(settings.compile_aspect_list),
            fp8=settings.fp8,
            step_cache=settings.step_cache,
            refiner_unguided_steps=settings.refiner_unguided_steps,
        )

    @property
    def lossy(self) -> list[str]:
        on = []
        if self.fp8 != "off":
            on.append(f"fp8={self.fp8}")
        if self.step_cache:
            on.append(f"step_cache={self.step_cache}")
        if self.refiner_unguided_steps:
            on.append(f"refiner_unguided_steps={self.refiner_unguided_steps}")
        return on


PLAIN = Levers()  # none on: stock diffusers


@dataclass
class SpeedReport:
    """What applying the levers did, for the load log, /healthz and the bench."""

    freed_bytes: int = 0  # the unfused q/k/v copies
    fp8_error: dict[str, float] = field(default_factory=dict)  # module -> relative output error
    compile_s: float | None = None  # the warm-up, compiles included
    compile_cache: str | None = None  # "loaded <file> (<bytes>)", "none yet at <file>", "off"
    graphs: int = 0  # graphs compiled at the warm-up
    compile_error: str | None = None  # why compile was given up at the warm-up (the worker runs uncompiled)


def describe(pipe: DreamPipeline) -> str:
    """The levers in force, in words (the worker's /healthz): the lossy ones named as such."""
    lv, done = pipe.levers, pipe.speed
    on = [name for name in ("fuse_qkv", "channels_last") if getattr(lv, name)]
    if pipe.compiled is not None:
        on.append(f"compile ({', '.join(lv.compile_aspects)}; batches of {', '.join(map(str, pipe.compiled.buckets))})")
    elif lv.compile:
        on.append(f"compile failed ({done.compile_error}): uncompiled")
    lossy = lv.lossy
    return (", ".join(on) or "none") + (f"; lossy: {', '.join(lossy)}" if lossy else "")


def denoisers(pipe: DreamPipeline) -> dict[str, torch.nn.Module]:
    """The UNets and the VAE, each once: the refiner's VAE is the base's object, so it is not listed twice
    (a second fuse would redo the work and allocate its fused weights again for nothing)."""
    named = {"base UNet": pipe.base.unet, "refiner UNet": pipe.refiner.unet, "VAE": pipe.base.vae}
    if pipe.refiner.vae is not pipe.base.vae:
        named["refiner VAE"] = pipe.refiner.vae
    return named


# -- before the weights are placed ---------------------------------------------------------------------------


def before_placing(pipe: DreamPipeline, levers: Levers) -> None:
    """fuse_qkv and channels_last, on the loaded modules (memory.place then counts what they leave)."""
    modules = denoisers(pipe)
    if levers.fuse_qkv:
        pipe.speed.freed_bytes = sum(fuse_qkv(name, module) for name, module in modules.items())
    if levers.channels_last:
        for module in modules.values():
            module.to(memory_format=torch.channels_last)


def fuse_qkv(name: str, module: torch.nn.Module) -> int:
    """Fuse one model's attention projections and free the unfused ones; the bytes freed."""
    from diffusers.models.attention_processor import Attention

    fuse = getattr(module, "fuse_qkv_projections", None)
    if fuse is None:
        log.info("fuse_qkv skipped", extra={"module": name, "reason": "no fuse_qkv_projections()"})
        return 0
    try:
        # Concatenates the projections' weights into to_qkv (self-attention) or to_kv (cross-attention) and
        # switches the module to FusedAttnProcessor2_0, which reads only those and to_q for cross-attention.
        fuse()
    except ValueError as err:  # e.g. "not supported for models having added KV projections"
        log.info("fuse_qkv skipped", extra={"module": name, "reason": str(err)})
        return 0
    freed = 0
    for attn in module.modules():
        if not isinstance(attn, Attention) or not getattr(attn, "fused_projections", False):
            continue
        # diffusers keeps the originals to unfuse later; the worker never does, so they are only memory.
        for unused in (("to_k", "to_v") if attn.is_cross_attention else ("to_q", "to_k", "to_v")):
            old = getattr(attn, unused)
            freed += sum(p.numel() * p.element_size() for p in old.parameters())
            delattr(attn, unused)
    return freed


# -- after the weights are placed -----------------------------------------------------------------------------


def after_placing(pipe: DreamPipeline, levers: Levers, batch_limit: int) -> None:
    """fp8, the step cache and compile, on the placed modules (fp8 quantizes on the device it runs on)."""
    if levers.fp8 != "off":
        pipe.speed.fp8_error = quantize_fp8(pipe, levers.fp8)
    if levers.step_cache:
        from .stepcache import StepCache

        pipe.step_cache = StepCache(pipe.base.unet, levers.step_cache)
    if levers.compile:
        compiled = Compiled(pipe, levers, batch_limit)
        try:
            compiled.install()
            compiled.warm_up()
        except Exception as err:  # noqa: BLE001 - a compiler bug must not keep the worker from serving
            if is_oom(err):
                raise
            compiled.uninstall()
            # The whole message on one line, cut: dynamo's first line often only names the backend.
            pipe.speed.compile_error = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            log.error("compile failed at the warm-up: running uncompiled", extra={"error": pipe.speed.compile_error})
        else:
            pipe.compiled = compiled


def _fp8_config(mode: str, dev: torch.device):
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Float8WeightOnlyConfig,
            PerRow,
        )
    except ImportError as err:
        raise ModelLoadError("DREAMBOT_FP8", mode, "needs torchao: install the worker with the fp8 extra "
                             "(pip install 'dreambot[worker,fp8]')") from err
    if mode == "weights":
        return Float8WeightOnlyConfig()
    capability = torch.cuda.get_device_capability(dev) if dev.type == "cuda" else None
    if capability is None or capability < (8, 9):
        where = f"compute capability {capability[0]}.{capability[1]}" if capability else "a CPU"
        raise ModelLoadError("DREAMBOT_FP8", mode, f"needs fp8 matrix units (a GPU of compute capability 8.9 "
                             f"or more: L4, L40S, H100, H200, RTX 40xx); this is {where}: use weights or off")
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def _transformer_linear(module: torch.nn.Module, fqn: str) -> bool:
    """The linears fp8 pays for: the transformer blocks' (attention projections, feed-forward, proj_in/out),
    whose matrices are large and see 1024s of tokens. The time and class embeddings see one row per image."""
    return (isinstance(module, torch.nn.Linear) and ".attentions." in f".{fqn}"
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def quantize_fp8(pipe: DreamPipeline, mode: str) -> dict[str, float]:
    """Both UNets' transformer linears in float8; the relative error of each UNet's output, on fresh random
    inputs, against what it gave before: ‖out − ref‖ / ‖ref‖."""
    if pipe.memory is not None and pipe.memory.offload != "none":
        raise ModelLoadError("DREAMBOT_FP8", mode, "quantizes the models where they run: it needs them all "
                             "resident on the GPU (DREAMBOT_OFFLOAD=none, or auto on a card that fits them)")
    config = _fp8_config(mode, pipe.device)  # first: it says what is missing
    from torchao.quantization import quantize_

    errors = {}
    for name, stage in (("base UNet", pipe.base), ("refiner UNet", pipe.refiner)):
        inputs = random_unet_inputs(stage, pipe.device, seed=len(errors))
        with torch.inference_mode():
            before = stage.unet(**inputs).sample.float()
        quantize_(stage.unet, config, filter_fn=_transformer_linear)
        with torch.inference_mode():
            after = stage.unet(**inputs).sample.float()
        errors[name] = float((after - before).norm() / before.norm())
    log.info("fp8 applied", extra={"mode": mode, "output_error": {k: round(v, 5) for k, v in errors.items()}})
    return errors


def random_unet_inputs(stage, dev: torch.device, seed: int, batch: int = 2, side: int = 64) -> dict:
    """Fresh random inputs of a pipeline's UNet (a batch of `batch` rows, latents of side x side), in its
    dtype: what an output comparison runs on (never zeros: they hide wrong indexing)."""
    unet = stage.unet
    cfg = unet.config
    dtype = next(p for p in unet.parameters() if p.is_floating_point()).dtype
    g = torch.Generator("cpu").manual_seed(seed)
    text_dim = stage.text_encoder_2.config.projection_dim
    n_time = (cfg.projection_class_embeddings_input_dim - text_dim) // cfg.addition_time_embed_dim

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dev, dtype)

    return {
        "sample": randn(batch, cfg.in_channels, side, side),
        "timestep": torch.randint(1, 1000, (1,), generator=g).to(dev),
        "encoder_hidden_states": randn(batch, 77, cfg.cross_attention_dim),
        "added_cond_kwargs": {"text_embeds": randn(batch, text_dim),
                              "time_ids": (torch.rand(batch, n_time, generator=g) * 1024).to(dev, dtype)},
    }


# -- the refiner's unguided last steps ------------------------------------------------------------------------

# What the refiner's step callback must be handed to drop guidance (its _callback_tensor_inputs).
GUIDED_TENSORS = ["prompt_embeds", "add_text_embeds", "add_time_ids"]


def unguided_from(refiner_steps: int, unguided: int) -> int | None:
    """After which refiner step (0-based) guidance is dropped, or None. The first step always runs guided:
    the callback that drops it runs only after a step."""
    n = min(unguided, refiner_steps - 1)
    return refiner_steps - n - 1 if n > 0 else None


def drop_guidance(pipe, tensors: dict) -> dict:
    """From the next step on, one UNet pass on the prompt alone: what diffusers' documented "dynamic CFG"
    callback does. The pipeline concatenates [negative, positive] when guiding, so the positive half is kept;
    its guidance scale set to 0 makes do_classifier_free_guidance false for the remaining steps (it is set
    again at the start of every call)."""
    if not pipe.do_classifier_free_guidance:  # a dream of guidance 1 or less was never guided
        return {}
    pipe._guidance_scale = 0.0
    return {k: tensors[k].chunk(2)[-1] for k in GUIDED_TENSORS}


# -- compile --------------------------------------------------------------------------------------------------


def buckets(limit: int) -> list[int]:
    """The batch sizes compiled: powers of two up to the most images one call holds, and that number."""
    out, b = [], 1
    while b < limit:
        out.append(b)
        b *= 2
    return [*out, limit]


def _shape_key(args, kwargs) -> tuple:
    """The shapes and dtypes of a forward's tensor arguments (one level into dicts, for added_cond_kwargs)."""
    key = []
    for name, value in [*enumerate(args), *sorted(kwargs.items())]:
        values = sorted(value.items()) if isinstance(value, dict) else [(None, value)]
        for sub, v in values:
            if isinstance(v, torch.Tensor):
                key.append((name, sub, tuple(v.shape), v.dtype))
    return tuple(key)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class Compiled:
    """torch.compile for a DreamPipeline's UNets and VAE decoder, used only for the shapes warmed up.

    Each module's `forward` becomes a dispatcher, outside the compiled code: during the warm-up it records the
    shapes it sees and runs the compiled forward; afterwards, a call of a recorded shape runs compiled and any
    other runs the module's own forward. So a member's job never waits minutes on a compile, and a shape the
    warm-up did not cover (another aspect, a long prompt, an upscale tile) runs as it would uncompiled.
    """

    # Inductor's default mode: its fused kernels without minutes of max-autotune benchmarking per shape. No
    # CUDA graphs: each shape would hold its own memory pool, and a 1024 px UNet pass is long enough that
    # launch overhead is small.
    MODE = "default"
    # torch.compile's backend. bench/gpu_sdxl.py's CPU rehearsal uses "aot_eager": dynamo and AOTAutograd
    # trace exactly what inductor would be given, without minutes of C++ code generation.
    BACKEND = "inductor"

    def __init__(self, pipe: DreamPipeline, levers: Levers, batch_limit: int):
        self.pipe = pipe
        self.levers = levers
        call_limit = pipe.memory.call_images if pipe.memory is not None and pipe.memory.call_images else None
        limit = min(max(batch_limit, IMAGES.hi), call_limit or 10**6)
        self.buckets = list(levers.compile_buckets) or buckets(limit)
        self.geometries: set[tuple[int, int, int]] = set()  # (width, height, tokens) warmed
        self.shapes: dict[str, set[tuple]] = {}
        self.warming = False
        self.graphs_seen = 0
        self.file = cache_file(pipe, levers)
        self.modules = {"base UNet": pipe.base.unet, "refiner UNet": pipe.refiner.unet,
                        "VAE decoder": pipe.base.vae.decoder}
        # Every warmed shape is a graph of its own (x2 where a step cache or unguided steps run another
        # graph of the same shape): dynamo's default of 8 per function would send the rest back to eager.
        per_module = 4 * len(self.buckets) * len(levers.compile_aspects) + 8
        import torch._dynamo.config as dynamo_config

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), per_module))
        self.eager: dict[str, object] = {}
        self.bypassed: set[str] = set()  # modules running their own forward for now (`uncompiled`)

    def install(self) -> None:
        for name, module in self.modules.items():
            self._install(name, module)

    def _install(self, name: str, module: torch.nn.Module) -> None:
        eager = self.eager[name] = module.forward
        mode = self.MODE if self.pipe.device.type == "cuda" and self.BACKEND == "inductor" else None
        compiled = torch.compile(eager, backend=self.BACKEND, mode=mode, dynamic=False)
        seen = self.shapes.setdefault(name, set())

        def forward(*args, **kwargs):
            if name in self.bypassed:
                return eager(*args, **kwargs)
            key = _shape_key(args, kwargs)
            if self.warming:
                seen.add(key)
                return compiled(*args, **kwargs)
            return (compiled if key in seen else eager)(*args, **kwargs)

        module.forward = forward

    @contextmanager
    def uncompiled(self, *names: str):
        """Calls of these modules (names of `self.modules`) run their own forward meanwhile, whatever their
        shape: a turbo call's base UNet, whose adapter layers the compiled code was not traced with
        (worker/adapters.py)."""
        before = set(self.bypassed)
        self.bypassed.update(names)
        try:
            yield
        finally:
            self.bypassed = before

    def uninstall(self) -> None:
        """Every module installed back to its own forward."""
        for name, eager in self.eager.items():
            self.modules[name].forward = eager

    # -- the warm-up, with the saved code loaded first and saved after --------------------------------------

    def warm_up(self) -> None:
        report = self.pipe.speed
        report.compile_cache = self._load()
        t0 = time.perf_counter()
        graphs = _graphs()
        self.warming = True
        try:
            with torch.inference_mode():
                for aspect in self.levers.compile_aspects:
                    width, height = ASPECTS[aspect]
                    for bucket in self.buckets:
                        items = self._warm_items(aspect, bucket)
                        self.geometries.add((width, height, items[0].encoded.base.prompt_embeds.shape[1]))
                        self.pipe._denoise(items, list(range(len(items))), width, height, None)
        finally:
            self.warming = False
        report.compile_s = time.perf_counter() - t0
        report.graphs = _graphs() - graphs
        self.graphs_seen = _graphs()
        self._save()
        log.info("compiled and warmed up", extra={
            "seconds": round(report.compile_s, 2), "graphs": report.graphs, "buckets": self.buckets,
            "aspects": list(self.levers.compile_aspects), "cache": report.compile_cache})

    def _warm_items(self, aspect: str, images: int):
        """Prepared requests of `aspect` with `images` images in all. Four steps, split in half: both stages
        run at least two steps, so a step cache's reusing step and an unguided refiner step are warmed too."""
        counts = [IMAGES.hi] * (images // IMAGES.hi) + ([images % IMAGES.hi] if images % IMAGES.hi else [])
        return [self.pipe.prepare(DreamRequest(prompt="warm-up", seed=i, steps=4, split=0.5, guidance=7.0,
                                               count=c, aspect=aspect)) for i, c in enumerate(counts)]

    def bucket(self, width: int, height: int, tokens: int, images: int) -> int:
        """The batch a call of `images` images runs at: its bucket where that geometry is compiled."""
        if (width, height, tokens) not in self.geometries:
            return images
        return next((b for b in self.buckets if b >= images), images)

    def after_call(self) -> None:
        """A call outside the warm-up that still compiled (a shape or guard the warm-up missed): say so, and
        keep the new code for the next start."""
        now = _graphs()
        if now > self.graphs_seen and not self.warming:
            log.warning("compiled during a job", extra={"graphs": now - self.graphs_seen})
            self.graphs_seen = now
            self._save()

    def _load(self) -> str:
        return load_code(self.file)

    def _save(self) -> None:
        save_code(self.file)


def load_code(file: Path | None) -> str:
    """Load compiled code saved by an earlier start (torch.compiler's cache artifacts: inductor's kernels and
    AOTAutograd's graphs), before anything compiles; what happened, in words."""
    if file is None:
        return "off (DREAMBOT_COMPILE_CACHE is empty)"
    if not file.is_file():
        return f"none yet at {file}"
    try:
        data = file.read_bytes()
        # None where torch could not read it (it logs why); a stale file's entries simply never match.
        loaded = torch.compiler.load_cache_artifacts(data)
    except Exception as err:  # noqa: BLE001 - a bad file only costs a cold compile
        log.warning("compile cache not loaded", extra={"file": str(file), "error": f"{type(err).__name__}: {err}"})
        loaded = None
    if loaded is None:
        return f"unreadable at {file}: compiled afresh"
    return f"loaded {file} ({len(data) / 2**20:.1f} MiB)"


def save_code(file: Path | None) -> None:
    """Save everything compiled in this process so far, for the next start."""
    if file is None:
        return
    try:
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return
        data, _info = saved
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(file)  # whole or not at all, for a worker starting meanwhile
        log.info("compile cache saved", extra={"file": str(file), "mib": round(len(data) / 2**20, 1)})
    except OSError as err:  # a read-only or full volume: the next start compiles again, nothing else
        log.warning("compile cache not saved", extra={"file": str(file), "error": str(err)})


def cache_file(pipe: DreamPipeline, levers: Levers) -> Path | None:
    """The compiled code's file: one per torch build, device, models, dtype and levers, since the code is
    specific to all of them (a file for other ones would only miss)."""
    if not levers.compile_cache:
        return None
    dev = pipe.device
    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    dtype = next(pipe.base.unet.parameters()).dtype
    code = {k: v for k, v in asdict(levers).items() if k != "compile_cache"}
    identity = repr((torch.__version__, torch.version.cuda, device, pipe.sources, str(dtype), sorted(code.items())))
    held = getattr(pipe, "adapters", None)
    if held:  # the UNet traced holds the adapter's (disabled) layers: its own file
        identity += repr(sorted((a.name, a.source) for a in held.values()))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return Path(levers.compile_cache).expanduser() / f"sdxl-{digest}.bin"
