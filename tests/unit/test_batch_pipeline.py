"""Several requests in one denoising call (DreamPipeline.prepare + generate_prepared) and the speed options
of DreamPipeline.load, on the tiny SDXL model on the CPU: real diffusers, no mocks. The other levers:
tests/unit/test_speed_levers.py."""

from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
import numpy as np  # noqa: E402

from dreamcore.job import make_request  # noqa: E402
from tests.support.pixels import assert_different, assert_same_image, pixels  # noqa: E402
from worker import speed  # noqa: E402
from worker.pipeline import DreamPipeline, StepEvent  # noqa: E402
from worker.prompts import PromptTooLong  # noqa: E402

# Every request of the batch shares this geometry: 1024x1024 (the default aspect), 2 steps (base 1 + refiner 1)
# and guidance 5, so classifier-free guidance runs and each item's negative prompt matters.
GEOMETRY = dict(steps=2, split=0.5, guidance=5.0)


def _req(**kw):
    for k, v in GEOMETRY.items():
        kw.setdefault(k, v)
    return make_request(**kw)


def _words(n_tokens: int) -> str:
    """A prompt of exactly n_tokens tokens in the tiny tokenizer (as in test_pipeline.py)."""
    return ("abcd " * n_tokens)[: n_tokens + n_tokens // 4].strip()


A = _req(prompt="a lighthouse in a storm", seed=7, count=2)
B = _req(prompt="a red fox in the snow", negative_prompt="blurry", seed=123)
C = _req(prompt="an old map of the sea", seed=999)
LONG = _req(prompt=_words(100), seed=55)  # two 75-token chunks: can't share a call with the others


@pytest.fixture(scope="module")
def pipe(tiny_model_dir) -> DreamPipeline:
    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), device="cpu")


@pytest.fixture(scope="module")
def solo(pipe):
    """Each request alone, through generate(), with its step events."""
    out = {}
    for name, req in (("A", A), ("B", B), ("C", C), ("LONG", LONG)):
        events: list[StepEvent] = []
        out[name] = (pipe.generate(req, on_step=events.append), events)
    return out


@pytest.fixture(scope="module")
def batch(pipe):
    """A, LONG, B, C as one batch: A, B and C share a call (4 images), LONG runs in a second one."""
    events: list[StepEvent] = []
    items = [pipe.prepare(r) for r in (A, LONG, B, C)]
    return pipe.generate_prepared(items, on_step=events.append), events


def test_each_image_equals_its_request_alone(solo, batch):
    gens, _ = batch
    assert len(gens) == 4
    for gen, name in zip(gens, ("A", "LONG", "B", "C"), strict=True):
        alone = solo[name][0]
        assert gen.seeds == alone.seeds
        assert len(gen.images) == len(alone.images)
        for got, want in zip(gen.images, alone.images, strict=True):
            assert got.size == want.size == (1024, 1024)
            assert_same_image(got, want)
        assert not gen.nan_detected
        assert gen.prompt_note == alone.prompt_note
    assert gens[0].seeds == [7, 8]
    assert gens[1].prompt_note == "prompt is 100 tokens: encoded in 2 chunks of 75"
    # The comparison can fail: other seeds and other prompts give clearly different images.
    a0, a1 = gens[0].images
    assert_different(a0, a1)
    assert_different(a0, gens[2].images[0])
    assert_different(gens[2].images[0], gens[3].images[0])
    assert_different(a0, gens[1].images[0])


def test_rows_steps_and_timings(solo, batch):
    gens, events = batch
    # Two calls, in the order of the items: {A, B, C} (one chunk) first, then LONG (two chunks).
    assert [e.done for e in events] == [1, 2, 1, 2]
    assert all(e.total == 2 for e in events)
    assert [e.stage for e in events] == ["base", "refiner"] * 2
    first, second = events[:2], events[2:]
    assert all(e.rows == {0: slice(0, 2), 2: slice(2, 3), 3: slice(3, 4)} for e in first)
    assert all(e.latents.shape == (4, 4, 128, 128) for e in first)
    assert all(e.rows == {1: slice(0, 1)} for e in second)
    assert all(e.latents.shape == (1, 4, 128, 128) for e in second)
    for gen in gens:
        assert (gen.base_steps, gen.refiner_steps) == (1, 1)
        assert gen.timings["base_s"] > 0 and gen.timings["refiner_s"] > 0 and gen.timings["decode_s"] > 0
        assert gen.timings["total_s"] == pytest.approx(
            gen.timings["encode_s"] + gen.timings["base_s"] + gen.timings["refiner_s"] + gen.timings["decode_s"],
            abs=0.05,
        )
    assert [(g.timings["batch_images"], g.timings["batch_jobs"]) for g in gens] == [(4, 3), (1, 1), (4, 3), (4, 3)]
    # A, B and C shared one call, so its times; LONG's call was its own.
    assert gens[0].timings["base_s"] == gens[2].timings["base_s"] == gens[3].timings["base_s"]
    assert gens[1].timings["base_s"] != gens[0].timings["base_s"]
    # A request alone: one call, rows {0: all its images}, and generate() keeps its old timing keys.
    alone, alone_events = solo["A"]
    assert [e.rows for e in alone_events] == [{0: slice(0, 2)}] * 2
    assert set(alone.timings) == {"encode_s", "base_s", "refiner_s", "decode_s", "total_s"}


def test_mismatched_batch_is_refused(pipe):
    a = pipe.prepare(A)
    for other in (
        _req(prompt="x", seed=1, steps=4),  # another step count
        _req(prompt="x", seed=1, split=1.0),  # another base/refiner cut (no refiner)
        _req(prompt="x", seed=1, aspect="9:7"),  # another size
        _req(prompt="x", seed=1, guidance=6.0),  # another guidance scale
    ):
        with pytest.raises(ValueError, match="must share size, steps, base steps and guidance"):
            pipe.generate_prepared([a, pipe.prepare(other)])
    assert pipe.generate_prepared([]) == []


def test_prepare_refuses_a_too_long_prompt_alone(pipe):
    with pytest.raises(PromptTooLong):
        pipe.prepare(_req(prompt=_words(400), seed=1))


# -- speed options ------------------------------------------------------------------------------------------


def _attn_processors(module) -> set[str]:
    return {type(p).__name__ for p in module.attn_processors.values()}


def _channels_last(module) -> bool:
    convs = [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    return all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_fuse_qkv_and_channels_last_keep_the_image(pipe, solo, tiny_model_dir, caplog):
    base, refiner = str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner")
    levers = speed.Levers(fuse_qkv=True, channels_last=True)
    with caplog.at_level(logging.INFO, logger="dreambot.worker"):
        fast = DreamPipeline.load(base, refiner, device="cpu", levers=levers)
    assert "fuse_qkv skipped" not in caplog.text
    assert fast is not pipe
    assert DreamPipeline.load(base, refiner, device="cpu", levers=levers) is fast
    # Two loads share no modules, so fusing one leaves the other as it was.
    assert fast.base.unet is not pipe.base.unet and fast.base.vae is not pipe.base.vae
    assert fast.refiner.vae is fast.base.vae  # still one VAE, fused once
    assert list(speed.denoisers(fast)) == ["base UNet", "refiner UNet", "VAE"]
    # The tiny VAE has no attention (worker/tiny.py): the VAE with one is fused below.
    for module in (fast.base.unet, fast.refiner.unet):
        assert _attn_processors(module) == {"FusedAttnProcessor2_0"}
    for module in (pipe.base.unet, pipe.refiner.unet):
        assert _attn_processors(module) == {"AttnProcessor2_0"}
        assert not any(hasattr(m, "to_qkv") or hasattr(m, "to_kv") for m in module.modules())
    assert all(map(_channels_last, (fast.base.unet, fast.refiner.unet, fast.base.vae)))
    assert not any(map(_channels_last, (pipe.base.unet, pipe.refiner.unet, pipe.base.vae)))

    got = fast.generate(C)
    # Measured on the CPU: fuse_qkv alone gives the identical image; channels_last (other convolution
    # kernels, summing in another order) at most 1 level on about 0.4% of the pixels, hence a looser share
    # than batching's.
    diff = np.abs(pixels(got.images[0]) - pixels(solo["C"][0].images[0]))
    assert diff.max() <= 2, diff.max()
    assert (diff > 0).mean() <= 0.01, (diff > 0).mean()
    assert not got.nan_detected


def test_fuse_qkv_fuses_a_vaes_attention_and_frees_its_projections():
    """SDXL's VAE has self-attention in its middle blocks (the tiny model's has none, for time): speed.fuse_qkv
    fuses it as it does the UNets' and frees the three projections it replaces, with the same output."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 8), norm_num_groups=4, sample_size=32).eval()
    assert _attn_processors(vae) == {"AttnProcessor2_0"}
    latents = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        want = vae.decode(latents).sample
        projections = sum(p.numel() * p.element_size() for name, p in vae.named_parameters()
                          if ".to_q." in name or ".to_k." in name or ".to_v." in name)
        assert speed.fuse_qkv("VAE", vae) == projections > 0
        assert _attn_processors(vae) == {"FusedAttnProcessor2_0"}
        assert not any(hasattr(m, "to_q") for m in vae.modules() if hasattr(m, "to_qkv"))
        assert torch.allclose(vae.decode(latents).sample, want, atol=1e-5)


@pytest.mark.skipif(
    os.environ.get("DREAMBOT_TEST_COMPILE") != "1",
    reason="inductor compiles for minutes on a CPU (about 3 min warm-up + 2.5 min at 1024x1024 measured); "
    "set DREAMBOT_TEST_COMPILE=1 to run (tests/unit/test_speed_levers.py traces the same code with aot_eager)",
)
def test_compile_for_real(solo, tiny_model_dir):
    base, refiner = str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner")
    compiled = DreamPipeline.load(base, refiner, device="cpu",
                                  levers=speed.Levers(compile=True, compile_buckets=(1,)))
    got = compiled.generate(C)
    diff = np.abs(pixels(got.images[0]) - pixels(solo["C"][0].images[0]))
    assert diff.max() <= 2 and (diff > 0).mean() <= 0.01, (diff.max(), (diff > 0).mean())
