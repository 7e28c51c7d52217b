"""Turn generated images into files that fit Discord's upload limit.

PNG first: lossless, and what people expect to save. If the whole set is over the limit (four 1-megapixel
PNGs of detailed images can pass 25 MB), step down through WebP and then JPEG qualities, always encoding
the whole set in one format so the images of a job look alike. If even the smallest setting is too big,
say so instead of uploading something broken.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

# (format, Pillow save options), tried in order until the set fits.
LADDER: list[tuple[str, dict]] = [
    # zlib level 1, not Pillow's 6: measured here on a 1024x1024 photo-like frame, 12% less encoding time
    # (170 vs 192 ms) for 3% more bytes; the time is CPU the worker spends per image, the bytes are not
    # near Discord's limit.
    ("png", {"optimize": False, "compress_level": 1}),
    ("webp", {"quality": 95, "method": 4}),
    ("webp", {"quality": 90, "method": 4}),
    ("webp", {"quality": 80, "method": 4}),
    ("jpeg", {"quality": 90, "optimize": True}),
    ("jpeg", {"quality": 80, "optimize": True}),
    ("jpeg", {"quality": 70, "optimize": True}),
]
_PIL_FORMAT = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
_EXTENSION = {"png": "png", "webp": "webp", "jpeg": "jpg"}


class TooLargeError(ValueError):
    """The images do not fit the upload limit at any format or quality we allow."""


@dataclass
class EncodedImage:
    filename: str
    data: bytes
    format: str  # "png" | "webp" | "jpeg"
    width: int
    height: int


def _encode_one(image: Image.Image, fmt: str, options: dict) -> bytes:
    buf = io.BytesIO()
    (image if image.mode == "RGB" else image.convert("RGB")).save(buf, format=_PIL_FORMAT[fmt], **options)
    return buf.getvalue()


def encode_images(
    images: Sequence[Image.Image], max_total_bytes: int, stem: str, seeds: Sequence[int]
) -> list[EncodedImage]:
    """Encode every image in the first format of LADDER whose files together fit in `max_total_bytes`.

    Files are named f"{stem}-{i}-{seed}.{ext}" (i from 0), so the seed to make an image again is in its name.
    Raises TooLargeError when even the lowest JPEG quality is over the limit.
    """
    if len(images) != len(seeds):
        raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
    if not images:
        return []
    smallest = None
    for fmt, options in LADDER:
        blobs = [_encode_one(img, fmt, options) for img in images]
        size = sum(len(b) for b in blobs)
        smallest = size if smallest is None else min(smallest, size)
        if size <= max_total_bytes:
            return [
                EncodedImage(
                    filename=f"{stem}-{i}-{seed}.{_EXTENSION[fmt]}",
                    data=blob,
                    format=fmt,
                    width=img.width,
                    height=img.height,
                )
                for i, (img, seed, blob) in enumerate(zip(images, seeds, blobs, strict=True))
            ]
    raise TooLargeError(
        f"{len(images)} image(s) need at least {smallest:,} bytes even as JPEG quality {LADDER[-1][1]['quality']},"
        f" over the {max_total_bytes:,}-byte upload limit; ask for fewer images"
    )
