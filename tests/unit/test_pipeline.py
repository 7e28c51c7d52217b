"""DreamPipeline and the chunked prompt encoder on the tiny SDXL model: real diffusers, no mocks."""

from __future__ import annotations

import io
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
import numpy as np  # noqa: E402

from dreamcore.job import make_request  # noqa: E402
from tests.support import ROOT  # noqa: E402
from worker.pipeline import DreamPipeline, StepEvent  # noqa: E402
from worker.prompts import CHUNK_TOKENS, MAX_CHUNKS, PromptTooLong, count_tokens, encode_prompts  # noqa: E402
from worker.weights import ModelLoadError  # noqa: E402


@pytest.fixture(scope="module")
def pipe(tiny_model_dir) -> DreamPipeline:
    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), device="cpu")


def _req(**kw):
    # Few steps and no classifier-free guidance unless a test needs them: the tests stay fast.
    kw.setdefault("prompt", "a lighthouse in a storm")
    kw.setdefault("seed", 42)
    kw.setdefault("steps", 4)
    kw.setdefault("guidance", 1.0)
    return make_request(**kw)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# -- loading ------------------------------------------------------------------------------------------------


def test_load_once_and_share_components(pipe, tiny_model_dir):
    again = DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), device="cpu")
    assert again is pipe
    assert pipe.refiner.text_encoder_2 is pipe.base.text_encoder_2
    assert pipe.refiner.vae is pipe.base.vae
    assert pipe.base.unet.dtype == torch.float32
    assert pipe.device.type == "cpu"


def test_missing_base_folder_names_the_setting(tmp_path, tiny_model_dir):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError) as err:
        DreamPipeline.load(str(missing), str(tiny_model_dir / "refiner"), device="cpu")
    assert str(err.value).startswith(f"DREAMBOT_BASE_MODEL={missing}: no model found there")
    assert err.value.setting == "DREAMBOT_BASE_MODEL"


def test_empty_refiner_folder_names_the_setting(tmp_path, tiny_model_dir):
    with pytest.raises(ModelLoadError, match=r"^DREAMBOT_REFINER_MODEL=.*: no model found there \(.+\)"):
        DreamPipeline.load(str(tiny_model_dir / "base"), str(tmp_path), device="cpu")


def test_refiner_given_as_base_is_refused(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="DREAMBOT_BASE_MODEL=.*not an SDXL base"):
        DreamPipeline.load(str(tiny_model_dir / "refiner"), str(tiny_model_dir / "refiner"), device="cpu")


def test_uncached_hub_id_offline(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(
        ModelLoadError, match=r"^DREAMBOT_BASE_MODEL=someone/not-a-real-model-xyz: could not load"
    ):
        DreamPipeline.load("someone/not-a-real-model-xyz", str(tiny_model_dir / "refiner"), device="cpu")


# -- determinism and seeds ----------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_png(pipe):
    req = _req(seed=7, steps=4, split=0.5, guidance=5.0)
    first = pipe.generate(req)
    second = pipe.generate(req)
    assert _png(first.images[0]) == _png(second.images[0])
    assert first.seeds == [7]
    assert first.images[0].mode == "RGB"
    assert (first.width, first.height) == first.images[0].size == (1024, 1024)
    assert not first.nan_detected
    assert set(first.timings) == {"encode_s", "base_s", "refiner_s", "decode_s", "total_s"}
    assert first.timings["total_s"] >= first.timings["base_s"] > 0


def test_batch_images_differ_and_each_equals_its_seed_alone(pipe):
    batch = pipe.generate(_req(seed=1000, count=4, steps=3, split=0.6))
    assert batch.seeds == [1000, 1001, 1002, 1003]
    assert len(batch.images) == 4
    pngs = [_png(im) for im in batch.images]
    assert len(set(pngs)) == 4, "different seeds in one job must give different images"
    alone = pipe.generate(_req(seed=1002, count=1, steps=3, split=0.6))
    # Each image's noise comes from its own generator, so seed 1002 alone is image 2 of the batch. Batched
    # and single convolutions may round differently in the last float bit, so allow a rare 1-level pixel step.
    diff = np.abs(_pixels(alone.images[0]) - _pixels(batch.images[2]))
    assert diff.max() <= 1, diff.max()
    assert (diff > 0).mean() < 0.001
    assert np.abs(_pixels(alone.images[0]) - _pixels(batch.images[1])).mean() > 5


def test_aspect_sets_the_size(pipe):
    gen = pipe.generate(_req(aspect="12:5", steps=2, split=1.0))
    assert (gen.width, gen.height) == (1536, 640)
    assert gen.images[0].size == (1536, 640)


# -- the base/refiner step split ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps, split",
    [
        (4, 0.5),  # 2 + 2
        (8, 0.7),  # diffusers' own arithmetic would run 5 + 3; round(5.6) = 6 + 2
        (5, 0.8),  # 4 + 1
        (6, 0.9),  # round(5.4) = 5 + 1
        (1, 0.5),  # round(0.5) = 0: the base still runs the one step, the refiner is skipped
        (4, 1.0),  # base only
    ],
)
def test_step_split_counted_in_callbacks(pipe, steps, split):
    req = _req(steps=steps, split=split)
    events: list[StepEvent] = []
    gen = pipe.generate(req, on_step=events.append)
    want_base = min(max(round(steps * split), 1), steps)
    want_refiner = steps - want_base
    base_events = [e for e in events if e.stage == "base"]
    refiner_events = [e for e in events if e.stage == "refiner"]
    assert (len(base_events), len(refiner_events)) == (want_base, want_refiner)
    assert (gen.base_steps, gen.refiner_steps) == (want_base, want_refiner)
    assert [e.step for e in base_events] == list(range(1, want_base + 1))
    assert [e.step for e in refiner_events] == list(range(1, want_refiner + 1))
    assert all(e.stage_total == want_base for e in base_events)
    assert all(e.stage_total == want_refiner for e in refiner_events)
    assert [e.done for e in events] == list(range(1, steps + 1))
    assert all(e.total == steps for e in events)
    assert events[-1].latents.shape == (1, 4, 128, 128)
    if split == 1.0:
        assert gen.timings["refiner_s"] < 0.05


def test_split_arithmetic_is_exact_for_every_step_count(pipe):
    """No model run: the handover fraction gives exactly round(steps * split) base steps for 1..100 steps."""
    n_train = pipe.base.scheduler.config.num_train_timesteps
    for steps in range(2, 101):
        timesteps = pipe._timesteps("base", steps)
        for base_steps in range(1, steps):
            b, r, fraction = pipe.split_steps(steps, base_steps)
            assert (b, r) == (base_steps, steps - base_steps)
            # The same filter diffusers' StableDiffusionXLPipeline applies for denoising_end.
            cut = int(round(n_train - fraction * n_train))
            assert sum(1 for t in timesteps if t >= cut) == base_steps


def test_on_step_exception_propagates(pipe):
    class Cancelled(Exception):
        pass

    def cancel_at_3(event: StepEvent):
        if event.done == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        pipe.generate(_req(steps=4, split=0.5), on_step=cancel_at_3)


def test_nan_is_detected(pipe):
    def poison(event: StepEvent):
        if event.stage == "refiner":
            event.latents.fill_(float("nan"))

    gen = pipe.generate(_req(steps=2, split=0.5), on_step=poison)
    assert gen.nan_detected


# -- prompts ------------------------------------------------------------------------------------------------


def _words(n_tokens: int) -> str:
    """A prompt of exactly n_tokens tokens in the tiny tokenizer (one token per byte, spaces split words)."""
    text = ("abcd " * n_tokens)[: n_tokens + n_tokens // 4]
    return text.strip()


@pytest.mark.parametrize("negative", ["", "blurry, low quality"])
def test_short_prompt_matches_diffusers_encode_prompt(pipe, negative):
    prompt = "a watercolor fox, ünïcode 🦊"
    with torch.inference_mode():
        ours = encode_prompts(pipe.base, pipe.refiner, prompt, negative)
        for stage, mine in (("base", ours.base), ("refiner", ours.refiner)):
            sd = getattr(pipe, stage)
            theirs = sd.encode_prompt(
                prompt,
                device=torch.device("cpu"),
                do_classifier_free_guidance=True,
                negative_prompt=negative or None,
            )
            names = [
                "prompt_embeds",
                "negative_prompt_embeds",
                "pooled_prompt_embeds",
                "negative_pooled_prompt_embeds",
            ]
            for name, expected in zip(names, theirs, strict=True):
                got = getattr(mine, name)
                assert got.shape == expected.shape, (stage, name)
                assert torch.allclose(got, expected, atol=1e-6), (stage, name)
    assert ours.chunks == 1 and ours.note is None
    assert ours.base.prompt_embeds.shape[-1] == 64 and ours.refiner.prompt_embeds.shape[-1] == 32


def test_long_prompt_is_chunked_not_cut(pipe):
    prompt = _words(200)
    assert count_tokens([pipe.base, pipe.refiner], prompt) == 200
    with torch.inference_mode():
        enc = encode_prompts(pipe.base, pipe.refiner, prompt, "ugly")
        short = encode_prompts(pipe.base, pipe.refiner, _words(75), "")
    assert enc.chunks == 3
    assert enc.note == "prompt is 200 tokens: encoded in 3 chunks of 75"
    assert enc.base.prompt_embeds.shape == (1, 3 * 77, 64)
    assert enc.base.negative_prompt_embeds.shape == (1, 3 * 77, 64)  # padded to the prompt's chunks
    assert enc.refiner.prompt_embeds.shape == (1, 3 * 77, 32)
    assert enc.base.pooled_prompt_embeds.shape == (1, 32)
    assert short.chunks == 1 and short.note is None
    # The tail matters: a different last chunk changes the embeddings.
    with torch.inference_mode():
        other = encode_prompts(pipe.base, pipe.refiner, prompt[:-4] + "wxyz", "ugly")
    assert not torch.equal(other.base.prompt_embeds[:, 2 * 77 :], enc.base.prompt_embeds[:, 2 * 77 :])
    assert torch.equal(other.base.prompt_embeds[:, : 2 * 77], enc.base.prompt_embeds[:, : 2 * 77])

    gen = pipe.generate(_req(prompt=prompt, steps=2, split=0.5, guidance=3.0))
    assert gen.prompt_note == "prompt is 200 tokens: encoded in 3 chunks of 75"
    assert not gen.nan_detected


def test_long_negative_pads_the_prompt(pipe):
    with torch.inference_mode():
        enc = encode_prompts(pipe.base, pipe.refiner, "a cat", _words(100))
    assert enc.chunks == 2
    assert enc.base.prompt_embeds.shape == enc.base.negative_prompt_embeds.shape == (1, 154, 64)
    assert "negative prompt 100 tokens" in enc.note


def test_too_long_prompt_raises_with_numbers(pipe):
    limit = MAX_CHUNKS * CHUNK_TOKENS
    with pytest.raises(PromptTooLong) as err:
        pipe.generate(_req(prompt=_words(limit + 31)))
    assert isinstance(err.value, ValueError)
    assert (err.value.tokens, err.value.max_tokens) == (limit + 31, limit)
    assert f"is {limit + 31} tokens" in str(err.value) and f"the most is {limit}" in str(err.value)
    # Exactly at the limit is fine.
    with torch.inference_mode():
        assert encode_prompts(pipe.base, None, _words(limit), "").chunks == math.ceil(limit / CHUNK_TOKENS)


def test_style_is_applied(pipe):
    plain = pipe.generate(_req(prompt="a cat", steps=1, split=1.0))
    styled = pipe.generate(_req(prompt="a cat", style="cinematic", steps=1, split=1.0))
    # The cinematic template is over 75 non-space bytes, i.e. tokens in the tiny tokenizer.
    assert styled.prompt_note is not None and styled.prompt_note.startswith("prompt is ")
    assert plain.prompt_note is None
    assert _png(plain.images[0]) != _png(styled.images[0])


def test_the_worker_makes_what_diffusers_own_recipe_makes(pipe):
    """The ensemble-of-experts recipe as diffusers documents it (base to latents with denoising_end, refiner
    from them with denoising_start, the refiner's own decode to PIL), against the worker's generate: the
    same seed gives the same pixels, so the worker decodes as diffusers does (un-scaling, VAE, post-processing)
    and a diffusers upgrade that changes the decode changes both alike."""
    req = _req(steps=5, seed=123, count=1)
    ours = pipe.generate(req).images[0]
    w, h = req.size
    gen = [torch.Generator("cpu").manual_seed(123)]
    common = dict(prompt=req.prompt, negative_prompt=None, num_inference_steps=5, guidance_scale=req.guidance,
                  generator=gen)
    with torch.inference_mode():
        latents = pipe.base(**common, width=w, height=h, denoising_end=req.split, output_type="latent").images
        theirs = pipe.refiner(**common, image=latents, denoising_start=req.split, output_type="pil").images[0]
    assert ours.size == theirs.size
    assert np.abs(_pixels(ours).astype(int) - _pixels(theirs).astype(int)).max() <= 1


# -- dtype and weights variant (DREAMBOT_DTYPE, the fp16 files) -------------------------------------------


@pytest.mark.parametrize("setting, kind, capability, full, expect", [
    ("auto", "cuda", (9, 0), False, torch.bfloat16),  # H100/H200
    ("auto", "cuda", (8, 0), False, torch.bfloat16),  # A100
    ("auto", "cuda", (7, 5), False, torch.float16),  # T4
    ("auto", "cuda", (7, 0), False, torch.float16),  # V100
    ("auto", "cpu", None, False, torch.float32),
    ("auto", "cpu", None, True, torch.bfloat16),  # full size on a CPU: fp32 would need ~23 GB
    ("fp32", "cuda", (9, 0), False, torch.float32),
    ("fp16", "cpu", None, False, torch.float16),
])
def test_dtype_follows_the_device(setting, kind, capability, full, expect):
    from worker.weights import choose_dtype

    dtype, why = choose_dtype(setting, torch.device(kind), capability, full_size=full)
    assert dtype == expect and why


def test_full_size_is_read_from_the_unet_config(tiny_model_dir, tmp_path):
    import sys

    from diffusers import UNet2DConditionModel

    from worker.weights import is_full_size

    sys.path.insert(0, str(ROOT / "bench"))
    from sdxl_full import BASE_UNET

    assert not is_full_size(str(tiny_model_dir / "base"))
    with torch.device("meta"):
        UNet2DConditionModel(**BASE_UNET).save_config(tmp_path / "full" / "unet")
    assert is_full_size(str(tmp_path / "full"))
    assert not is_full_size(str(tmp_path / "nothing-here"))


def test_the_fp16_files_are_preferred_and_plain_ones_still_load(tiny_model_dir, tmp_path):
    import shutil

    from diffusers import StableDiffusionXLPipeline

    from worker import pipeline as wp

    folder = tmp_path / "with-variant"
    shutil.copytree(tiny_model_dir, folder)
    plain = StableDiffusionXLPipeline.from_pretrained(str(folder / "base"), local_files_only=True)
    with torch.no_grad():
        plain.unet.conv_in.bias.add_(1.0)  # the fp16 files differ, so it shows which ones were read
    plain.to(torch.float16).save_pretrained(str(folder / "base"), variant="fp16")
    wp._loaded.clear()
    from_variant = DreamPipeline.load(str(folder / "base"), str(folder / "refiner"), "cpu")
    from_plain = DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")
    diff = (from_variant.base.unet.conv_in.bias - from_plain.base.unet.conv_in.bias).float()
    assert torch.allclose(diff, torch.ones_like(diff), atol=1e-2)
    assert from_variant.base.unet.dtype == torch.float32  # read in fp16, run in the chosen dtype


def test_a_dream_runs_in_bf16_and_fp32_and_a_restart_gives_the_same_image(tiny_model_dir):
    from worker import pipeline as wp

    req = _req(steps=3, seed=9)
    images = {}
    for dtype in (torch.float32, torch.bfloat16):
        for _restart in range(2):
            wp._loaded.clear()  # a new worker process loads afresh
            pipe = DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu",
                                      dtype=dtype)
            assert pipe.base.unet.dtype == dtype
            gen = pipe.generate(req)
            assert not gen.nan_detected
            images.setdefault(dtype, []).append(_png(gen.images[0]))
    assert images[torch.float32][0] == images[torch.float32][1]
    assert images[torch.bfloat16][0] == images[torch.bfloat16][1]
    wp._loaded.clear()
