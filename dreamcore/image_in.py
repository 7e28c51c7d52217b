"""A member's picture, made safe to dream from: checked before it is downloaded, decoded under a pixel cap,
turned into one plain RGB image at the SDXL size nearest its shape, and re-encoded as PNG.

Pillow decodes; nothing here trusts a file's name or the content type Discord was told. The order matters:
what Discord reports (name, content type, byte size, and for images width and height) is checked before a
byte is fetched (`check_declared`); the bytes' own signature must be a picture of the kind the name says;
the pixel count is read from the header and checked before any pixel is decoded (`prepare`). What comes out
is a fresh PNG the project made itself: no metadata, no second frame, no colour profile left to surprise
a decoder later. No torch here: the bot runs it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from decimal import Decimal

from babel.numbers import format_decimal
from PIL import Image, ImageOps, UnidentifiedImageError

from .i18n import N_, _, babel_locale, number
from .job import ASPECTS
from .present import code

# What a member may send: the extension names the format, and the bytes must be that format.
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}
EXTENSIONS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "jfif": "jpeg", "webp": "webp", "gif": "gif"}
CONTENT_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/webp": "webp",
                 "image/gif": "gif"}
# The texts below are marked for the catalogs (N_) and translated where a reason is written (_).
NAMES = {"png": N_("a PNG"), "jpeg": N_("a JPEG"), "webp": N_("a WebP"), "gif": N_("a GIF")}
TAKEN = N_("PNG, JPEG, WebP or GIF")

# Signatures of what people send by mistake (or on purpose) named as a picture.
_SIGNATURES: list[tuple[bytes, int, str]] = [
    (b"\x89PNG\r\n\x1a\n", 0, "png"), (b"\xff\xd8\xff", 0, "jpeg"), (b"GIF87a", 0, "gif"), (b"GIF89a", 0, "gif"),
    (b"PK\x03\x04", 0, N_("a ZIP archive")), (b"PK\x05\x06", 0, N_("a ZIP archive")),
    (b"%PDF", 0, N_("a PDF document")), (b"\x1f\x8b", 0, N_("a gzip archive")), (b"Rar!", 0, N_("a RAR archive")),
    (b"7z\xbc\xaf", 0, N_("a 7-Zip archive")),
    (b"\x7fELF", 0, N_("a program")), (b"MZ", 0, N_("a program")), (b"BM", 0, N_("a BMP image (not taken)")),
    (b"II*\x00", 0, N_("a TIFF image (not taken)")), (b"MM\x00*", 0, N_("a TIFF image (not taken)")),
    (b"ftypheic", 4, N_("a HEIC photo (not taken: export it as JPEG)")),
    (b"ftypavif", 4, N_("an AVIF image (not taken)")),
]


# Pillow warns past this many pixels and refuses past twice it. Set once, at import: our own cap
# (DREAMBOT_INPUT_MAX_MEGAPIXELS, at most 150) is checked first, so Pillow's only speaks past it.
Image.MAX_IMAGE_PIXELS = 150_000_000


class PictureError(ValueError):
    """A picture that can't be dreamed from; `str()` is the reason, fit to show the member."""


@dataclass(frozen=True)
class Prepared:
    """The member's picture as the worker will read it."""

    png: bytes
    aspect: str  # the /dream aspect whose size it now has
    width: int
    height: int
    original: tuple[int, int]  # its size as sent, upright
    notes: list[str] = field(default_factory=list)  # what was done to it, said to the member


def megabytes(n: int) -> str:
    """`n` bytes in MB, one decimal under 10 MB, none from there, written as the language of the moment writes
    numbers (English: what f"{n / 1e6:.1f} MB" writes; Decimal of the float rounds it as that does)."""
    value = format_decimal(Decimal(n / 1_000_000), format="0.0" if n < 10_000_000 else "0", locale=babel_locale())
    return _("{size} MB").format(size=value)


def plain(x: float) -> str:
    """`x` as f"{x:g}" writes it (six significant digits, no trailing zeros), with the language of the
    moment's decimal sign."""
    return number(float(f"{x:.6g}"), digits=6)


def format_of_name(filename: str) -> str | None:
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return EXTENSIONS.get(ext)


def check_declared(filename: str, content_type: str | None, size: int, width: int | None, height: int | None,
                   max_bytes: int, max_pixels: int) -> str:
    """What Discord reports about an attachment, checked before it is downloaded. Returns the format its name
    says; PictureError names what is wrong."""
    fmt = format_of_name(filename)
    if fmt is None:
        raise PictureError(_("{name} is not a picture I take: send a {taken} file.").format(
            name=code(filename, 80), taken=_(TAKEN)))
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared and declared not in CONTENT_TYPES:
        raise PictureError(_("{name} was sent as {content_type}, not as a picture: send a {taken} file.").format(
            name=code(filename, 80), content_type=code(declared, 80), taken=_(TAKEN)))
    if declared and CONTENT_TYPES[declared] != fmt:
        raise PictureError(_("{name} is named as {named} but was sent as {sent}: save it again with the right "
                             "extension.").format(name=code(filename, 80), named=_(NAMES[fmt]),
                                                  sent=_(NAMES[CONTENT_TYPES[declared]])))
    if size <= 0:
        raise PictureError(_("{name} is empty (0 bytes).").format(name=code(filename, 80)))
    if size > max_bytes:
        raise PictureError(_("{name} is {size}; pictures may be up to {max_size}.").format(
            name=code(filename, 80), size=megabytes(size), max_size=megabytes(max_bytes)))
    if width and height and width * height > max_pixels:
        raise PictureError(_too_many_pixels(filename, width, height, max_pixels))
    return fmt


def sniff(data: bytes) -> str:
    """The format the bytes themselves say: png/jpeg/gif/webp, or a description of what else they are (in
    English, marked for the catalogs: translate it with _() where it is shown)."""
    for sig, at, what in _SIGNATURES:
        if data[at:at + len(sig)] == sig:
            return what
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return N_("an HTML page")
    if head.startswith((b"<?xml", b"<svg")) and b"<svg" in data[:4096].lower():
        return N_("an SVG drawing (not taken)")
    if head.startswith((b"{", b"[")):
        return N_("a JSON file")
    return N_("not a picture")


def nearest_aspect(width: int, height: int) -> str:
    """The /dream aspect whose shape is closest to width:height (compared as logarithms of the ratios)."""
    ratio = math.log(width / height)
    return min(ASPECTS, key=lambda a: abs(math.log(ASPECTS[a][0] / ASPECTS[a][1]) - ratio))


def prepare(data: bytes, filename: str, max_pixels: int, aspect: str | None = None) -> Prepared:
    """Decode the member's picture safely and bring it to the SDXL size of `aspect` (the nearest to its shape
    when None): cropped to that shape around its centre, then resized. PictureError names what is wrong."""
    name = code(filename, 80)
    if not data:
        raise PictureError(_("{name} is empty (0 bytes).").format(name=name))
    fmt = format_of_name(filename)
    what = sniff(data)
    if what not in FORMATS:
        if fmt:
            raise PictureError(_("{name} is named as {named}, but it is {what}: send a {taken} file.").format(
                name=name, named=_(NAMES[fmt]), what=_(what), taken=_(TAKEN)))
        raise PictureError(_("{name} is sent as a picture, but it is {what}: send a {taken} file.").format(
            name=name, what=_(what), taken=_(TAKEN)))
    if fmt is not None and what != fmt:
        raise PictureError(_("{name} is named as {named} but it is {actual}: save it again with the right "
                             "extension.").format(name=name, named=_(NAMES[fmt]), actual=_(NAMES[what])))
    notes: list[str] = []
    try:
        # Only the decoder its signature names: a file can't steer Pillow to another one.
        im = Image.open(io.BytesIO(data), formats=[FORMATS[what]])
        w, h = im.size
        if w * h > max_pixels:  # read from the header: no pixel decoded yet
            raise PictureError(_too_many_pixels(filename, w, h, max_pixels))
        if getattr(im, "is_animated", False) and im.format != "MPO":  # MPO: a phone's photo with its preview
            im.seek(0)
            notes.append(_("it is animated: I used its first frame"))
        if im.format in ("JPEG", "MPO"):
            # The decoder scales a large JPEG down by 2, 4 or 8 as it decodes, to no less than 2048 a side (more
            # than the longest side kept, 1536): a fraction of the memory, no loss after the resize below.
            im.draft(None, (2048, 2048))
        im.load()
    except PictureError:
        raise
    except Image.DecompressionBombError:  # past twice Pillow's own cap: it refuses to read even the header
        raise PictureError(_too_many_pixels(filename, 0, 0, max_pixels)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        if "truncated" in str(err) or isinstance(err, EOFError):
            raise PictureError(_("{name} is {format} file, but it is cut short (truncated): send it again or "
                                 "export it anew.").format(name=name, format=_(NAMES[what]))) from None
        raise PictureError(_("{name} is {format} file, but it can't be decoded: send it again or export it "
                             "anew.").format(name=name, format=_(NAMES[what]))) from None
    try:
        upright = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block: the picture as it is stored
        upright = im
    if upright is not im and upright.size != im.size or _orientation(im) not in (None, 1):
        notes.append(_("turned upright as its camera marked it"))
    rgb, converted = _to_rgb(upright)
    notes.extend(converted)
    original = rgb.size
    aspect = aspect or nearest_aspect(*original)
    size = ASPECTS[aspect]
    if abs(math.log((original[0] / original[1]) / (size[0] / size[1]))) > 0.05:  # more than 5% cut off
        notes.append(_("cropped around its centre to {aspect}").format(aspect=aspect))
    out = ImageOps.fit(rgb, size, Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=6)
    return Prepared(buf.getvalue(), aspect, size[0], size[1], original, notes)


def _to_rgb(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """One 8-bit RGB image, and what was done to get it."""
    notes = []
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's plain convert clips 16-bit values at 255 (a white picture); scale them instead.
        hi = 65535 if mode.startswith("I;16") or (im.getextrema() or (0, 0))[1] > 255 else 255
        im = im.point(lambda v: v * (255 / hi), mode="L") if mode != "I" else \
            im.point(lambda v: v * (255 / hi)).convert("L")
        notes.append(_("16 bits a channel: brought to 8"))
        mode = im.mode
    if mode == "CMYK":
        notes.append(_("CMYK colours converted to RGB"))
        return im.convert("RGB"), notes
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info) \
        or (mode in ("RGB", "L") and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] < 255:
            notes.append(_("transparent parts filled with white"))
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=alpha)
        return out, notes
    return im.convert("RGB"), notes


def _orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # a broken EXIF block: treated as none
        return None


def _too_many_pixels(filename: str, width: int, height: int, max_pixels: int) -> str:
    name, millions = code(filename, 80), plain(max_pixels / 1e6)
    if width and height:
        return _("{name} is {width} x {height} pixels; pictures may have up to {millions} million pixels. Scale it "
                 "down and send it again.").format(name=name, width=number(width), height=number(height),
                                                   millions=millions)
    return _("{name} has too many pixels; pictures may have up to {millions} million pixels. Scale it down and "
             "send it again.").format(name=name, millions=millions)
