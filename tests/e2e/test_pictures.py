"""/dream with a member's picture: the safe decode on its own, then a real bot and worker on the Discord stand-in
(an attachment option Discord resolved, its file served from the stand-in's CDN), the tiny model, real Redis.

Every bad picture ends in a message to the member, with nothing queued and nothing stored; the quirks of real
files (animation, CMYK, 16 bits, transparency, a camera's rotation) are fixed and said; a good photo comes back
as an image at the SDXL size nearest its shape, and its seed makes it again.
"""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageOps

from dreamcore import image_in, moderation, results
from dreamcore.images import input_key
from dreamcore.job import make_request
from tests.support.fleet import final_answer, image_messages, image_store, one_bot

pytestmark = pytest.mark.timeout(300)
EPHEMERAL = 64


# --- Files a member might send -----------------------------------------------------------------------------------


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


COFFEE = Image.fromarray(skimage.data.coffee())  # a real photograph, 600 x 400


def coffee_jpeg() -> bytes:
    return encoded(COFFEE, "JPEG", quality=90)


def rotated_photo() -> bytes:
    """A portrait as a phone stores it: the sensor's landscape pixels, with EXIF orientation 6 (a viewer turns
    it 90 degrees clockwise to show it upright)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(COFFEE, "JPEG", quality=90, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (96, 64), c) for c in ((200, 30, 30), (30, 30, 200), (30, 200, 30))]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit_png() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 320), (240, 1)).astype(np.uint16)
    return encoded(Image.fromarray(ramp), "PNG")


def transparent_png() -> bytes:
    im = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    im.paste((20, 120, 220, 255), (64, 64, 192, 192))
    return encoded(im, "PNG")


def a_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "not a picture")
    return buf.getvalue()


# --- The decode on its own --------------------------------------------------------------------------------------


def test_a_photo_comes_out_at_the_sdxl_size_nearest_its_shape():
    pic = image_in.prepare(coffee_jpeg(), "coffee.jpg", 50_000_000)
    out = Image.open(io.BytesIO(pic.png))
    assert (pic.aspect, out.size, out.mode, out.format) == ("19:13", (1216, 832), "RGB", "PNG")
    assert pic.original == (600, 400) and pic.notes == []  # 3:2 against 19:13: under 5% cut, not worth a word
    assert image_in.prepare(coffee_jpeg(), "coffee.jpg", 50_000_000, aspect="1:1").aspect == "1:1"
    # What comes out is the photo, not a stretch of it: its centre square matches the source's.
    square = Image.open(io.BytesIO(image_in.prepare(coffee_jpeg(), "c.jpg", 50_000_000, aspect="1:1").png))
    want = COFFEE.crop((100, 0, 500, 400)).resize((1024, 1024), Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(square, float) - np.asarray(want, float)).mean() < 4


def test_quirks_of_real_files_are_fixed_and_said():
    gif = image_in.prepare(animated_gif(), "loop.gif", 50_000_000)
    assert gif.notes[0] == "it is animated: I used its first frame"
    assert Image.open(io.BytesIO(gif.png)).getpixel((10, 10)) == (200, 30, 30)
    frames = [Image.new("RGB", (96, 64), c) for c in ((30, 200, 30), (200, 30, 30))]
    webp = image_in.prepare(encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True),
                            "loop.webp", 50_000_000)
    assert webp.notes[0] == "it is animated: I used its first frame"
    assert Image.open(io.BytesIO(webp.png)).getpixel((10, 10)) == (30, 200, 30)

    cmyk = image_in.prepare(encoded(COFFEE.convert("CMYK"), "JPEG", quality=95), "print.jpg", 50_000_000)
    assert "CMYK colours converted to RGB" in cmyk.notes
    back = np.asarray(Image.open(io.BytesIO(cmyk.png)).resize((600, 400)), float)
    assert np.abs(back - np.asarray(COFFEE, float)).mean() < 12  # the colours, not an inverted negative

    deep = image_in.prepare(sixteen_bit_png(), "scan.png", 50_000_000)
    assert "16 bits a channel: brought to 8" in deep.notes
    ramp = np.asarray(Image.open(io.BytesIO(deep.png)).convert("L"), float)
    assert ramp[:, :20].mean() < 20 and ramp[:, -20:].mean() > 235  # a ramp, not clipped to white

    clear = image_in.prepare(transparent_png(), "logo.png", 50_000_000)
    assert "transparent parts filled with white" in clear.notes
    im = Image.open(io.BytesIO(clear.png))
    assert im.getpixel((5, 5)) == (255, 255, 255) and im.getpixel((512, 512))[2] > 200

    upright = image_in.prepare(rotated_photo(), "phone.jpg", 50_000_000)
    assert "turned upright as its camera marked it" in upright.notes
    assert upright.original == (400, 600) and upright.aspect == "13:19"
    got = np.asarray(Image.open(io.BytesIO(upright.png)), float)
    right = np.asarray(ImageOps.fit(COFFEE.transpose(Image.Transpose.ROTATE_270), (832, 1216)), float)
    wrong = np.asarray(ImageOps.fit(COFFEE.transpose(Image.Transpose.ROTATE_90), (832, 1216)), float)
    assert np.abs(got - right).mean() < 4 < np.abs(got - wrong).mean()


BAD_FILES = [
    ("notes.txt", b"hello", None, "`notes.txt` is not a picture I take: send a PNG, JPEG, WebP or GIF file."),
    ("photo.png", coffee_jpeg(), None, "`photo.png` is named as a PNG but it is a JPEG: save it again with the right extension."),
    ("photo.png", encoded(COFFEE, "PNG"), "image/jpeg", "`photo.png` is named as a PNG but was sent as a JPEG"),
    ("page.png", b"<!DOCTYPE html><html><body>hi</body></html>", None, "`page.png` is named as a PNG, but it is an HTML page"),
    ("archive.png", a_zip(), None, "`archive.png` is named as a PNG, but it is a ZIP archive"),
    ("doc.png", encoded(COFFEE, "PNG"), "text/html", "`doc.png` was sent as `text/html`, not as a picture"),
    ("empty.png", b"", None, "`empty.png` is empty (0 bytes)."),
    ("cut.jpg", coffee_jpeg()[:12000], None, "`cut.jpg` is a JPEG file, but it is cut short (truncated)"),
    ("huge.png", encoded(Image.new("1", (20000, 20000)), "PNG"), None,
     "`huge.png` is 20,000 x 20,000 pixels; pictures may have up to 50 million pixels."),
]


def test_every_canvas_keeps_its_source_in_shape_and_near_one_megapixel():
    from dreamcore.canvas import CanvasError, plan, variation_size
    from dreamcore.job import Edit

    for w, h in [(1024, 1024), (1152, 896), (1216, 832), (1344, 768), (832, 1216), (2048, 1024), (2432, 1664)]:
        for e in [Edit(op="zoom", zoom=2.0), Edit(op="zoom", zoom=1.5), Edit(op="square"),
                  *(Edit(op="pan", direction=d) for d in ("left", "right", "up", "down"))]:
            try:
                c = plan(e, w, h)
            except CanvasError:
                assert e.op == "square" and w == h
                continue
            x0, y0, x1, y1 = c.box
            assert c.width % 64 == 0 and c.height % 64 == 0 and 0.85e6 < c.width * c.height < 1.25e6, (e, w, h, c)
            assert 0 <= x0 < x1 <= c.width and 0 <= y0 < y1 <= c.height
            assert abs((x1 - x0) / (y1 - y0) / (w / h) - 1) < 0.005, (e, w, h, c)  # the source, not squeezed
    # Several pans one way end in a clear refusal rather than a sliver.
    w, h = 1216, 832
    with pytest.raises(CanvasError, match="more than 4 times longer"):
        for _ in range(6):
            w, h = plan(Edit(op="pan", direction="right"), w, h).size
    # A variation of a result of another shape (a Pan, Make Square) keeps that shape.
    assert variation_size((1152, 896), 1024, 1024) == (1024, 1024)
    assert variation_size((1152, 896), 2304, 1792) == (1152, 896)  # an upscale: scaled back down


@pytest.mark.parametrize("name,data,ctype,expect", BAD_FILES, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_FILES)])
def test_bad_files_are_refused_with_the_reason(name, data, ctype, expect):
    """check_declared sees what Discord reports (without the bytes); prepare sees the bytes."""
    with pytest.raises(image_in.PictureError) as info:
        width_height = _header_size(data)
        image_in.check_declared(name, ctype or _guess(name), len(data), *width_height, 25_000_000, 50_000_000)
        image_in.prepare(data, name, 50_000_000)
    assert str(info.value).startswith(expect), str(info.value)


def test_the_size_cap_is_checked_on_what_discord_reports():
    with pytest.raises(image_in.PictureError, match=r"`big.jpg` is 31 MB; pictures may be up to 25 MB"):
        image_in.check_declared("big.jpg", "image/jpeg", 31_000_000, 4000, 3000, 25_000_000, 50_000_000)


def test_a_flagged_picture_holds_back_what_was_made_from_it_and_says_why():
    m = moderation.moderate([0.1, 0.2], source_score=0.91, threshold=0.5, action="withhold", channel_nsfw=False)
    assert m.withheld == [0, 1]
    note = m.private_note("0123456789abcdef")
    assert note.startswith("🛡️ The image your dream `0123456789abcdef` started from scores 0.91") and "0.50" in note


def _guess(name: str) -> str | None:
    import mimetypes

    return mimetypes.guess_type(name)[0]


def _header_size(data: bytes) -> tuple[int | None, int | None]:
    from tests.support.standin.store import image_size

    return image_size(data) or (None, None)


# --- A real bot and worker on the stand-in ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pics(redis_server, tiny_model_dir, tmp_path_factory):
    # Small caps, so that "too big" and "too slow" are quick to show.
    with one_bot(redis_server, tiny_model_dir, tmp_path_factory.mktemp("pictures"),
                 bot_env={"DREAMBOT_INPUT_MAX_MB": "2", "DREAMBOT_INPUT_DOWNLOAD_TIMEOUT": "1"}) as e:
        e.adult = e.standin.add_channel(e.fleet.guild_id, "dreams-after-dark", nsfw=True)
        yield e


def send(e, options: dict, channel: int | None = None, user: int | None = None):
    f = e.fleet
    inter = e.standin.send_slash(e.bot.app.id, f.guild_id, channel or e.bot.channel_id, user or f.user_id,
                                 "dream", options)
    text, ephemeral, _ = final_answer(e.standin, inter, inter.wait_ack(5))
    return inter, text, ephemeral


def queued_id(text: str) -> str:
    assert text.startswith("Queued: job `"), text
    return text.split("`")[1]


def wait_images(e, job_id: str, channel: int | None = None, timeout: float = 90) -> list[Image.Image]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in image_messages(e.standin, channel or e.bot.channel_id):
            if job_id in "".join(a[0] for a in m.attachments):
                return [Image.open(io.BytesIO(data)) for _, data, _ in m.attachments]
        time.sleep(0.2)
    raise TimeoutError(f"no images of {job_id} posted; logs:\n{e.fleet.logs()[-4000:]}")


def test_a_photo_dream_is_posted_at_its_shape_and_its_seed_makes_it_again(pics):
    e = pics
    opts = {"prompt": "a cup of coffee, oil painting", "image": ("coffee.jpg", coffee_jpeg()), "seed": 11,
            "change": 0.7}
    _, text, ephemeral = send(e, opts)
    job = queued_id(text)
    assert not ephemeral
    assert f"🖼️ From the picture sent with `{job}` (change 0.7)" in text and "1216x832" in text
    stored = Image.open(io.BytesIO(image_store().get(input_key(job))))
    assert stored.size == (1216, 832)  # the re-encoded picture, under the job, where the worker reads it
    first = wait_images(e, job)
    assert [im.size for im in first] == [(1216, 832)]
    _, text2, _ = send(e, opts)
    again = wait_images(e, queued_id(text2))
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0])), "the same seed and picture make the same image"
    # The worker scored the picture itself before using it; the result carries that score.
    meta = results.load_meta(e.r, job)
    assert meta.kind == "picture" and meta.source.job_id == job and meta.source.nsfw_score is not None
    assert meta.base_steps >= 1 and meta.refiner_steps >= 1  # the base from the picture, the refiner after it


def test_every_bad_picture_is_told_and_nothing_is_queued_or_stored(pics):
    e = pics
    e.standin.cdn_fault(r"^gone-", "gone")
    e.standin.cdn_fault(r"^slow-", "slow", seconds=3)
    noise = encoded(Image.fromarray(np.random.default_rng(1).integers(0, 255, (900, 900, 3), dtype=np.uint8)), "PNG")
    cases = [(name, (name, data) if ctype is None else (name, data, ctype), expect)
             for name, data, ctype, expect in BAD_FILES]
    cases += [
        ("noise.png", ("noise.png", noise), "`noise.png` is 2.4 MB; pictures may be up to 2.0 MB."),
        ("gone-photo.jpg", ("gone-photo.jpg", coffee_jpeg()),
         "Discord no longer has `gone-photo.jpg` (its link answered 404); send it again."),
        ("slow-photo.jpg", ("slow-photo.jpg", coffee_jpeg()),
         "`slow-photo.jpg` took longer than 1 s to come from Discord; try again."),
    ]
    rq_jobs = lambda: {k for k in e.r.scan_iter("rq:job:*")}  # noqa: E731
    before_jobs, before_files = rq_jobs(), _stored_inputs()
    for name, value, expect in cases:
        _, text, ephemeral = send(e, {"prompt": "a cup of coffee", "image": value})
        assert ephemeral and text.startswith(expect), (name, text)
    _, text, ephemeral = send(e, {"prompt": "a cup of coffee", "change": 0.4})
    assert ephemeral and text.startswith("`change` says how much to change a picture of yours"), text
    assert rq_jobs() == before_jobs and _stored_inputs() == before_files
    # The caps Discord reports were checked before any download; the broken files were downloaded, then refused.
    fetched = set(e.standin.cdn_requests())
    assert not fetched & {"noise.png", "huge.png", "notes.txt", "empty.png", "doc.png"}, fetched
    assert {"cut.jpg", "archive.png", "gone-photo.jpg", "slow-photo.jpg"} <= fetched
    assert "Traceback" not in e.fleet.logs()


def test_what_real_files_carry_is_fixed_and_the_member_told(pics):
    e = pics
    for name, data, note in [("loop.gif", animated_gif(), "it is animated: I used its first frame"),
                             ("print.jpg", encoded(COFFEE.convert("CMYK"), "JPEG"), "CMYK colours converted to RGB"),
                             ("scan.png", sixteen_bit_png(), "16 bits a channel: brought to 8"),
                             ("logo.png", transparent_png(), "transparent parts filled with white")]:
        _, text, ephemeral = send(e, {"prompt": "the same, as a poster", "image": (name, data), "steps": 2})
        assert not ephemeral and note in text.rsplit("-# Your picture: ", 1)[-1], (name, text)
    _, text, _ = send(e, {"prompt": "a cup of coffee", "image": ("phone.jpg", rotated_photo()), "steps": 2})
    job = queued_id(text)
    assert "turned upright as its camera marked it" in text and "832x1216" in text
    assert [im.size for im in wait_images(e, job)] == [(832, 1216)]


def test_each_server_chooses_whether_pictures_come_in(pics):
    e = pics
    f = e.fleet

    def admin_set(value: str) -> None:
        inter = e.standin.send_slash(e.bot.app.id, f.guild_id, e.bot.channel_id, e.admin, "dreamadmin",
                                     {"key": "images_in", "value": value}, subcommand="set")
        text, _, _ = final_answer(e.standin, inter, inter.wait_ack(5))
        assert "images_in" in text, text

    photo = {"prompt": "a cup of coffee", "image": ("coffee.jpg", coffee_jpeg()), "steps": 2}
    try:
        admin_set("off")
        _, text, eph = send(e, photo)
        assert eph and text == "This server doesn't take pictures with /dream: send the prompt alone.", text
        admin_set("age_restricted")
        _, text, eph = send(e, photo)
        assert eph and text == "This server takes pictures with /dream only in age-restricted channels.", text
        _, text, eph = send(e, photo, channel=e.adult)
        assert not eph and queued_id(text)
    finally:
        admin_set("default")
    _, text, _ = send(e, photo)
    assert queued_id(text)


def _stored_inputs() -> set[str]:
    from pathlib import Path

    from dreamcore.settings import load_settings

    root = Path(load_settings().image_dir)
    return {str(p) for p in root.glob("*/input.png")} if root.exists() else set()


# --- Vary (Subtle, Strong), Zoom Out, Pan, Make Square: the buttons under a one-image result -----------------


def result_message(e, inter, timeout: float = 120.0):
    """The message an interaction (a /dream or a click) ends as: its images and its buttons."""
    def done(m):
        return (m.interaction_id == inter.id and m.components
                and any(not a.filename.startswith("preview") for a in m.attachments))
    return e.standin.wait_for_message(done, timeout=timeout)


def click(e, msg, custom_id: str):
    f = e.fleet
    inter = e.standin.send_component(e.bot.app.id, f.guild_id, e.bot.channel_id, f.user_id, msg.id, custom_id)
    text, ephemeral, _ = final_answer(e.standin, inter, inter.wait_ack(5))
    return inter, text, ephemeral


def within_one_level(a: Image.Image, b: Image.Image) -> float:
    """The share of pixels whose channels all differ by at most one level."""
    d = np.abs(np.asarray(a.convert("RGB"), int) - np.asarray(b.convert("RGB"), int)).max(axis=-1)
    return float((d <= 1).mean())


def test_every_edit_button_posts_its_image_and_keeps_what_it_should(pics):
    from dreamcore.canvas import plan
    from dreamcore.job import Edit

    e = pics
    inter, text, _ = send(e, {"prompt": "a cup of coffee", "image": ("coffee.jpg", coffee_jpeg()), "steps": 3})
    msg = result_message(e, inter)
    job = queued_id(text)
    source = Image.open(io.BytesIO(msg.attachments[0].data)).convert("RGB")
    assert source.size == (1216, 832)
    ids = {cid.split(":")[1]: cid for cid in msg.custom_ids()}
    assert set("rstuzyqhlkjid") <= set(ids), ids  # a one-image result offers every edit (it is not square)
    shapes = {"z": Edit(op="zoom", zoom=2.0), "y": Edit(op="zoom", zoom=1.5), "q": Edit(op="square"),
              "l": Edit(op="pan", direction="right"), "j": Edit(op="pan", direction="down")}
    for code in "stzyqlj":
        clicked, said, ephemeral = click(e, msg, ids[code])
        assert not ephemeral and said.startswith("Queued: job `"), (code, said)
        made = result_message(e, clicked)
        (image,) = [Image.open(io.BytesIO(a.data)).convert("RGB") for a in made.attachments]
        if code in "st":
            assert image.size == source.size and f"Variations of image 1 of `{job}`" in said
            continue
        canvas = plan(shapes[code], *source.size)
        assert image.size == canvas.size, (code, image.size)
        # What is kept is the source itself: the zoom's centre, the pan's overlapping strip, the square's band.
        x0, y0, x1, y1 = canvas.box
        kept = source.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
        assert within_one_level(image.crop(canvas.box), kept) >= 0.99, code
        # ... and what is added was painted, not left blank or blurred in.
        painted = np.asarray(image, float)
        mask = np.ones(painted.shape[:2], bool)
        mask[y0:y1, x0:x1] = False
        assert painted[mask].std() > 10, code
    info_inter, info, ephemeral = click(e, made, next(c for c in made.custom_ids() if c.startswith("dream:i:")))
    assert ephemeral and f"⬇️ Panned down from image 1 of `{job}`" in info
    assert f"↳ `{job}`: 🖼️ From the picture sent with `{job}`" in info  # the chain of what it was made from
    # Once the image is no longer kept, a Zoom on it is refused with the reason, and nothing is queued.
    from dreamcore.images import image_key

    image_store().delete([image_key(job, 0, "png")])
    before = set(e.r.scan_iter("rq:job:*"))
    _, said, ephemeral = click(e, msg, ids["z"])
    assert ephemeral and said.startswith("That image is no longer kept, so Zoom Out 2x can't start from it"), said
    assert set(e.r.scan_iter("rq:job:*")) == before


# --- The edits on the tiny model, in process ----------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from worker.pipeline import DreamPipeline

    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")


@pytest.mark.parametrize("edit", [
    {"op": "zoom", "zoom": 2.0}, {"op": "pan", "direction": "left"}, {"op": "square"},
    {"op": "region", "cells": "c11,left"},
], ids=["zoom", "pan", "square", "region"])
def test_each_edit_keeps_its_source_outside_what_it_paints_and_its_seed_makes_it_again(pipe, edit):
    from dreamcore.canvas import plan, region_cells
    from dreamcore.job import Edit
    from worker import inpaint

    if edit["op"] == "region":
        edit = edit | {"cells": region_cells(edit["cells"].split(","))}
    what = Edit(**edit)
    source = COFFEE.resize((1216, 832), Image.Resampling.LANCZOS)
    req = make_request(prompt="a cup of coffee on a table", steps=4, seed=21)
    first = inpaint.edit(pipe, req, source, what)
    again = inpaint.edit(pipe, req, source, what)
    other = inpaint.edit(pipe, req.model_copy(update={"seed": 22}), source, what)
    canvas = plan(what, *source.size)
    assert first.images[0].size == canvas.size and (first.base_steps, first.refiner_steps) == (3, 1)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0])), "the seed makes it again"
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))
    picture, mask = inpaint.layout(source, canvas)
    keep = np.asarray(mask) == 0
    diff = np.abs(np.asarray(first.images[0], int) - np.asarray(picture, int)).max(axis=-1)
    assert (diff[keep] <= 1).mean() >= 0.99  # outside what is painted: the source within one level
    assert (diff[~keep] > 1).mean() > 0.5  # inside: painted anew


# --- Remix and Vary (Region): a modal, and a region picker before it ------------------------------------------


def test_remix_dreams_again_with_the_same_seed_and_what_the_member_wrote(pics):
    e = pics
    inter, text, _ = send(e, {"prompt": "a cup of coffee", "image": ("coffee.jpg", coffee_jpeg()), "steps": 3,
                              "seed": 77})
    job = queued_id(text)
    msg = result_message(e, inter)
    opened, body = _open(e, msg, f"dream:m:{job}")
    assert body["type"] == 9  # a modal, filled in with the result's prompt
    inputs = {c["custom_id"]: c for row in opened.modal["components"] for c in row.get("components", [])}
    assert inputs["prompt"]["value"] == "a cup of coffee" and inputs["negative"]["required"] is False
    submitted = e.standin.send_modal_submit(opened, {"prompt": "a cup of tea", "negative": "spoons"})
    said, ephemeral, _ = final_answer(e.standin, submitted, submitted.wait_ack(5))
    remixed = queued_id(said)
    assert not ephemeral and f"🖌️ Remix of `{job}` (same seed)" in said and "a cup of tea" in said
    result_message(e, submitted)
    meta = results.load_meta(e.r, remixed)
    assert meta.request.seed == 77 and meta.request.prompt == "a cup of tea"
    assert meta.request.negative_prompt == "spoons"
    assert meta.kind == "picture" and meta.source.job_id == job  # from the same picture
    # Discord's client won't send an empty prompt; one past the limit it can't send either.
    with pytest.raises(ValueError):
        e.standin.send_modal_submit(opened, {"prompt": ""})


def test_vary_region_redraws_only_the_cells_picked(pics):
    from dreamcore.canvas import plan, region_cells
    from dreamcore.job import Edit

    e = pics
    inter, text, _ = send(e, {"prompt": "a cup of coffee", "image": ("coffee.jpg", coffee_jpeg()), "steps": 3})
    job = queued_id(text)
    msg = result_message(e, inter)
    source = Image.open(io.BytesIO(msg.attachments[0].data)).convert("RGB")
    picker_click, body = _open(e, msg, f"dream:g:{job}:0")
    said, ephemeral, _ = final_answer(e.standin, picker_click, body)
    assert ephemeral and said.startswith(f"🎯 Which parts of image 1 of `{job}` should be redrawn?")
    picker = e.standin.message(picker_click.original_message_id)
    (select_id,) = picker.custom_ids()
    chosen = ["c11", "right"]
    picked = e.standin.send_component(e.bot.app.id, e.fleet.guild_id, e.bot.channel_id, e.fleet.user_id,
                                      picker.id, select_id, component_type=3, values=chosen)
    assert picked.wait_ack(5)["type"] == 9 and picked.modal["title"] == "Vary (Region)"
    submitted = e.standin.send_modal_submit(picked, {"prompt": "a red apple"})
    said, ephemeral, _ = final_answer(e.standin, submitted, submitted.wait_ack(5))
    assert not ephemeral and f"🖌️ A region of image 1 of `{job}` redrawn" in said, said
    image = Image.open(io.BytesIO(result_message(e, submitted).attachments[0].data)).convert("RGB")
    canvas = plan(Edit(op="region", cells=region_cells(chosen)), *source.size)
    assert image.size == source.size == canvas.size
    painted = np.zeros((canvas.height, canvas.width), bool)
    for x0, y0, x1, y1 in canvas.cell_boxes():
        painted[y0:y1, x0:x1] = True
    diff = np.abs(np.asarray(image, int) - np.asarray(source, int)).max(axis=-1)
    assert (diff[~painted] <= 1).mean() >= 0.99  # outside the region: the source within one level
    assert (diff[painted] > 1).mean() > 0.5  # inside: redrawn


def _open(e, msg, custom_id: str):
    f = e.fleet
    inter = e.standin.send_component(e.bot.app.id, f.guild_id, e.bot.channel_id, f.user_id, msg.id, custom_id)
    return inter, inter.wait_ack(5)


def test_a_flagged_picture_is_held_back_under_the_servers_policy_and_the_member_told_why(pics):
    """The worker scores the picture before using it; with a threshold every image reaches (0), what was made
    from it is withheld as the server's policy says, and the member is told it was the picture."""
    e = pics
    f = e.fleet

    def admin_set(key: str, value: str) -> None:
        inter = e.standin.send_slash(e.bot.app.id, f.guild_id, e.bot.channel_id, e.admin, "dreamadmin",
                                     {"key": key, "value": value}, subcommand="set")
        text, _, _ = final_answer(e.standin, inter, inter.wait_ack(5))
        assert key in text, text

    admin_set("nsfw_threshold", "0")
    try:
        inter, text, _ = send(e, {"prompt": "a cup of coffee", "image": ("coffee.jpg", coffee_jpeg()), "steps": 2})
        job = queued_id(text)
        msg = e.standin.wait_for_message(lambda m: m.interaction_id == inter.id and not m.ephemeral
                                         and any(c.startswith("dream:i:") for c in m.custom_ids()), timeout=90)
        assert not any(a.filename.startswith("dream-") for a in msg.attachments)
        assert f"The image was held back by this server's content filter (job `{job}`)." in msg.content
        deadline = time.monotonic() + 20
        private = []
        while not private and time.monotonic() < deadline:
            private = [m.content for m in e.standin.messages(e.bot.channel_id)
                       if m.interaction_id == inter.id and m.ephemeral and m.content.startswith("🛡️")]
            time.sleep(0.1)
        assert private and private[0].startswith(f"🛡️ The image your dream `{job}` started from scores "), private
        assert "Try another picture." in private[0]
    finally:
        admin_set("nsfw_threshold", "default")
