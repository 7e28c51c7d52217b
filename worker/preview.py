"""A small preview of an image still being denoised, straight from its latents: no VAE, no extra model.

SDXL's four latent channels map to RGB almost linearly; these factors are the least-squares fit that
ComfyUI and A1111 use for their SDXL "latent2rgb" previews. Good enough to see composition emerge.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

SDXL_LATENT_RGB = torch.tensor([
    [0.3920, 0.4054, 0.4549],
    [-0.2634, -0.0196, 0.0653],
    [0.0568, 0.1687, -0.0755],
    [-0.3112, -0.2359, -0.2076],
])
SDXL_LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


def latent_preview_image(latents: torch.Tensor, max_side: int = 256) -> Image.Image:
    """The first image of a (batch, 4, h, w) latent tensor, at most max_side pixels a side."""
    lat = latents[0].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", lat, SDXL_LATENT_RGB) + SDXL_LATENT_RGB_BIAS
    rgb = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    img = Image.fromarray(rgb, "RGB")
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    else:  # latents are 1/8 of the image: show them at up to max_side, blocky is fine for a preview
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.NEAREST)
    return img


def jpeg(img: Image.Image) -> bytes:
    """JPEG bytes (~10 KB for a preview): small, because it sits in Redis while its job runs
    (results.publish_progress)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    return buf.getvalue()

