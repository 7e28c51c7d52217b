"""DREAMBOT_OFFLOAD: the memory tier each device gets (worker/memory.py), and the model-offload tier running
for real on the CPU through diffusers' and accelerate's hooks, with the same images as all-resident."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dreamcore.job import make_request  # noqa: E402
from worker import memory  # noqa: E402
from worker.img2img import upscale, vary  # noqa: E402
from worker.pipeline import DreamPipeline  # noqa: E402
from worker.weights import ModelLoadError  # noqa: E402

GIB = memory.GIB
CUDA = torch.device("cuda", 0)
# Full-size SDXL base + refiner in bf16 with the shipped fuse_qkv, its unfused copies freed (bench/memory_tiers.py,
# bench/RESULTS.md section 9).
FULL = {"unet": int(4.78 * GIB), "refiner unet": int(4.21 * GIB), "text_encoder_2": int(1.29 * GIB),
        "text_encoder": int(0.23 * GIB), "vae": int(0.16 * GIB)}


def working(n: int) -> int:  # working_bytes for full-size 16-bit
    return int((3 + 0.75 * (n - 1)) * GIB)


def plan(setting: str, free_gib: float | None, batch: int = 8):
    return memory.plan(setting, CUDA if free_gib is not None else torch.device("cpu"), FULL, working, batch,
                       None if free_gib is None else int(free_gib * GIB))


def test_working_memory_scales_with_the_unet_the_dtype_and_the_batch():
    with torch.device("meta"):
        full = torch.nn.Linear(1, memory.FULL_SIZE_UNET_PARAMS, bias=False, dtype=torch.bfloat16)
        full32 = torch.nn.Linear(1, memory.FULL_SIZE_UNET_PARAMS, bias=False, dtype=torch.float32)
        tiny = torch.nn.Linear(1, 1000, bias=False, dtype=torch.float32)
    assert memory.working_bytes(full, 1) == working(1) == 3 * GIB
    assert memory.working_bytes(full, 8) == working(8)
    assert memory.working_bytes(full32, 1) == 6 * GIB
    assert memory.working_bytes(tiny, 8) < 100_000


# free GiB -> (tier, largest batch): an 80 GB card, a 24 GB one (all resident, batches of 8: 10.67 GiB of weights
# + 3 + 7 x 0.75), an 18 GB and a 16 GB one (all resident, smaller batches), 12 GB and 10 GB (model offload).
@pytest.mark.parametrize(("free_gib", "tier", "batch"), [(79.0, "none", 8), (23.0, "none", 8), (17.8, "none", 6),
                                                         (15.5, "none", 3), (11.2, "model", 5), (9.5, "model", 3)])
def test_auto_takes_the_fastest_tier_that_fits_with_the_largest_batch_that_fits(free_gib, tier, batch):
    p = plan("auto", free_gib)
    assert (p.offload, p.batch_images) == (tier, batch)
    assert f"has {free_gib:.2f} GiB free" in p.why
    assert p.resident_bytes <= free_gib * GIB
    assert p.resident_bytes == (sum(FULL.values()) if tier == "none" else FULL["unet"]) + working(batch)
    assert ("would not fit" in p.why) == (batch < 8)
    # One more image would not have fitted: the batch is the largest there is room for.
    if batch < 8:
        need = memory.needs(FULL, working(batch + 1))[tier]
        assert need > free_gib * GIB


def test_a_gpu_that_fits_fewer_images_a_call_than_a_dream_asks_says_it_makes_them_in_parts():
    # 10 GB with model offload: 3 images a call. With batching off (DREAMBOT_BATCH_IMAGES=1) a 4-image dream
    # is still one call; the plan says how many that call may hold, so worker/make.py splits it.
    p = plan("auto", 9.5, batch=1)
    assert (p.offload, p.batch_images, p.call_images) == ("model", 1, 3)
    assert p.resident_bytes == FULL["unet"] + working(3) <= 9.5 * GIB  # a 3-image part's peak, not one image's
    assert "a dream of more than 3 images is made 3 at a time" in p.why
    assert "a dream of more than 3 images made in parts" in p.describe()  # the worker's /healthz
    assert memory.needs(FULL, working(4))["model"] > 9.5 * GIB  # a fourth image would not have fitted
    # Room for four or more: no parts, and the figure is what fits up to the settings' batch.
    assert (plan("auto", 23).call_images, plan("auto", 23, batch=2).call_images) == (8, 4)
    assert "made" not in plan("auto", 23).why and "parts" not in plan("auto", 23).describe()
    assert plan("auto", None).call_images is None  # a CPU: no device limit


def test_a_gpu_too_small_for_either_tier_fails_at_start_naming_what_it_has_and_needs():
    with pytest.raises(ModelLoadError) as err:
        plan("auto", 7.5)
    msg = str(err.value)
    assert msg.startswith("DREAMBOT_OFFLOAD=auto: cuda:0 has 7.50 GiB free")
    assert "all resident needs 13.67 GiB" in msg and "model offload 7.78 GiB (unet 4.78 GiB" in msg
    assert msg.endswith("this GPU can't run the models")


def test_an_explicit_tier_is_honoured_or_refused_with_the_figures():
    assert plan("model", 79).offload == "model"
    assert (plan("none", 23).offload, plan("none", 17.8).batch_images) == ("none", 6)
    with pytest.raises(ModelLoadError, match=r"DREAMBOT_OFFLOAD=none: cuda:0 has 11.20 GiB free; with one image, "
                                             r"all resident needs 13.67 GiB .* use auto or model"):
        plan("none", 11.2)
    with pytest.raises(ModelLoadError, match="too little even for model offload"):
        plan("model", 6)
    with pytest.raises(ModelLoadError, match="DREAMBOT_OFFLOAD=sometimes: must be one of auto, none, model"):
        plan("sometimes", 79)


def test_on_a_cpu_auto_keeps_everything_in_ram():
    p = plan("auto", None)
    assert p.offload == "none" and p.free_bytes is None and p.batch_images == 8 and "in RAM" in p.why


def test_module_bytes_counts_a_shared_tensor_once():
    a, b = torch.nn.Linear(10, 10), torch.nn.Linear(10, 10)
    b.weight = a.weight
    sizes = memory.module_bytes({"a": a, "b": b})
    assert sizes == {"a": (100 + 10) * 4, "b": 10 * 4}


def test_settings_reject_an_unknown_tier_by_name():
    from dreamcore.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="DREAMBOT_OFFLOAD"):
        load_settings(DREAMBOT_OFFLOAD="half")
    assert load_settings(DREAMBOT_OFFLOAD="model").offload == "model"


@pytest.fixture(scope="module")
def tiers(tiny_model_dir):
    base, refiner = str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner")
    resident = DreamPipeline.load(base, refiner, "cpu", offload="none")
    offloaded = DreamPipeline.load(base, refiner, "cpu", offload="model")
    return resident, offloaded


def _pixels(images) -> list[bytes]:
    return [np.asarray(im).tobytes() for im in images]


def test_model_offload_runs_through_the_hooks_and_draws_the_same_images(tiers):
    resident, offloaded = tiers
    assert resident.memory.offload == "none" and offloaded.memory.offload == "model"
    # diffusers' offload put accelerate's hook on every model of both pipelines (the shared ones too).
    for pipe in (offloaded.base, offloaded.refiner):
        assert all(hasattr(m, "_hf_hook") for m in pipe.components.values() if isinstance(m, torch.nn.Module))
    assert not hasattr(resident.base.unet, "_hf_hook")
    req = make_request(prompt="a lighthouse at dusk", seed=11, steps=4, count=2)
    a, b = resident.generate(req), offloaded.generate(req)
    assert _pixels(a.images) == _pixels(b.images)
    assert (b.base_steps, b.refiner_steps) == (a.base_steps, a.refiner_steps) and b.refiner_steps > 0
    # Twice in a row: each call re-arms the hooks at its end (maybe_free_model_hooks); nothing is left broken.
    assert _pixels(offloaded.generate(req).images) == _pixels(a.images)


def test_model_offload_variations_and_upscales_match_too(tiers):
    resident, offloaded = tiers
    req = make_request(prompt="a lighthouse at dusk", seed=3, steps=4)
    source = resident.generate(req).images[0].resize((128, 96))  # small: the upscale is 4 tiles
    varied = [vary(p, req, source, 0.6, size=(128, 96)).images for p in (resident, offloaded)]
    assert _pixels(varied[0]) == _pixels(varied[1])
    up = [upscale(p, req, source, 0.3, tile=128, overlap=32).images for p in (resident, offloaded)]
    assert up[1][0].size == (256, 192) and _pixels(up[0]) == _pixels(up[1])
