"""Full-size SDXL 1.0 base + refiner with random weights, built in code: the published configs written out,
the modules made directly on a device ("meta": shapes only, no memory), and FLOP counts on meta tensors.

No download and no disk: bench/gpu_sdxl.py builds them in GPU memory (seconds, where a 13 GB round trip
through from_pretrained would take minutes of a short GPU lease); bench/fullsize.py saves them to disk once
to prove the worker's real load path on a CPU. Speed is the same with random weights as with the real ones
(same shapes, same kernels); the pictures are noise.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

# --- SDXL 1.0's published configs (stabilityai/stable-diffusion-xl-{base,refiner}-1.0, */config.json) -----

BASE_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, act_fn="silu", norm_num_groups=32,
    norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, center_input_sample=False, downsample_padding=1,
    mid_block_scale_factor=1,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 1280 pooled text + 6 x 256 size/crop embeddings
)
REFINER_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, act_fn="silu", norm_num_groups=32,
    norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, center_input_sample=False, downsample_padding=1,
    mid_block_scale_factor=1,
    block_out_channels=(384, 768, 1536, 1536),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    transformer_layers_per_block=4,
    attention_head_dim=(6, 12, 24, 24),
    cross_attention_dim=1280,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2560,  # 1280 pooled text + 5 x 256 (size, crop, aesthetic score)
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, act_fn="silu", norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
TEXT_ENCODER = dict(  # CLIP ViT-L/14 text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
TEXT_ENCODER_2 = dict(  # OpenCLIP ViT-bigG/14 text tower, with its projection
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)
PUBLISHED_PARAMS = {"base unet": 2_567_463_684, "refiner unet": 2_259_526_660, "vae": 83_653_863,
                    "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}


def _quiet() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lg in (dlog, tlog):
        lg.set_verbosity_error()
        lg.disable_progress_bar()


def _text_config(tokenizer, spec: dict):
    from transformers import CLIPTextConfig

    # The byte-level tokenizer of worker/tiny.py (no vocabulary download) uses ids < 514 of the 49408; the
    # encoder reads its pooled output at the tokenizer's own end token.
    return CLIPTextConfig(**spec, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)


def build_components(device: str, dtype: torch.dtype, tokenizer=None, tokenizer_2=None) -> dict:
    """The full-size modules with random weights, created directly on `device` ("meta": shapes only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from worker.tiny import make_tokenizer

    tokenizer = tokenizer or make_tokenizer()
    tokenizer_2 = tokenizer_2 or make_tokenizer(pad_token="!")
    torch.manual_seed(0)
    with torch.device(device):
        parts = {
            "base unet": UNet2DConditionModel(**BASE_UNET),
            "refiner unet": UNet2DConditionModel(**REFINER_UNET),
            "vae": AutoencoderKL(**VAE),
            "text_encoder": CLIPTextModel(_text_config(tokenizer, TEXT_ENCODER)),
            "text_encoder_2": CLIPTextModelWithProjection(_text_config(tokenizer_2, TEXT_ENCODER_2)),
        }
    for m in parts.values():
        m.to(dtype).eval()
    parts["tokenizer"], parts["tokenizer_2"] = tokenizer, tokenizer_2
    return parts


def sdxl_pipelines(p: dict):
    """The base and refiner pipelines over `build_components`' modules, wired as the published ones are
    (worker.tiny.sdxl_pipelines, the tiny model's own wiring)."""
    from worker.tiny import sdxl_pipelines as wire

    return wire(p["vae"], p["text_encoder"], p["text_encoder_2"], p["tokenizer"], p["tokenizer_2"],
                p["base unet"], p["refiner unet"])


def meta_flops(steps: int, split: float, batch: int = 1) -> dict[str, float]:
    """FLOPs of one image of the full-size architecture, counted by FlopCounterMode on meta tensors (no
    compute, any machine): UNet forwards at CFG batch 2 x steps, text encoders, one VAE decode."""
    dt = torch.bfloat16
    p = build_components("meta", dt)
    m = {"device": "meta", "dtype": dt}
    base_steps = round(steps * split)
    ref_steps = steps - base_steps
    out = {}
    with torch.inference_mode():
        ids = torch.zeros(2 * batch, 77, dtype=torch.long, device="meta")
        with FlopCounterMode(display=False) as fc:
            p["text_encoder"](ids, output_hidden_states=True)
            p["text_encoder_2"](ids, output_hidden_states=True)
            p["text_encoder_2"](ids, output_hidden_states=True)  # the refiner's own encoding
        out["text encoders"] = fc.get_total_flops()
        x = torch.zeros(2 * batch, 4, 128, 128, **m)
        t = torch.full((2 * batch,), 500, device="meta")
        with FlopCounterMode(display=False) as fc:
            p["base unet"](x, t, encoder_hidden_states=torch.zeros(2 * batch, 77, 2048, **m),
                           added_cond_kwargs={"text_embeds": torch.zeros(2 * batch, 1280, **m),
                                              "time_ids": torch.zeros(2 * batch, 6, **m)})
        out[f"base unet x {base_steps}"] = fc.get_total_flops() * base_steps
        with FlopCounterMode(display=False) as fc:
            p["refiner unet"](x, t, encoder_hidden_states=torch.zeros(2 * batch, 77, 1280, **m),
                              added_cond_kwargs={"text_embeds": torch.zeros(2 * batch, 1280, **m),
                                                 "time_ids": torch.zeros(2 * batch, 5, **m)})
        out[f"refiner unet x {ref_steps}"] = fc.get_total_flops() * ref_steps
        with FlopCounterMode(display=False) as fc:
            p["vae"].decode(torch.zeros(batch, 4, 128, 128, **m))
        out["vae decode"] = fc.get_total_flops()
    params = {k: sum(q.numel() for q in v.parameters()) for k, v in p.items() if hasattr(v, "parameters")}
    out["_params"] = params  # type: ignore[assignment]
    return out


# The output classifier's shape: Falconsai/nsfw_image_detection is a ViT-base/16 at 224 px with the labels
# normal/nsfw (google/vit-base-patch16-224-in21k, fine-tuned).
CLASSIFIER = dict(image_size=224, patch_size=16, num_channels=3, hidden_size=768, num_hidden_layers=12,
                  num_attention_heads=12, intermediate_size=3072, id2label={0: "normal", 1: "nsfw"},
                  label2id={"normal": 0, "nsfw": 1})


def full_classifier(device: torch.device):
    """A SafetyChecker over a random-weight classifier of the default one's shape, in fp16 on a GPU as
    SafetyChecker.load places it: the worker's scoring costs what it costs with the real one."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from worker.classifier import SafetyChecker

    torch.manual_seed(0)
    with torch.device(device):
        model = ViTForImageClassification(ViTConfig(**CLASSIFIER)).eval()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    processor = ViTImageProcessor(size={"height": 224, "width": 224})
    return SafetyChecker(model.to(dtype), processor, device, [1], "ViT-base/16 of the default's shape (random)")


def step_cache_flops(batch: int = 1) -> tuple[float, float]:
    """(FLOPs of a full base UNet pass, FLOPs of one that reuses the deep features), CFG batch 2 x `batch`,
    1024x1024, on meta tensors: what step caching saves per cached step, before any timing."""
    from worker.stepcache import StepCache

    unet = build_components("meta", torch.bfloat16)["base unet"]
    cache = StepCache(unet, 2)
    m = {"device": "meta", "dtype": torch.bfloat16}
    args = (torch.zeros(2 * batch, 4, 128, 128, **m), torch.full((2 * batch,), 500, device="meta"))
    kwargs = dict(encoder_hidden_states=torch.zeros(2 * batch, 77, 2048, **m),
                  added_cond_kwargs={"text_embeds": torch.zeros(2 * batch, 1280, **m),
                                     "time_ids": torch.zeros(2 * batch, 6, **m)})
    out = []
    cache.start()
    with torch.inference_mode():
        for i in range(2):  # step 0 runs whole and keeps its features; step 1 reuses them
            with FlopCounterMode(display=False) as fc:
                unet(*args, **kwargs)
            out.append(fc.get_total_flops())
            cache.step_done(i)
    cache.stop()
    return out[0], out[1]
