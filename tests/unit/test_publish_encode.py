"""encode_images: PNG when it fits, then WebP, then JPEG, else a clear TooLargeError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from worker.publish import EncodedImage, TooLargeError, encode_images


def _noise(width=256, height=192, seed=0) -> Image.Image:
    # Noise barely compresses, which makes the size steps between formats predictable.
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _smooth(width=256, height=192) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (height, 1))] * 3, axis=-1), "RGB")


def test_png_when_it_fits():
    images = [_noise(seed=1), _noise(seed=2)]
    out = encode_images(images, max_total_bytes=10_000_000, stem="job1", seeds=[5, 6])
    assert [e.filename for e in out] == ["job1-0-5.png", "job1-1-6.png"]
    assert all(isinstance(e, EncodedImage) and e.format == "png" for e in out)
    assert [(e.width, e.height) for e in out] == [(256, 192), (256, 192)]
    decoded = Image.open(io.BytesIO(out[0].data))
    assert decoded.format == "PNG"
    assert np.array_equal(np.asarray(decoded), np.asarray(images[0]))  # lossless


def test_falls_back_to_webp():
    images = [_noise(seed=3), _noise(seed=4)]
    png_total = sum(len(e.data) for e in encode_images(images, 10**9, "s", [1, 2]))
    out = encode_images(images, max_total_bytes=png_total - 1, stem="s", seeds=[1, 2])
    assert {e.format for e in out} == {"webp"}
    assert [e.filename for e in out] == ["s-0-1.webp", "s-1-2.webp"]
    assert sum(len(e.data) for e in out) < png_total
    assert Image.open(io.BytesIO(out[0].data)).format == "WEBP"


def test_falls_back_to_jpeg_when_webp_is_too_big():
    images = [_noise(seed=5)]
    webp_80 = encode_images(images, 10**9, "s", [9])  # PNG here; find the smallest WebP size by hand
    buf = io.BytesIO()
    images[0].save(buf, format="WEBP", quality=80, method=4)
    limit = len(buf.getvalue()) - 1
    assert limit < len(webp_80[0].data)
    out = encode_images(images, max_total_bytes=limit, stem="s", seeds=[9])
    assert out[0].format == "jpeg" and out[0].filename == "s-0-9.jpg"
    assert len(out[0].data) <= limit
    assert Image.open(io.BytesIO(out[0].data)).format == "JPEG"


def test_nothing_fits_raises_clearly():
    with pytest.raises(
        TooLargeError, match=r"need at least [\d,]+ bytes .* over the 1,000-byte upload limit"
    ):
        encode_images([_noise(seed=6)], max_total_bytes=1000, stem="s", seeds=[1])


def test_whole_set_in_one_format():
    # A smooth image alone would fit as PNG; the set is judged together, so both drop to the same format.
    images = [_smooth(), _noise(seed=7)]
    png_total = sum(len(e.data) for e in encode_images(images, 10**9, "s", [1, 2]))
    out = encode_images(images, max_total_bytes=png_total - 1, stem="s", seeds=[1, 2])
    assert len({e.format for e in out}) == 1 and out[0].format != "png"


def test_seeds_must_match_images():
    with pytest.raises(ValueError, match="2 images but 1 seeds"):
        encode_images([_smooth(), _smooth()], 10**9, "s", [1])
    assert encode_images([], 10**9, "s", []) == []
