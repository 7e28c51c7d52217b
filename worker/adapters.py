"""LoRA adapters on the base UNet, switched per pipeline call: one base UNet serves every mode (dreamcore.modes).

Turbo is SDXL-Lightning's 4-step LoRA (DREAMBOT_TURBO_ADAPTER) on the SDXL base, run with its own scheduler
(Euler with "trailing" timesteps: 999, 749, 499, 249 for 4 steps) and no guidance. The adapter's layers are
put into the base UNet once, at load, by diffusers + peft (`load_lora_weights`); `running()` turns them on
for the one pipeline call of a turbo dream or variation, with the turbo scheduler, and off again (and the
base's own scheduler back) when that call ends, however it ends: a cancel or an error inside the call
included. Outside a `running(..., "turbo")` the adapter is off, so no step of a quality call runs with it.

Why the adapter stays unfused. A disabled peft LoRA layer returns exactly its base layer's output (it calls
`base_layer(x)` and adds nothing), so a quality call on a UNet that holds the adapter is bit-for-bit the call
on one that never loaded it (tests/unit/test_adapters.py checks this with torch.equal). Fusing it into the
weights (`fuse_lora`: W + s·B·A) would save a turbo call the LoRA's small matmuls, but switching back to
quality would then need peft's unmerge, W + s·B·A − s·B·A, which in bf16 is not W: every quality image would
drift a little with each switch. So the adapter is never merged, and a turbo call pays the unfused LoRA's
extra low-rank matmuls beside every adapted layer's own (a GPU bench measures what that costs).

With the speed levers (worker/speed.py):
  fuse_qkv     stays on. It replaces an attention's to_q/to_k/to_v with one to_qkv (to_k/to_v with to_kv for
               cross-attention), so a LoRA on the unfused projections would never run. The adapter is read
               the way diffusers loads it on the plain UNet, then put on the fused layers instead: the q/k/v
               LoRAs of one attention become one LoRA on to_qkv with A = [A_q; A_k; A_v] and B the block
               diagonal of B_q, B_k, B_v, which adds exactly each projection's own B·A rows (the zero blocks
               add nothing). The quality path keeps the fused layers it has without an adapter.
  compile      the compiled UNet is traced with the adapter off, and a turbo call runs the base UNet's own
               (eager) forward (speed.Compiled.uncompiled): switching the adapter's layers on would fail the
               compiled code's guards and compile again in a member's job. A turbo call so forgoes compile's
               speed-up on its 4 UNet passes; its VAE decode still runs compiled where its shape was warmed.
  step_cache   never on a turbo call: 4 distilled steps have no neighbouring steps to reuse.
  fp8          refused with an adapter, at load, naming both settings: torchao's filter would take peft's
               wrapped linears, the LoRA's own small matrices included, and nothing measures that turbo
               error (the load's fp8 check runs with the adapter off). Run turbo or fp8, not both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreamcore import metrics
from dreamcore.modes import TURBO

from .errors import TurboUnavailable
from .sources import ADAPTER_OFF, ModelLoadError, adapter_source

log = logging.getLogger("dreambot.worker")

SETTING = "DREAMBOT_TURBO_ADAPTER"


def _euler_trailing(config):
    from diffusers import EulerDiscreteScheduler

    # SDXL-Lightning's: Euler over "trailing" timesteps (the last one 999, then evenly down), its training grid.
    return EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing")


# The schedulers an adapter runs with (dreamcore.modes.Recipe.scheduler), each built from the base's config.
SCHEDULERS: dict[str, Callable] = {"euler-trailing": _euler_trailing}


@dataclass
class Adapter:
    """One LoRA held by the base UNet, and its switch."""

    name: str  # dreamcore.modes.Recipe.adapter: "turbo"
    source: str  # the setting's value
    file: str  # the .safetensors file read
    scheduler: str  # a SCHEDULERS key
    layers: list = field(default_factory=list, repr=False)  # the base UNet's peft LoRA layers holding it
    on: bool = False
    switches: int = 0  # times it was turned on or off (each turbo call: 2)

    def switch(self, on: bool) -> None:
        if on == self.on:
            return
        for layer in self.layers:
            layer.enable_adapters(on)
        self.on = on
        self.switches += 1
        metrics.ADAPTER_SWITCHES.labels(self.name).inc()

    def describe(self) -> str:
        return f"{self.name}: {self.source} ({len(self.layers)} layers, {self.switches // 2} calls)"


# -- the switch ------------------------------------------------------------------------------------------------


def check(pipe, req) -> None:
    """TurboUnavailable (a ValueError: the member is told) for a request whose adapter this worker lacks."""
    if req.adapter and req.adapter not in pipe.adapters:
        raise TurboUnavailable()


@contextmanager
def running(pipe, stage, adapter: str) -> Iterator[None]:
    """One call of `stage` (pipe.base, or a pipeline over its modules such as pipe.reused's img2img) with
    `adapter` on and its scheduler in place of the stage's, both undone when the call ends, even by an
    exception (a cancel raised from a step callback); "" runs the call with every adapter off."""
    if not adapter:
        for held in pipe.adapters.values():
            held.switch(False)  # already off outside a `running`: this only makes sure
        yield
        return
    held = pipe.adapters.get(adapter)
    if held is None:
        raise TurboUnavailable()
    own = stage.scheduler
    uncompiled = pipe.compiled.uncompiled("base UNet") if pipe.compiled is not None else nullcontext()
    try:
        # A fresh scheduler each call: nothing of one call's state (its begin index) reaches the next.
        stage.scheduler = SCHEDULERS[held.scheduler](own.config)
        with uncompiled:
            held.switch(True)
            yield
    finally:
        held.switch(False)
        stage.scheduler = own


# -- loading ---------------------------------------------------------------------------------------------------


def adapter_file(value: str, setting: str = SETTING) -> Path:
    """The local .safetensors file an adapter setting names; a hub file comes from the HF cache (downloaded
    there when HF_HUB_OFFLINE is unset). ModelLoadError, naming the setting, when it can't be had."""
    kind, where, filename = adapter_source(setting, value)
    if kind == "file":
        return Path(where)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(where, filename))
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises its errors, httpx's, OSError ...
        offline = (" (HF_HUB_OFFLINE is set, so it must already be in the cache: run `dreambot fetch-models`)"
                   if os.environ.get("HF_HUB_OFFLINE") else "")
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelLoadError(setting, value, f"could not load it from the hub or its cache{offline} "
                             f"({type(err).__name__}: {first})") from err


def read_lora(base, file: Path, name: str, value: str, setting: str = SETTING) -> dict[str, tuple]:
    """The adapter in `file` as diffusers + peft load it on the base pipeline's plain UNet, one entry per layer
    it adapts: {module name: (A, B times the layer's scaling)}. The UNet is left as it was (the LoRA layers
    are taken out again, the very modules put back), before the levers change the layers the LoRA targets."""
    from peft.tuners.lora import LoraLayer
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    def refuse(reason: str) -> ModelLoadError:
        return ModelLoadError(setting, value, reason)

    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise refuse(f"can't read {file} ({type(err).__name__}: {err})") from err
    try:
        # diffusers' own reading of the file (kohya's and the older diffusers formats converted, the network
        # alphas found), then its loader for the UNet: what `load_lora_weights(file)` does for the UNet.
        state, alphas = base.lora_state_dict(state, unet_config=base.unet.config)
        if any(key.startswith(("text_encoder.", "text_encoder_2.")) for key in state):
            raise refuse("it adapts the text encoders too, which the quality path shares: only a UNet LoRA can "
                         "be switched per call")
        base.load_lora_into_unet(state, alphas, base.unet, adapter_name=name)
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - diffusers/peft raise ValueError, KeyError, RuntimeError ...
        base.unload_lora_weights()
        raise refuse(f"{file} is not a LoRA of this base model ({type(err).__name__}: "
                     f"{' '.join(str(err).split())[:300]})") from err
    try:
        layers: dict[str, tuple] = {}
        for module_name, module in base.unet.named_modules():
            if not isinstance(module, LoraLayer) or name not in module.lora_A:
                continue
            if name in getattr(module, "lora_variant", {}) or getattr(module, "lora_bias", {}).get(name, False):
                raise refuse("only a plain LoRA is supported (no DoRA or LoRA bias)")
            a = module.lora_A[name].weight.detach().float().clone()
            b = module.lora_B[name].weight.detach().float() * module.scaling[name]
            layers[module_name] = (a, b)
    finally:
        base.unload_lora_weights()
    if not layers:
        raise refuse(f"{file} holds no layer of this base model's UNet")
    return layers


def on_fused_layers(unet: torch.nn.Module, layers: dict[str, tuple]) -> dict[str, tuple]:
    """`layers` (read_lora's) for the UNet as the levers left it: where fuse_qkv joined an attention's
    projections, that attention's q/k/v LoRAs as one LoRA on the fused layer (A stacked, B block-diagonal)."""
    out: dict[str, tuple] = {}
    fused: dict[str, dict[str, tuple]] = {}
    for module_name, ab in layers.items():
        parent, _, proj = module_name.rpartition(".")
        if proj in ("to_q", "to_k", "to_v") and parent:
            attn = unet.get_submodule(parent)
            if getattr(attn, "fused_projections", False) and proj in _fused_parts(attn):
                fused.setdefault(parent, {})[proj] = ab
                continue
        out[module_name] = ab
    for parent, parts in fused.items():
        attn = unet.get_submodule(parent)
        names = _fused_parts(attn)
        target = "to_kv" if attn.is_cross_attention else "to_qkv"
        layer = getattr(attn, target)
        rows = layer.out_features // len(names)  # FusedAttnProcessor2_0 splits the output evenly
        a_parts, b_parts = [], []
        for proj in names:
            a, b = parts.get(proj, (torch.zeros(0, layer.in_features), torch.zeros(rows, 0)))
            a_parts.append(a)
            b_parts.append(b)
        out[f"{parent}.{target}"] = (torch.cat(a_parts), torch.block_diag(*b_parts))
    return out


def _fused_parts(attn) -> tuple[str, ...]:
    return ("to_k", "to_v") if attn.is_cross_attention else ("to_q", "to_k", "to_v")


def install(base, layers: dict[str, tuple], name: str) -> list:
    """Put `layers` into the base UNet as adapter `name` (diffusers' load_lora_weights, scaling 1: read_lora
    folded each layer's into its B), turned off; the peft layers that hold it."""
    from peft.tuners.lora import LoraLayer

    state = {}
    for module_name, (a, b) in layers.items():
        state[f"unet.{module_name}.lora_A.weight"] = a.contiguous()
        state[f"unet.{module_name}.lora_B.weight"] = b.contiguous()
    base.load_lora_into_unet(state, None, base.unet, adapter_name=name)
    held = [m for m in base.unet.modules() if isinstance(m, LoraLayer) and name in m.lora_A]
    for layer in held:
        layer.enable_adapters(False)
    return held


def load_turbo(pipe, value: str, levers) -> dict[str, tuple] | None:
    """Step one of two (DreamPipeline.from_parts): the turbo adapter a DREAMBOT_TURBO_ADAPTER value names,
    read as diffusers loads it on the plain base UNet; None for off. `attach` puts it on the UNet once
    the levers have changed it."""
    if value == ADAPTER_OFF:
        return None
    if levers.fp8 != "off":
        raise ModelLoadError(SETTING, value, f"can't run beside DREAMBOT_FP8={levers.fp8}: fp8 would quantize the "
                             "layers under the LoRA; set DREAMBOT_TURBO_ADAPTER=off or DREAMBOT_FP8=off")
    file = adapter_file(value)
    return {"file": str(file), "layers": read_lora(pipe.base, file, TURBO.adapter, value)}


def attach(pipe, value: str, read: dict) -> Adapter:
    """Step two: the adapter `load_turbo` read, on the base UNet as the levers left it, off."""
    layers = on_fused_layers(pipe.base.unet, read["layers"])
    held = Adapter(TURBO.adapter, value, read["file"], TURBO.scheduler,
                   install(pipe.base, layers, TURBO.adapter))
    pipe.adapters[held.name] = held
    log.info("adapter loaded", extra={"adapter": held.name, "source": value, "file": held.file,
                                      "layers": len(held.layers),
                                      "fused_qkv": sum(n.rsplit(".", 1)[-1] in ("to_qkv", "to_kv") for n in layers)})
    return held
