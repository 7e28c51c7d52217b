"""The face pass (worker/faces.py): the detector on a real photograph, the redraw on the tiny model, and the
option, the server default, the Fix faces button and Info through a real bot, worker and stand-in.

The photograph is scikit-image's `astronaut` (a public-domain NASA portrait, 512x512), scaled so its face is
small and set into a 1024x1024 frame of another shipped photograph (`coffee`, which has no face). Its face's
box in the original is (176, 65)-(274, 163): where OpenCV's four frontal-face cascades all put it at full
size, within three pixels of one another."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from dreamcore.images import image_key
from dreamcore.job import FacePass, make_request
from tests.support.fleet import click, image_store, one_bot, result_message, send
from worker import faces
from worker.faces import Box

pytestmark = pytest.mark.timeout(300)

FACE = (176, 65, 274, 163)  # the astronaut's face in the 512x512 original
FACE_SIDE = FACE[2] - FACE[0]


def framed(face_px: int, at: tuple[int, int], size=(1024, 1024), backdrop: str = "coffee") -> tuple[Image.Image, Box]:
    """The astronaut scaled so its face is `face_px` wide, its top-left corner at `at` in a frame of `backdrop`;
    and the face's true box in the frame."""
    s = face_px / FACE_SIDE
    side = round(512 * s)
    astro = Image.fromarray(skimage.data.astronaut()).resize((side, side), Image.Resampling.LANCZOS)
    frame = Image.fromarray(getattr(skimage.data, backdrop)()).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    frame.paste(astro, at)
    x, y = at
    return frame, Box(x + round(FACE[0] * s), y + round(FACE[1] * s), x + round(FACE[2] * s), y + round(FACE[3] * s))


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    return inter / ((a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


# --- The detector, for real ----------------------------------------------------------------------------------


@pytest.mark.parametrize("face_px,at", [(160, (80, 60)), (80, (600, 150)), (50, (350, 420)), (36, (100, 700)),
                                        (30, (700, 640))])
def test_a_small_face_in_a_photograph_is_found_where_it_is(face_px, at):
    frame, truth = framed(face_px, at)
    found = faces.find_faces(frame)
    assert len(found) == 1, found  # the face, and nothing in the coffee around it
    assert iou(found[0], truth) >= 0.5, (found[0], truth)


@pytest.mark.parametrize("sample", ["coffee", "rocket", "hubble_deep_field"])
def test_a_photograph_with_no_face_yields_none(sample):
    image = Image.fromarray(getattr(skimage.data, sample)()).convert("RGB").resize((1024, 1024))
    assert faces.find_faces(image) == []


def test_auto_takes_the_small_faces_and_on_takes_every_one():
    small, big = Box(0, 0, 80, 80), Box(0, 0, 300, 300)
    assert faces.chosen([big, small], (1024, 1024), "auto") == [small]
    assert faces.chosen([big, small], (1024, 1024), "on") == [big, small]
    many = [Box(0, 0, 40, 40)] * 10
    assert len(faces.chosen(many, (1024, 1024), "on")) == faces.MAX_FACES


def test_the_pass_is_charged_one_face_an_image_when_asked_for_and_measured_by_what_it_redrew():
    from dreamcore import cost
    from dreamcore.job import make_job, make_origin

    origin = make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=3)
    src = {"job_id": "0123456789abcdef", "index": 0, "strength": 0.55}
    face = cost.face_units(40, 0.4, 1, 7.0)
    plain = cost.of_job(make_job(make_request(prompt="x", count=2, faces="off"), origin), 1024, 128)
    assert cost.of_job(make_job(make_request(prompt="x", count=2), origin), 1024, 128) == plain  # auto: 0 up front
    assert cost.of_job(make_job(make_request(prompt="x", count=2, faces="on"), origin), 1024, 128) == \
        cost.rounded(cost.dream_units(1024, 1024, 40, 2, 7.0) + 2 * face)
    measured = cost.of_job(make_job(make_request(prompt="x", count=2), origin), 1024, 128, faces=3)
    assert measured == cost.rounded(cost.dream_units(1024, 1024, 40, 2, 7.0) + 3 * face)
    fix = make_job(make_request(prompt="x", faces="on"), origin, kind="faces", source=src | {"strength": 0.4})
    assert cost.of_job(fix, 1024, 128) == cost.rounded(face) and face < 0.5
    # A variation's pass is no stronger than the variation; an upscale takes none.
    vary = make_job(make_request(prompt="x", faces="on"), origin, kind="variation", source=src | {"strength": 0.3})
    assert vary.face_pass.strength == 0.3
    up = make_job(make_request(prompt="x", faces="on"), origin, kind="upscale", source=src)
    assert up.face_pass is None and cost.of_job(up, 1024, 128) == cost.of_job(
        make_job(make_request(prompt="x", faces="off"), origin, kind="upscale", source=src), 1024, 128)


def test_a_crop_stays_inside_the_image_and_holds_the_face():
    for face in (Box(0, 0, 60, 60), Box(980, 724, 1024, 768), Box(500, 500, 560, 560), Box(0, 0, 900, 900)):
        c = faces.crop_box(face, (1024, 768))
        assert 0 <= c.x0 < c.x1 <= 1024 and 0 <= c.y0 < c.y1 <= 768 and c.x1 - c.x0 == c.y1 - c.y0
        if face.side * faces.CONTEXT <= 768:
            assert c.x0 <= face.x0 and c.y0 <= face.y0 and face.x1 <= c.x1 and face.y1 <= c.y1


# --- The redraw on the tiny model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from worker.pipeline import DreamPipeline

    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")


def _target(image, seed=7, mode="auto", prompt="an astronaut, portrait", owner=0):
    return faces.Target(owner, make_request(prompt=prompt, seed=seed, steps=10), image, seed, FacePass(mode, 0.4))


def test_the_pass_changes_the_face_and_nothing_outside_its_mask(pipe):
    frame, truth = framed(60, (600, 500))
    (out,), seconds = faces.redraw(pipe, [_target(frame)])
    assert (out.found, out.redrawn) == (1, 1) and seconds > 0
    assert out.image.size == frame.size and out.image.mode == "RGB"
    diff = np.abs(np.asarray(out.image, int) - np.asarray(frame, int)).max(axis=-1)
    (found,) = faces.find_faces(frame)
    crop = faces.crop_box(found, frame.size)
    mask = np.zeros(diff.shape, float)
    mask[crop.y0:crop.y1, crop.x0:crop.x1] = np.asarray(faces.face_mask(found, crop, crop.side), float) / 255
    assert (diff[mask == 0] <= 1).all()  # outside the mask: the image's own pixels
    face = diff[truth.y0:truth.y1, truth.x0:truth.x1]
    assert (face > 1).mean() > 0.9  # the face itself redrawn
    # The same seed makes the same picture; another seed another face.
    (again,), _ = faces.redraw(pipe, [_target(frame)])
    assert np.array_equal(np.asarray(again.image), np.asarray(out.image))
    (other,), _ = faces.redraw(pipe, [_target(frame, seed=8)])
    assert not np.array_equal(np.asarray(other.image), np.asarray(out.image))


def test_a_large_face_is_left_to_auto_and_redrawn_by_on(pipe):
    frame, _ = framed(300, (-300, -100))
    (auto,), _ = faces.redraw(pipe, [_target(frame, mode="auto")])
    assert (auto.found, auto.redrawn) == (1, 0) and np.array_equal(np.asarray(auto.image), np.asarray(frame))
    (on,), _ = faces.redraw(pipe, [_target(frame, mode="on")])
    assert (on.found, on.redrawn) == (1, 1) and not np.array_equal(np.asarray(on.image), np.asarray(frame))


def test_the_faces_of_several_images_share_one_call_and_each_is_what_it_is_alone(pipe):
    a, _ = framed(60, (600, 500))
    b, _ = framed(45, (100, 100), backdrop="rocket")
    calls = []
    real = type(pipe.refiner).__call__

    def counting(self, *args, **kw):
        calls.append(len(kw["image"]))
        return real(self, *args, **kw)

    type(pipe.refiner).__call__ = counting
    try:
        together, _ = faces.redraw(pipe, [_target(a, owner=0), _target(b, seed=9, prompt="a pilot", owner=1)])
    finally:
        type(pipe.refiner).__call__ = real
    assert calls == [2]  # two prompts of one length, one step count: one call
    (alone_a,), _ = faces.redraw(pipe, [_target(a)])
    (alone_b,), _ = faces.redraw(pipe, [_target(b, seed=9, prompt="a pilot")])
    for got, want in ((together[0], alone_a), (together[1], alone_b)):
        assert np.abs(np.asarray(got.image, int) - np.asarray(want.image, int)).max() <= 2


def test_no_face_means_no_call_and_the_image_as_it_was(pipe):
    image = Image.fromarray(skimage.data.coffee()).convert("RGB").resize((1024, 1024))
    (out,), _ = faces.redraw(pipe, [_target(image, mode="on")])
    assert (out.found, out.redrawn) == (0, 0) and np.array_equal(np.asarray(out.image), np.asarray(image))


# --- A worker of the release before the face pass -------------------------------------------------------------


def test_a_worker_before_the_face_pass_refuses_what_needs_it_and_runs_the_rest(tiny_env, rconn, tmp_path):
    """Schema version 3's worker (the release before) tells the member it can't run a Fix faces job or a
    dream that sets its face pass, and still runs a dream left at auto, which it reads as it always did. (Before
    the module's bot and worker start below: that worker would take these jobs first.)"""
    from dreamcore import keys, results
    from dreamcore.job import make_job, make_origin
    from dreamcore.queue.rq_queues import DreamQueue
    from dreamcore.settings import get_settings
    from tests.support.history import release_reading, run_old_worker

    old = release_reading(tmp_path, 3, ["dreamcore", "worker", "dreambot"])
    results.Outbox(rconn, "bot1", "test").ensure_group()
    origin = make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=5)
    fix = make_job(make_request(prompt="x", seed=3, steps=2, faces="on"), origin, kind="faces",
                   source={"job_id": "0123456789abcdef", "index": 0, "strength": 0.4})
    off = make_job(make_request(prompt="x", seed=3, steps=2, faces="off"), origin)
    auto = make_job(make_request(prompt="a lighthouse", seed=3, steps=2, aspect="12:5"), origin)
    assert (fix.v, off.v, auto.v) == (4, 4, 1)
    q = DreamQueue(rconn, get_settings())
    for job in (fix, off, auto):
        q.enqueue(job)
    env = dict(tiny_env, PYTHONPATH=old, DREAMBOT_METRICS_PORT="0")
    run_old_worker(old, "dreambot", env, lambda: all(rconn.exists(keys.result_key(j.job_id))
                                                     for j in (fix, off, auto)))
    for job in (fix, off):
        failed, _ = results.load(rconn, image_store(), job.job_id)
        assert failed.status == "failed" and failed.origin.user_id == 5  # its member is told
        assert "written with schema version 4; this worker reads versions 1, 2 and 3" in failed.error
    done = results.load_meta(rconn, auto.job_id)
    assert done.status == "done" and (done.images[0].width, done.images[0].height) == (1536, 640)


# --- Through a real bot, worker and stand-in -----------------------------------------------------------------


@pytest.fixture(scope="module")
def e(redis_server, tiny_model_dir, tmp_path_factory):
    with one_bot(redis_server, tiny_model_dir, tmp_path_factory.mktemp("faces"), DREAMBOT_LIMIT_FACES="auto") as e:
        yield e


def info_of(e, msg) -> str:
    _, text, ephemeral = click(e, msg, next(c for c in msg.custom_ids() if c.startswith("dream:i:")))
    assert ephemeral
    return text


def job_of(text: str) -> str:
    assert text.startswith("Queued: job `"), text
    return text.split("`")[1]


def test_the_option_and_the_server_default_choose_the_pass(e):
    def admin_set(value: str) -> None:
        _, text, _ = send(e, {"key": "faces", "value": value}, user=e.admin, command="dreamadmin", subcommand="set")
        assert "faces" in text, text

    admin_set("off")
    try:
        inter, text, _ = send(e, {"prompt": "a crowd at a concert", "steps": 2})
        assert "faces off" in text, text  # the server's default, said in the reply
        msg = result_message(e, inter)
        info = info_of(e, msg)
        assert "faces: no face pass (off)" in info, info
        assert any(c.startswith("dream:f:") for c in msg.custom_ids())  # made without it: Fix faces offered
        # A dream from a member's picture takes the server's default too.
        photo = io.BytesIO()
        Image.fromarray(skimage.data.coffee()).save(photo, "JPEG")
        _, text, _ = send(e, {"prompt": "a cup", "image": ("coffee.jpg", photo.getvalue()), "steps": 2})
        assert "From the picture" in text and "faces off" in text, text
        # The member's own choice wins over the server's.
        inter, text, _ = send(e, {"prompt": "a crowd at a concert", "steps": 2, "faces": "on"})
        assert "faces on" in text, text
        info = info_of(e, result_message(e, inter))
        assert "faces: 0 faces found, 0 redrawn (on)" in info and "faces " in info.split("timings:")[1], info
    finally:
        admin_set("default")
    inter, text, _ = send(e, {"prompt": "a crowd at a concert", "steps": 2})
    assert "faces" not in text.split("\n")[-1], text  # auto, the default, goes unsaid
    assert "faces: 0 faces found, 0 redrawn (auto)" in info_of(e, result_message(e, inter))


def test_fix_faces_redraws_the_face_of_a_photograph_and_its_seed_makes_it_again(e):
    inter, text, _ = send(e, {"prompt": "an astronaut in a cafe", "steps": 3, "faces": "off"})
    job = job_of(text)
    msg = result_message(e, inter)
    # The tiny model draws no faces: the result's stored image becomes a photograph with one (as a member's
    # SDXL image would have), and Fix faces starts from what is stored.
    photo, truth = framed(60, (560, 500))
    image_store().put(image_key(job, 0, "png"), png(photo))
    clicked, said, ephemeral = click(e, msg, f"dream:f:{job}:0")
    assert not ephemeral and f"🙂 Faces of image 1 of `{job}` redrawn close up (strength 0.4)" in said, said
    made = result_message(e, clicked)
    assert "🙂 1 face found, 1 redrawn close up" in made.content, made.content
    (att,) = made.attachments
    fixed = Image.open(io.BytesIO(att.data)).convert("RGB")
    assert fixed.size == photo.size
    diff = np.abs(np.asarray(fixed, int) - np.asarray(photo, int)).max(axis=-1)
    inside = np.zeros(diff.shape, bool)
    inside[truth.y0:truth.y1, truth.x0:truth.x1] = True
    assert (diff[inside] > 1).mean() > 0.9 and (diff[~inside] <= 1).mean() > 0.98
    info = info_of(e, made)
    assert "faces: 1 face found, 1 redrawn (Fix faces)" in info and f"↳ `{job}`" in info, info
    assert not any(c.startswith("dream:f:") for c in made.custom_ids())  # its faces are done
    # Fix faces runs with the image's own seed: again, the same picture.
    clicked, _, _ = click(e, msg, f"dream:f:{job}:0")
    again = Image.open(io.BytesIO(result_message(e, clicked).attachments[0].data)).convert("RGB")
    assert np.array_equal(np.asarray(again), np.asarray(fixed))


def test_fix_faces_on_an_image_with_no_face_tells_the_member(e):
    inter, text, _ = send(e, {"prompt": "an empty beach", "steps": 2, "faces": "off"})
    job = job_of(text)
    msg = result_message(e, inter)
    clicked, said, _ = click(e, msg, f"dream:f:{job}:0")
    done = e.standin.wait_for_message(lambda m: m.interaction_id == clicked.id and "no face" in (m.content or ""),
                                      timeout=120)
    assert f"I found no face in image 1 of `{job}`" in done.content, done.content


def test_an_edit_takes_the_pass_over_the_faces_it_keeps(e):
    inter, text, _ = send(e, {"prompt": "an astronaut in a cafe", "steps": 3})  # the server's default: auto
    job = job_of(text)
    msg = result_message(e, inter)
    photo, _ = framed(90, (560, 480))
    image_store().put(image_key(job, 0, "png"), png(photo))
    # Zoom Out 1.5x keeps the photograph in the middle, a third smaller (its face 60 px): the pass, which the
    # button's job inherits from the dream, finds it there and redraws it.
    clicked, said, _ = click(e, msg, f"dream:y:{job}:0")
    made = result_message(e, clicked)
    assert "🙂 1 face found, 1 redrawn close up" in made.content, made.content
    assert "faces: 1 face found, 1 redrawn (auto)" in info_of(e, made)

