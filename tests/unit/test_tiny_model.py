"""The tiny SDXL-architecture model: built offline in seconds, loads back like real weights, wired like SDXL."""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from worker.tiny import make_tiny_model, make_tokenizer  # noqa: E402


def _size_mb(folder) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def test_builds_small(tmp_path):
    started = time.perf_counter()
    out = make_tiny_model(tmp_path / "m")
    elapsed = time.perf_counter() - started
    assert out == tmp_path / "m"
    assert (out / "base" / "model_index.json").is_file()
    assert (out / "refiner" / "model_index.json").is_file()
    size = _size_mb(out)
    print(f"tiny model: built in {elapsed:.2f} s, {size:.1f} MB")  # a figure, not a test: timings go in bench/
    assert 0.5 < size < 20


def test_same_seed_same_weights(tmp_path, tiny_model_dir):
    make_tiny_model(tmp_path)
    for part in ("base/unet", "refiner/unet", "base/vae"):
        a = load_file(next((tiny_model_dir / part).glob("*.safetensors")))
        b = load_file(next((tmp_path / part).glob("*.safetensors")))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def pipes(tiny_model_dir):
    base = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir / "base", local_files_only=True)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_model_dir / "refiner", local_files_only=True
    )
    return base, refiner


def test_sdxl_wiring(pipes):
    base, refiner = pipes
    te1, te2 = base.text_encoder.config, base.text_encoder_2.config
    # Base: cross-attends to both encoders side by side; text_time = pooled text_embeds + 6 size/crop numbers.
    assert base.unet.config.addition_embed_type == "text_time"
    assert base.unet.config.cross_attention_dim == te1.hidden_size + te2.hidden_size
    t = base.unet.config.addition_time_embed_dim
    assert base.unet.config.projection_class_embeddings_input_dim == 6 * t + te2.projection_dim
    # Refiner: text_encoder_2 only, and 5 numbers (no target size, plus the aesthetic score).
    assert refiner.text_encoder is None and refiner.tokenizer is None
    assert refiner.config.requires_aesthetics_score is True
    assert refiner.unet.config.cross_attention_dim == te2.hidden_size
    assert refiner.unet.config.projection_class_embeddings_input_dim == 5 * t + te2.projection_dim
    # SDXL's 8x VAE and its scheduler config.
    assert base.vae_scale_factor == 8
    sched = base.scheduler.config
    assert type(base.scheduler).__name__ == "EulerDiscreteScheduler"
    assert (sched.beta_schedule, sched.beta_start, sched.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (sched.timestep_spacing, sched.steps_offset) == ("leading", 1)


def test_refiner_shares_text_encoder_2_and_vae_weights(pipes):
    base, refiner = pipes
    for name in ("text_encoder_2", "vae"):
        a, b = getattr(base, name).state_dict(), getattr(refiner, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_tokenizer_takes_any_unicode():
    tok = make_tokenizer()
    text = "Ünïcödé 🐉 дракон 龍 — ok"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]
    # One token per UTF-8 byte (of the lowercased, space-split text).
    assert len(ids) - 2 == sum(len(w.encode()) for w in text.lower().split())
    padded = tok("hi", padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert len(padded) == 77
    assert make_tokenizer(pad_token="!").pad_token_id != tok.pad_token_id


def test_1024_image_from_the_diffusers_pipeline(pipes):
    """The raw diffusers call, no worker code: 1024x1024 in, 1024x1024 out."""
    base, _ = pipes
    base.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        image = base(
            "a cat", num_inference_steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(0)
        ).images[0]
    assert image.size == (1024, 1024)
