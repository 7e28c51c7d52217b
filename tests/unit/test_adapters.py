"""mode:turbo on the worker (worker/adapters.py): the tiny model's turbo LoRA on its base UNet, switched per
pipeline call, through the real diffusers + peft pipelines on the CPU (no mocks). A turbo dream runs 4 base
steps at Lightning's trailing timesteps and no refiner; the adapter really changes the image (fuse_qkv on, as
the worker loads it), as diffusers' own LoRA loading would; a quality image is bit-identical before a turbo
call, after it (a cancelled one too) and on a pipeline that never loaded the adapter; turbo and quality never
share a call; a turbo variation runs the tail of the same 4-step schedule; a worker without the adapter fails a
turbo job telling its member why; a bad adapter setting stops the load naming DREAMBOT_TURBO_ADAPTER."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
import numpy as np  # noqa: E402

from dreamcore.cost import img2img_steps  # noqa: E402
from dreamcore.job import make_job, make_origin, make_request  # noqa: E402
from dreamcore.modes import TURBO  # noqa: E402
from worker import speed  # noqa: E402
from worker.errors import TurboUnavailable  # noqa: E402
from worker.img2img import vary  # noqa: E402
from worker.pipeline import DreamPipeline  # noqa: E402
from worker.sources import ModelLoadError  # noqa: E402

# The levers the worker's default settings give on a CPU (fuse_qkv and channels_last on; compile auto is off
# without CUDA).
LEVERS = speed.Levers(fuse_qkv=True, channels_last=True)
QUALITY = make_request(prompt="a lighthouse at dusk", seed=7, steps=4, split=0.5, guidance=7.0)
TURBO_REQ = make_request(prompt="a lighthouse at dusk", seed=7, mode="turbo")
LIGHTNING_4 = [999, 749, 499, 249]


def _load(tiny_model_dir, levers=LEVERS, turbo: bool = True, **kw) -> DreamPipeline:
    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu", levers=levers,
                              turbo_adapter=str(tiny_model_dir / "turbo") if turbo else "off", **kw)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return _load(tiny_model_dir)


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    """The same levers, no adapter: a pool with DREAMBOT_TURBO_ADAPTER=off."""
    return _load(tiny_model_dir, turbo=False)


@contextmanager
def unet_calls(unet):
    """(timestep, batch rows) of every call of `unet`, as they come."""
    seen: list[tuple[int, int]] = []

    def hook(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        seen.append((int(t), sample.shape[0]))

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def _latents(pipe: DreamPipeline, req):
    """The request's image and its latents after its last step (what the decode gets)."""
    last = {}

    def on_step(ev):
        last["latents"] = ev.latents.clone()

    gen = pipe.generate(req, on_step=on_step)
    return gen, last["latents"]


def _px(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_a_turbo_dream_runs_four_base_steps_at_the_lightning_timesteps_unguided_and_no_refiner(pipe):
    own = pipe.base.scheduler
    with unet_calls(pipe.base.unet) as base, unet_calls(pipe.refiner.unet) as refiner:
        gen = pipe.generate(TURBO_REQ)
    assert [t for t, _ in base] == LIGHTNING_4 == [999, 749, 499, 249]
    assert {rows for _, rows in base} == {1}  # guidance 0: one UNet pass per step, no negative half
    assert refiner == []
    assert (gen.base_steps, gen.refiner_steps) == (TURBO.steps, 0)
    assert not gen.nan_detected and gen.images[0].size == (1024, 1024)
    # The call's own scheduler is gone with it: the base's is back, unchanged.
    assert pipe.base.scheduler is own and own.config.timestep_spacing == "leading"
    assert not pipe.adapters["turbo"].on and pipe.adapters["turbo"].switches % 2 == 0
    from dreamcore import metrics

    assert metrics.ADAPTER_SWITCHES.labels("turbo")._value.get() >= 2


def test_the_adapter_changes_the_turbo_image_as_diffusers_own_lora_loading_would(pipe, tiny_model_dir,
                                                                                 monkeypatch):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    turbo = pipe.generate(TURBO_REQ).images[0]
    # The adapter's layers really sit on the fused projections (fuse_qkv on) ...
    layers = {type(layer.base_layer).__name__ for layer in pipe.adapters["turbo"].layers}
    assert layers == {"Linear"}
    fused = [layer for layer in pipe.adapters["turbo"].layers if layer.base_layer.out_features == 96]
    assert fused, "no LoRA on a fused to_qkv"
    # ... and make the image: the same call with nothing switched on (the turbo scheduler, no guidance) differs.
    with monkeypatch.context() as m:
        m.setattr(pipe.adapters["turbo"], "layers", [])
        without = pipe.generate(TURBO_REQ).images[0]
    changed = np.abs(_px(turbo) - _px(without))
    assert changed.mean() > 4 and (changed > 0).mean() > 0.9, (changed.mean(), (changed > 0).mean())
    # What plain diffusers makes of the same LoRA file on an unfused UNet (the documented Lightning recipe):
    # the same image, to a level of rounding (the fused LoRA adds the same products in another order).
    ref = StableDiffusionXLPipeline.from_pretrained(str(tiny_model_dir / "base"))
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(tiny_model_dir / "turbo"))
    ref.scheduler = EulerDiscreteScheduler.from_config(ref.scheduler.config, timestep_spacing="trailing")
    want = ref(TURBO_REQ.prompt, num_inference_steps=4, guidance_scale=0.0,
               generator=[torch.Generator("cpu").manual_seed(TURBO_REQ.seed)]).images[0]
    assert np.abs(_px(turbo) - _px(want)).max() <= 2


def test_a_quality_image_is_bit_identical_before_and_after_turbo_and_without_the_adapter(pipe, plain):
    before, lat_before = _latents(pipe, QUALITY)
    pipe.generate(TURBO_REQ)
    after, lat_after = _latents(pipe, QUALITY)

    # A turbo call cancelled in its second step (what a member's /cancel raises from the step callback).
    class Cancelled(Exception):
        pass

    def cancel(ev):
        if ev.step == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        pipe.generate(TURBO_REQ, on_step=cancel)
    assert not pipe.adapters["turbo"].on
    after_cancel, lat_cancel = _latents(pipe, QUALITY)
    never, lat_never = _latents(plain, QUALITY)
    assert (before.base_steps, before.refiner_steps) == (2, 2)
    for other in (lat_after, lat_cancel, lat_never):
        assert torch.equal(lat_before, other)
    for other in (after, after_cancel, never):
        assert np.array_equal(_px(before.images[0]), _px(other.images[0]))
    # The base UNet itself, on fresh random inputs: the adapter off is no adapter at all.
    inputs = speed.random_unet_inputs(pipe.base, pipe.device, seed=3)
    with torch.inference_mode():
        assert torch.equal(pipe.base.unet(**inputs).sample, plain.base.unet(**inputs).sample)


def test_turbo_and_quality_never_share_a_denoising_call(pipe):
    # A quality request with the turbo recipe's numbers: only the adapter tells them apart.
    lookalike = make_request(prompt="a lighthouse", seed=1, steps=4, guidance=0.0, split=1.0)
    with pytest.raises(ValueError, match=r"1024x1024/4/4/0/turbo") as err:
        pipe.generate_prepared([pipe.prepare(TURBO_REQ), pipe.prepare(lookalike)])
    assert "1024x1024/4/4/0," in str(err.value) or str(err.value).endswith("1024x1024/4/4/0")
    assert make_job(TURBO_REQ, _origin()).batch_key != make_job(lookalike, _origin()).batch_key


def test_a_turbo_variation_runs_the_tail_of_the_four_step_schedule(pipe):
    source = pipe.generate(QUALITY).images[0]
    with unet_calls(pipe.base.unet) as base:
        gen = vary(pipe, TURBO_REQ, source, 0.55)
    n, run = img2img_steps(TURBO_REQ.steps, 0.55)  # what dreamcore.cost charges a variation
    assert (n, run) == (4, 2)
    assert [t for t, _ in base] == LIGHTNING_4[-run:] and gen.base_steps == run and gen.refiner_steps == 0
    assert np.abs(_px(gen.images[0]) - _px(source)).mean() > 1
    from diffusers import StableDiffusionXLImg2ImgPipeline

    assert pipe.reused(StableDiffusionXLImg2ImgPipeline).scheduler.config.timestep_spacing == "leading"  # its own again
    assert not pipe.adapters["turbo"].on


def _origin():
    return make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=5)


def test_a_worker_without_turbo_fails_a_turbo_job_telling_its_member(tiny_env, rconn, tiny_model_dir, plain, pipe):
    from dreamcore import results
    from dreamcore.queue.rq_queues import DreamQueue
    from dreamcore.settings import get_settings, load_settings
    from tests.support.fleet import image_store
    from worker.runner import load_pipeline, make_worker

    off = load_pipeline(load_settings().model_copy(update={"turbo_adapter": "off"}))
    assert off.adapters == {}
    with pytest.raises(TurboUnavailable, match=r"^Turbo isn't set up on this pool's GPUs; try mode:quality$"):
        off.prepare(TURBO_REQ)
    with pytest.raises(TurboUnavailable):
        vary(off, TURBO_REQ, pipe.generate(QUALITY).images[0], 0.55)

    box = results.Outbox(rconn, "bot1", "test")
    box.ensure_group()
    turbo, quality = make_job(TURBO_REQ, _origin()), make_job(QUALITY, _origin())
    queue = DreamQueue(rconn, get_settings())
    for job in (turbo, quality):
        queue.enqueue(job)
    make_worker(get_settings(), rconn, off, name="no-turbo").work(burst=True, logging_level="WARNING")
    got = {}
    for entry in box.read(block_ms=100, count=100):
        got[entry.job_id] = results.load(rconn, image_store(), entry.job_id)
        box.ack(entry)
    assert got[quality.job_id][0].status == "done"
    failed = got[turbo.job_id][0]
    assert failed.status != "done" and "Turbo isn't set up on this pool's GPUs; try mode:quality" in failed.error

    # A worker with the adapter (the tests' settings point DREAMBOT_TURBO_ADAPTER at the tiny one) runs it.
    again = make_job(TURBO_REQ, _origin())
    queue.enqueue(again)
    make_worker(get_settings(), rconn, load_pipeline(get_settings()), name="turbo").work(
        burst=True, logging_level="WARNING")
    (entry,) = box.read(block_ms=100, count=100)
    result, _images = results.load(rconn, image_store(), entry.job_id)
    assert entry.job_id == again.job_id and result.status == "done"
    assert (result.base_steps, result.refiner_steps) == (4, 0)


def test_a_bad_adapter_setting_stops_the_load_naming_it(tiny_model_dir, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=rf"^DREAMBOT_TURBO_ADAPTER={missing}: no adapter found there"):
        DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu",
                           turbo_adapter=str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"^DREAMBOT_TURBO_ADAPTER=.*: a folder without pytorch_lora_weights"):
        DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu",
                           turbo_adapter=str(empty))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=r"^DREAMBOT_TURBO_ADAPTER=.*broken.safetensors: can't read"):
        DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu",
                           turbo_adapter=str(broken))
    # A hub file not in the cache, offline (the worker runs with HF_HUB_OFFLINE after fetch-models).
    with pytest.raises(ModelLoadError, match=r"^DREAMBOT_TURBO_ADAPTER=acme/none/x.safetensors: could not load it "
                                             r"from the hub or its cache \(HF_HUB_OFFLINE is set"):
        DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu",
                           turbo_adapter="acme/none/x.safetensors")
    # fp8 would quantize the layers under the LoRA: refused before anything is read.
    with pytest.raises(ModelLoadError, match=r"^DREAMBOT_TURBO_ADAPTER=.*: can't run beside DREAMBOT_FP8=weights"):
        _load(tiny_model_dir, levers=speed.Levers(fp8="weights"))


def test_compiled_quality_graphs_survive_turbo_calls_and_no_step_cache_runs_on_them(tiny_model_dir, pipe):
    """The real torch.compile (aot_eager, as tests/unit/test_speed_levers.py) over a UNet holding the disabled adapter,
    with a step cache: turbo calls run the base UNet uncompiled, compile nothing and leave the step cache alone;
    quality images stay exactly what they were."""
    old = speed.Compiled.BACKEND
    speed.Compiled.BACKEND = "aot_eager"
    try:
        compiled = _load(tiny_model_dir, levers=speed.Levers(fuse_qkv=True, channels_last=True, compile=True,
                                                             compile_buckets=(1,), step_cache=2))
    finally:
        speed.Compiled.BACKEND = old
    assert compiled.compiled is not None and compiled.speed.compile_error is None
    graphs = speed._graphs()
    before, lat_before = _latents(compiled, QUALITY)
    cache = compiled.step_cache
    steps = (cache.full_steps, cache.cached_steps)
    turbo = compiled.generate(TURBO_REQ)
    assert (cache.full_steps, cache.cached_steps) == steps and not cache.active
    _after, lat_after = _latents(compiled, QUALITY)
    assert speed._graphs() == graphs  # nothing compiled for the turbo call, nor again for quality
    assert torch.equal(lat_before, lat_after)
    assert compiled.compiled.bypassed == set()
    assert np.abs(_px(turbo.images[0]) - _px(pipe.generate(TURBO_REQ).images[0])).max() <= 2
