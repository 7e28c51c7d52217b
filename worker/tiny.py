"""A tiny SDXL-architecture base + refiner, built in code with random weights, for tests and demos.

It has every part the real `stabilityai/stable-diffusion-xl-base-1.0` / `-refiner-1.0` pair has, with the
same wiring and conditioning, only narrow: two CLIP text encoders (the second with a projection) whose
penultimate hidden states are concatenated for the base UNet's cross-attention, the "text_time" added
conditioning (pooled text embeds + six size/crop numbers for the base, five with the aesthetic score for the
refiner), an 8x AutoencoderKL, and SDXL's Euler scheduler config. Both pipelines are written with
`save_pretrained`, so the worker loads them through `from_pretrained(folder)` exactly as it loads real
weights, and the code under test is the production code path. The images are noise-like, of course.

`make_tiny_classifier` adds a tiny ViT with a real NSFW classifier's labels for the output check
(worker/classifier.py), written to `safety/` beside them; `make_tiny_turbo` a LoRA on the base UNet in diffusers'
format, standing in for SDXL-Lightning's (mode:turbo, worker/adapters.py), written to `turbo/`.

Nothing is downloaded: the tokenizer's vocabulary is the 256 byte characters of byte-level BPE (plain and
end-of-word) plus CLIP's two specials, so any unicode prompt tokenizes, one token per UTF-8 byte.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

SEED = 0

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"

# Text encoder widths. The base UNet cross-attends to both encoders' hidden states side by side
# (SDXL: 768 + 1280 = 2048); the refiner UNet to text_encoder_2's alone (1280).
TE1_HIDDEN = 32
TE2_HIDDEN = 32
TE2_PROJECTION = 32  # width of the pooled `text_embeds` (SDXL: 1280)
TIME_EMBED_DIM = 8  # addition_time_embed_dim: width of each Fourier-embedded size/crop number (SDXL: 256)

# SDXL's scheduler config, as in the real model_index's scheduler/scheduler_config.json.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    timestep_spacing="leading",
    steps_offset=1,
    interpolation_type="linear",
    use_karras_sigmas=False,
)


def make_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: every UTF-8 byte is one token (two specials on top)."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    # model_max_length is what pads and truncates to CLIP's 77-position window; without it the
    # tokenizer's default is effectively infinite and an encoder would overflow its position table.
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token=pad_token, model_max_length=77)


def _text_config(tokenizer: CLIPTokenizer, hidden: int, projection: int | None = None) -> CLIPTextConfig:
    extra = {"projection_dim": projection} if projection is not None else {}
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        # Two layers at least: SDXL takes the penultimate hidden state.
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        # The real ids, so the pooled output is read at the first EOS (eos_token_id == 2 means the legacy argmax).
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _unet(cross_attention_dim: int, n_time_ids: int) -> UNet2DConditionModel:
    """SDXL's UNet layout, narrow: three levels, linear projections in the transformers, "text_time" conditioning.

    One deliberate difference: SDXL cross-attends at its two lower-resolution levels, this one only at the
    lowest. At 1024x1024 the middle level has 64x64 = 4096 latent positions, and self-attention over them
    would be most of the CPU time (about 3x slower per step); the wiring under test is the same either way.
    """
    return UNet2DConditionModel(
        sample_size=128,  # latent size for 1024x1024; it only sets the pipeline's default size
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
        transformer_layers_per_block=1,
        use_linear_projection=True,
        cross_attention_dim=cross_attention_dim,
        # The "text_time" added conditioning: the pooled text embeds and the size/crop numbers
        # (base: original size, crop top-left, target size = 6; refiner: no target size but the
        # aesthetic score = 5), each number Fourier-embedded to TIME_EMBED_DIM.
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=n_time_ids * TIME_EMBED_DIM + TE2_PROJECTION,
    )


def _vae() -> AutoencoderKL:
    # Four blocks = three 2x downsamplings = SDXL's 8x latent scale, so 1024x1024 in means 128x128 latents.
    # Narrow channels, since the decoder's last block runs at full image resolution. No attention in the middle
    # blocks, unlike SDXL's VAE: over 128x128 latent tokens it took 0.58 s of a 1024x1024 decode's 0.76 s on a
    # CPU core and a fifth of a test worker's time (py-spy); tests/unit/test_batch_pipeline.py fuses a VAE with it.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=1024,
        scaling_factor=0.13025,  # SDXL's VAE value
        force_upcast=False,
        mid_block_add_attention=False,
    )


def sdxl_pipelines(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, base_unet, refiner_unet):
    """The base and refiner pipelines over these modules, wired as SDXL 1.0's published ones are (the tiny
    model here, the full-size one in bench/gpu_sdxl.py): the refiner shares text_encoder_2 and the VAE with
    the base (the same objects, so the same weights, which is what lets the worker load them once and hand
    the base's to the refiner), takes the aesthetic score, and does not zero empty prompts."""
    base = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=base_unet, scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None, tokenizer_2=tokenizer_2,
        unet=refiner_unet, scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False)
    return base, refiner


def tiny_pipelines():
    """The tiny base + refiner pipelines, built in memory (on the CPU, fp32, seeded)."""
    torch.manual_seed(SEED)
    tokenizer = make_tokenizer()
    # Like SDXL's OpenCLIP tokenizer, the second one pads with "!" rather than EOS.
    tokenizer_2 = make_tokenizer(pad_token="!")
    text_encoder = CLIPTextModel(_text_config(tokenizer, TE1_HIDDEN)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, TE2_HIDDEN, TE2_PROJECTION)).eval()
    vae = _vae().eval()
    base_unet = _unet(cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN, n_time_ids=6).eval()
    refiner_unet = _unet(cross_attention_dim=TE2_HIDDEN, n_time_ids=5).eval()
    return sdxl_pipelines(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, base_unet, refiner_unet)


def make_tiny_model(out_dir: str | Path) -> Path:
    """Build the tiny base + refiner and save them to `out_dir/base` and `out_dir/refiner` (with the output
    classifier in `safety` and the turbo LoRA in `turbo`); returns out_dir."""
    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()  # one "Writing model shards" bar per component otherwise
    out = Path(out_dir)
    base, refiner = tiny_pipelines()
    base.save_pretrained(out / "base")
    refiner.save_pretrained(out / "refiner")
    make_tiny_classifier(out / "safety")
    make_tiny_turbo(out / "turbo")
    return out


# The layers SDXL-Lightning's LoRA adapts (kohya's default for an SDXL UNet: every linear layer of each
# transformer, its projections in and out included), as peft's target module names.
TURBO_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TURBO_RANK = 4


def random_lora(unet: torch.nn.Module, rank: int, seed: int, gain: float = 3.0,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A LoRA of `rank` over `unet`'s TURBO_TARGETS linears, as a state dict in peft's names (what
    `get_peft_model_state_dict` gives and `save_lora_weights` takes), drawn from the layers' shapes alone: the
    tiny UNet's here, the full-size one's in bench/gpu_sdxl.py (a stand-in for Lightning's, with its cost).
    Seeded, with B non-zero (peft would start it at zero, a LoRA that changes nothing): `gain` times a
    unit-variance layer's, so a turbo image visibly differs from the same settings without it."""
    g = torch.Generator("cpu").manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name.endswith(TURBO_TARGETS):
            continue
        a = torch.randn(rank, module.in_features, generator=g) / module.in_features**0.5
        b = torch.randn(module.out_features, rank, generator=g) * gain / rank**0.5
        state[f"{name}.lora_A.weight"] = a.to(device, dtype)
        state[f"{name}.lora_B.weight"] = b.to(device, dtype)
    return state


def tiny_turbo_lora() -> dict[str, torch.Tensor]:
    """The tiny base UNet's turbo LoRA (random_lora over a UNet of its shapes)."""
    return random_lora(_unet(cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN, n_time_ids=6), TURBO_RANK, SEED + 1)


def make_tiny_turbo(out_dir: str | Path) -> Path:
    """The tiny turbo LoRA saved the way diffusers saves one (`pytorch_lora_weights.safetensors`, keys under
    `unet.`), so `load_lora_weights(out_dir)` and DREAMBOT_TURBO_ADAPTER=out_dir read it."""
    out = Path(out_dir)
    StableDiffusionXLPipeline.save_lora_weights(out, unet_lora_layers=tiny_turbo_lora())
    return out


def make_tiny_classifier(out_dir: str | Path) -> Path:
    """A tiny ViT image classifier with the labels of a real NSFW one (`normal`, `nsfw`), saved with its
    image processor the way a hub model is, so the worker loads it through the same from_pretrained path."""
    out = Path(out_dir)
    model, processor = tiny_classifier()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def tiny_classifier():
    """(model, image processor) of the tiny classifier, in memory.

    Random weights, except that the head leans to `normal` (bias +3 / -3): its score sits near 0.003 for
    any image, below every threshold but 0, so dreams are posted as usual and a test flags them by moving
    a guild's threshold (0 flags everything, 1 nothing)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(SEED)
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, id2label={0: "normal", 1: "nsfw"},
                       label2id={"normal": 0, "nsfw": 1})
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([3.0, -3.0]))
    return model, ViTImageProcessor(size={"height": 32, "width": 32})
