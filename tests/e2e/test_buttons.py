"""The buttons under every result (🎲 Reroll, 🔀 Variations, ⬆️ Upscale, ℹ️ Info, 🗑 Delete): the job schema
they need (version 2, and what a worker of the previous release does with it), the tiled refiner upscale
and the variations on the tiny model, and the real bot process on the Discord stand-in, clicked after a
restart, with the limits, refusals and deletes a member would see."""

from __future__ import annotations

import io
import json
import os
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from dreamcore import delivery, image_in, keys, params, results
from dreamcore.images import input_key
from dreamcore.job import JobError, make_job, make_origin, make_request, parse_job
from dreamcore.queue.rq_queues import DreamQueue
from dreamcore.results import DreamResult, ImageInfo
from dreamcore.settings import get_settings
from tests.support import ROOT as _ROOT
from tests.support.fleet import image_store
from tests.support.history import release_reading, run_old_worker

ROOT = str(_ROOT)


pytestmark = pytest.mark.timeout(300)


def _origin(**kw):
    return make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=5, **kw)


def _req(**kw):
    kw.setdefault("prompt", "a lighthouse at dusk")
    kw.setdefault("seed", 7)
    kw.setdefault("steps", 4)
    return make_request(**kw)


SRC = {"job_id": "0123456789abcdef", "index": 1, "strength": 0.55}


# --- the schema -----------------------------------------------------------------------------------------------


def test_dreams_stay_version_1_and_follow_ups_are_version_2():
    dream = make_job(_req(), _origin())
    wire = dream.to_dict()
    # Exactly what the previous release wrote (it forbids unknown keys), so its workers still run them.
    assert wire["v"] == 1 and wire["kind"] == "dream" and "source" not in wire
    assert parse_job(dream.to_json()) == dream
    for kind in ("variation", "upscale"):
        job = make_job(_req(), _origin(), kind=kind, source=SRC)
        wire = job.to_dict()
        assert wire["v"] == 2 and wire["kind"] == kind and wire["source"] == SRC | {"format": "png"}
        assert parse_job(json.dumps(wire)) == job


@pytest.mark.parametrize("change,field,expect", [
    ({"v": 1, "kind": "variation"}, "kind", "a variation job is written as schema version 2, this one says 1"),
    ({"v": 2}, "kind", "a dream job is written as schema version 1, this one says 2"),
    ({"v": 2, "kind": "upscale"}, "source", "an? upscale job needs its source"),
    ({"source": SRC}, "source", "a dream job has no source image"),
    ({"v": 2, "kind": "variation", "source": SRC | {"index": 4}}, "source.index", "allowed 0 to 3"),
    ({"v": 2, "kind": "variation", "source": SRC | {"strength": 0.0}}, "source.strength", "allowed 0.05 to 1.0"),
    ({"v": 2, "kind": "upscale", "source": SRC | {"job_id": "../x"}}, "source.job_id", "pattern"),
    ({"v": 2, "kind": "upscale", "source": SRC | {"scale": 8}}, "source.scale", "Extra inputs"),
    ({"v": 2, "kind": "inpaint", "source": SRC}, "kind", "'dream', 'variation', 'upscale', 'picture', 'edit' or 'faces'"),
    ({"v": 3, "kind": "faces", "source": SRC}, "kind", "a faces job is written as schema version 4, this one says 3"),
    ({"v": 3, "kind": "edit", "source": SRC}, "source", "an edit job's source says what the edit does"),
    ({"v": 3, "kind": "edit", "source": SRC | {"edit": {"op": "pan"}}}, "source.edit", "a pan edit needs direction"),
    ({"v": 2, "kind": "variation", "source": SRC | {"edit": {"op": "square"}}}, "source", "a variation job's source has no edit"),
    ({"v": 2, "kind": "picture", "source": SRC}, "kind", "a picture job is written as schema version 3, this one says 2"),
    ({"v": 3, "kind": "picture", "source": SRC | {"index": 1}}, "source", "a picture job's source is the member's picture"),
])
def test_kind_version_and_source_must_agree_and_errors_name_the_field(change, field, expect):
    raw = make_job(_req(), _origin()).to_dict() | change
    with pytest.raises(JobError, match=expect) as info:
        parse_job(raw)
    assert info.value.field == field and str(info.value).startswith(field)


def test_a_job_that_sets_its_face_pass_is_version_4_and_auto_is_left_out_of_the_wire():
    for faces, version in (("auto", 2), ("on", 4), ("off", 4)):
        job = make_job(_req(faces=faces), _origin(), kind="variation", source=SRC)
        wire = job.to_dict()
        assert wire["v"] == version and ("faces" in wire["request"]) == (faces != "auto")
        assert parse_job(json.dumps(wire)) == job
    wire = make_job(_req(faces="off"), _origin(), kind="variation", source=SRC).to_dict() | {"v": 2}
    with pytest.raises(JobError, match="a variation job with its face pass set is written as schema version 4, "
                                       "this one says 2"):
        parse_job(wire)


def test_a_dreams_result_is_stored_as_the_previous_release_wrote_it():
    info = ImageInfo(filename="a.png", format="png", width=8, height=8, seed=1, size_bytes=3)
    plain = DreamResult(job_id="0123456789abcdef", status="done", origin=_origin(), request=_req(), images=[info])
    assert "kind" not in json.loads(plain.to_json()) and "source" not in json.loads(plain.to_json())
    up = plain.model_copy(update={"kind": "upscale", "source": make_job(
        _req(), _origin(), kind="upscale", source=SRC).source})
    assert DreamResult.model_validate_json(up.to_json()) == up


def test_a_worker_of_the_previous_release_fails_follow_ups_clearly_and_still_runs_dreams(tiny_env, rconn,
                                                                                         tmp_path):
    old = release_reading(tmp_path, 1, ["dreamcore", "worker"])
    box = results.Outbox(rconn, "bot1", "test")
    box.ensure_group()
    q = DreamQueue(rconn, get_settings())
    follow_up = make_job(_req(count=2), _origin(), kind="variation", source=SRC)
    dream = make_job(_req(steps=1, aspect="12:5"), _origin())  # what a new bot writes for /dream and Reroll
    q.enqueue(follow_up)
    q.enqueue(dream)
    # An older worker reads RQ's own list only (workers are upgraded before bots; the new worker drains
    # that list too, see tests/e2e/test_upgrade.py): put the jobs where it looks.
    for job in (follow_up, dream):
        assert q.remove(job.job_id)
        rconn.rpush(q.queues["default"].key, job.job_id)
    env = dict(tiny_env, PYTHONPATH=old, DREAMBOT_METRICS_PORT="0")
    # The old release's own entry point, started as docker-compose starts it.
    printed = run_old_worker(old, "dreamcore.cli", env, lambda: all(
        rconn.exists(keys.result_key(j.job_id)) for j in (follow_up, dream)))
    failed, _ = results.load(rconn, image_store(), follow_up.job_id)
    assert failed.status == "failed" and failed.origin.user_id == 5  # its member is told
    assert "schema version 2; this worker reads version 1" in failed.error
    done = results.load_meta(rconn, dream.job_id)
    assert done.status == "done" and (done.images[0].width, done.images[0].height) == (1536, 640)
    assert "Traceback" not in printed.split("job failed")[0]  # no crash before the clean refusal
    # That release sent its images inline, from no key of the image store: a new bot posts no bytes from
    # outside the job's own keys, and tells the member instead (workers are upgraded before bots).
    got = delivery.for_delivery(rconn, image_store(), dream.job_id, "bot1")
    assert got.result.status == "failed" and "no longer post" in got.result.error and got.images == []


def test_a_worker_that_reads_no_pictures_tells_the_member(tiny_env, rconn, tmp_path):
    """The release before pictures (schema version 2) refuses a picture job with a message to its member."""
    old = release_reading(tmp_path, 2, ["dreamcore", "worker", "dreambot"])
    box = results.Outbox(rconn, "bot1", "test")
    box.ensure_group()
    origin = _origin()
    photo = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(photo, "JPEG")
    pic = image_in.prepare(photo.getvalue(), "coffee.jpg", 50_000_000)
    job = make_job(make_request(prompt="a cup", aspect=pic.aspect, steps=2), origin, kind="picture",
                   source={"job_id": "0123456789abcdef", "index": 0, "strength": 0.6})
    image_store().put(input_key("0123456789abcdef"), pic.png)
    DreamQueue(rconn, get_settings()).enqueue(job)
    env = dict(tiny_env, PYTHONPATH=old, DREAMBOT_METRICS_PORT="0")
    run_old_worker(old, "dreambot", env, lambda: rconn.exists(keys.result_key(job.job_id)))
    failed, _ = results.load(rconn, image_store(), job.job_id)
    assert failed.status == "failed" and failed.origin.user_id == 5
    assert "written with schema version 3; this worker reads versions 1 and 2" in failed.error


# --- the pipeline on the tiny model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from worker.pipeline import DreamPipeline

    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")


def test_tiles_cover_the_image_and_blend_weights_add_up_to_one():
    from worker.img2img import feather, tile_spans

    for length, tile, overlap in ((3072, 1024, 128), (1280, 1024, 128), (4096, 1024, 128), (640, 256, 32),
                                  (1024, 1024, 128), (200, 1024, 128), (2688, 2048, 512)):
        spans = tile_spans(length, tile, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert len({e - s for s, e in spans}) == 1  # equal tiles
        if len(spans) > 1:
            assert spans[0][1] <= tile and spans[0][1] % 8 == 0
        for (a0, a1), (b0, _) in zip(spans, spans[1:], strict=False):
            assert a1 - b0 >= overlap - 1 and b0 > a0  # overlapping, in order
        total = np.zeros(length)
        for s in spans:
            total[s[0]:s[1]] += feather(s, spans)
        assert np.allclose(total, 1.0), (length, total.min(), total.max())
    assert tile_spans(3072, 1024, 128) == [(0, 864), (736, 1600), (1472, 2336), (2208, 3072)]


def _noise_image(w, h, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def _px(image):
    return np.asarray(image, dtype=np.int16)


def test_variations_one_generator_per_image_and_upscale_exactly_twice_in_tiles(pipe):
    from worker.img2img import upscale, vary

    src = _noise_image(192, 128)
    batch = vary(pipe, _req(seed=50, count=2, guidance=1.0), src, 0.55, size=(256, 192))
    assert [im.size for im in batch.images] == [(256, 192)] * 2 and batch.seeds == [50, 51]
    assert batch.base_steps == 2  # int(4 * 0.55)
    alone = vary(pipe, _req(seed=51, count=1, guidance=1.0), src, 0.55, size=(256, 192))
    # Seed 51 alone is image 2 of the batch (batched convolutions may round one level apart).
    assert np.abs(_px(alone.images[0]) - _px(batch.images[1])).max() <= 2
    assert np.abs(_px(batch.images[0]) - _px(batch.images[1])).mean() > 5

    up = upscale(pipe, _req(seed=9, guidance=1.0), src, 0.3, tile=160, overlap=32)
    assert up.images[0].size == (384, 256) and up.width == 384 and up.height == 256
    assert "6 tiles of 152x144" in up.prompt_note and up.refiner_steps == 1
    again = upscale(pipe, _req(seed=9, guidance=1.0), src, 0.3, tile=160, overlap=32)
    other = upscale(pipe, _req(seed=10, guidance=1.0), src, 0.3, tile=160, overlap=32)
    assert np.array_equal(_px(up.images[0]), _px(again.images[0]))
    assert not np.array_equal(_px(up.images[0]), _px(other.images[0]))
    # Text-to-image still runs right after (the img2img pipelines keep their own scheduler state).
    assert pipe.generate(_req(steps=2, split=0.5, guidance=1.0, aspect="12:5")).images[0].size == (1536, 640)


def test_a_source_image_gone_before_the_job_runs_is_told_not_crashed(tiny_env, rconn, pipe):
    from worker.runner import make_worker

    box = results.Outbox(rconn, "bot1", "test")
    box.ensure_group()
    job = make_job(_req(), _origin(), kind="upscale", source=SRC | {"strength": 0.3})
    DreamQueue(rconn, get_settings()).enqueue(job)
    make_worker(get_settings(), rconn, pipe, name="test-worker").work(burst=True, logging_level="WARNING")
    failed, _ = results.load(rconn, image_store(), job.job_id)
    assert failed.status == "failed" and "no longer kept" in failed.error and "Reroll" in failed.error


# --- the view -------------------------------------------------------------------------------------------------


def _result(n, w=1536, h=640, job_id="00112233445566ff"):
    imgs = [ImageInfo(filename=f"dream-{job_id}-{i}-{i}.png", format="png", width=w, height=h, seed=i,
                      size_bytes=1) for i in range(n)]
    return DreamResult(job_id=job_id, status="done", origin=_origin(), request=_req(count=n), images=imgs)


def test_one_button_per_image_for_variations_and_upscales():
    from bot.buttons import result_view

    one = result_view(_result(1, 1024, 1024))
    assert one.timeout is None  # a timed-out stored view would unregister every dynamic button
    rows = {}
    for c in one.children:
        rows.setdefault(c.row, []).append(c.item.label or str(c.item.emoji))
    # One image shown: two strengths of variation and the edits, as Midjourney places them (a square image
    # has no Make Square).
    assert rows == {0: ["Reroll", "Vary (Subtle)", "Vary (Strong)", "Upscale"],
                    1: ["Zoom Out 2x", "Zoom Out 1.5x", "Vary (Region)"],
                    2: ["⬅️", "➡️", "⬆️", "⬇️", "Fix faces"], 3: ["Remix", "Info", "Delete"]}
    assert [c.custom_id for c in one.children][:3] == [
        "dream:r:00112233445566ff", "dream:s:00112233445566ff:0", "dream:t:00112233445566ff:0"]
    wide = result_view(_result(1, 1216, 832))
    assert "Make Square" in [c.item.label for c in wide.children]
    four = result_view(_result(4))
    rows = {}
    for c in four.children:
        rows.setdefault(c.row, []).append(c.item.label)
    assert rows == {0: ["V1", "V2", "V3", "V4"], 1: ["U1", "U2", "U3", "U4"], 2: ["Reroll", "Remix", "Info", "Delete"],
                    3: ["F1", "F2", "F3", "F4"]}
    # Fix faces is offered where the result's face pass redrew no face (off, only large faces, none, never run).
    fixed = _result(4)
    fixed.timings = {"faces_found": 3, "faces_redrawn": 1}
    assert not any(c.custom_id.startswith("dream:f:") for c in result_view(fixed).children)
    big = result_view(_result(1, 3072, 1280))  # an upscale's result: no Upscale of it again (6144 px)
    assert not any(c.custom_id.startswith("dream:u:") for c in big.children)
    failed = DreamResult(job_id="00112233445566ff", status="failed", origin=_origin(), error="x")
    assert result_view(failed) is None


# --- end to end: the bot process, the stand-in, a worker ----------------------------------------------------


def _result_of(standin, inter, timeout=120.0):
    """The message a dream's (or a click's) interaction ends as: images and buttons."""
    def done(m):
        return (m.interaction_id == inter.id and m.components
                and any(not a.filename.startswith("preview") for a in m.attachments))
    return standin.wait_for_message(done, timeout=timeout)


def _images(msg):
    out = []
    for a in msg.attachments:
        img = Image.open(io.BytesIO(a.data))
        img.load()
        out.append(img)
    return out


def _job_of(msg):
    return msg.custom_ids()[0].split(":")[2]


def _click(fleet, bot, msg, custom_id, user):
    inter = fleet.standin.send_component(bot.app.id, fleet.guild_id, bot.channel_id, user, msg.id, custom_id)
    body = inter.wait_ack(5)
    assert not inter.late and inter.ack_latency_s < 3.0, inter.ack_latency_s
    return inter, body


def _ephemeral(body):
    return body["type"] == 4 and body["data"]["flags"] & 64 and body["data"]["content"]


def _restart(fleet, bot, **env):
    """Kill the bot process outright (no goodbye to the gateway) and start a new one for the same app."""
    before = {s["session_id"] for s in fleet.standin.gateway_sessions(bot.app.id)}
    bot.proc.kill()
    bot.proc.wait(10)
    fleet.start_bot(bot, **env)
    deadline = time.monotonic() + 60
    while not any(s["connected"] and s["session_id"] not in before
                  for s in fleet.standin.gateway_sessions(bot.app.id)):
        assert bot.proc.poll() is None, bot.log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the restarted bot never connected"
        time.sleep(0.1)


def _age_images(job_id, days):
    """Turn the clock of a job's files in the folder image store back `days` days."""
    then = time.time() - days * 86400
    for f in (Path(os.environ["DREAMBOT_IMAGE_DIR"]) / job_id).iterdir():
        os.utime(f, (then, then))


def test_buttons_outlive_the_result_ttl(fleet, rconn):
    """The result's Redis copy lasts DREAMBOT_RESULT_TTL and the record's DREAMBOT_PARAMS_TTL; the image
    store keeps both for DREAMBOT_IMAGE_RETENTION_DAYS. Every per-job key in Redis gone (as when all their
    TTLs have passed) and the bot restarted: Info and Upscale still work, from the store."""
    standin, bot = fleet.standin, fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    fleet.start_worker()
    inter = fleet.dream(bot, prompt="a red kite", aspect="12:5", count=1, steps=2, seed=77)
    inter.wait_ack(5)
    first = _result_of(standin, inter)
    job = _job_of(first)
    assert 0 < rconn.ttl(keys.result_key(job)) <= get_settings().result_ttl_s
    # No image byte in Redis: the result names its store key, the bytes are in the store.
    meta = results.load_meta(rconn, job)
    assert [i.key for i in meta.images] == [f"{job}/0.png"]
    assert rconn.hkeys(keys.result_key(job)) == [b"meta"]
    assert image_store().get(f"{job}/0.png") == first.attachments[0].data

    for pattern in ("dream:result:*", "dream:params:*", "dream:done:*", "dream:delivered:*", "dream:progress:*"):
        for key in rconn.scan_iter(pattern):
            rconn.delete(key)
    _restart(fleet, bot)
    _, body = _click(fleet, bot, first, f"dream:i:{job}", fleet.user_id)
    assert "a red kite" in _ephemeral(body) and "seeds: 77" in _ephemeral(body)
    up, body = _click(fleet, bot, first, f"dream:u:{job}:0", fleet.user_id)
    assert "upscaled 2x" in body["data"]["content"], body
    upscaled = _result_of(standin, up, timeout=180)
    assert [im.size for im in _images(upscaled)] == [(3072, 1280)]

    # Past retention, the member is told, not left waiting.
    _age_images(job, days=get_settings().image_retention_days + 1)
    rconn.delete(keys.params_key(job))
    _, body = _click(fleet, bot, first, f"dream:u:{job}:0", fleet.user_id)
    assert "don't know that result any more" in _ephemeral(body), body


def _post_as_bot(fleet, bot, custom_ids):
    """A message of the bot's own app that carries crafted custom ids (what a tampered client could click)."""
    body = {"content": "crafted", "components": [{"type": 1, "components": [
        {"type": 2, "style": 2, "label": str(i), "custom_id": cid} for i, cid in enumerate(custom_ids)]}]}
    req = urllib.request.Request(f"{fleet.standin.api_base}/channels/{bot.channel_id}/messages",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bot {bot.app.token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return fleet.standin.message(int(json.loads(r.read())["id"]))


def test_every_button_after_a_restart_within_the_limits(fleet, rconn):
    t_start = time.monotonic()
    standin, bot = fleet.standin, fleet.bots[0]
    alice, gid = fleet.user_id, fleet.guild_id
    bob = standin.add_member(gid, "bob")
    carol = standin.add_member(gid, "carol", manage_guild=True)
    # Quotas count units of cost (dreamcore.cost): at 6 steps, guidance 1, the dream and its reroll cost 0.22
    # each, two variations 0.16, the upscale (8 tiles) 0.28: 0.88 of an hourly quota of 1, and the next
    # follow-up is over it.
    env = {"DREAMBOT_LIMIT_USER_IMAGES_HOUR": "1"}
    fleet.start_bot(bot, **env)
    fleet.wait_bots_ready()
    fleet.start_worker(**env)

    inter = fleet.dream(bot, prompt="a lighthouse", aspect="12:5", count=2, steps=6, split=0.5, guidance=1.0,
                        seed=1000, style="anime")
    inter.wait_ack(5)
    first = _result_of(standin, inter)
    job = _job_of(first)
    assert set(first.custom_ids()) == {f"dream:v:{job}:0", f"dream:v:{job}:1", f"dream:u:{job}:0",
                                       f"dream:u:{job}:1", f"dream:r:{job}", f"dream:m:{job}", f"dream:i:{job}",
                                       f"dream:d:{job}", f"dream:f:{job}:0", f"dream:f:{job}:1"}
    originals = [a.data for a in first.attachments]
    t_first = time.monotonic()

    # Every click below reaches a process that did not exist when the result was posted.
    _restart(fleet, bot, **env)

    _, body = _click(fleet, bot, first, f"dream:i:{job}", alice)
    info = _ephemeral(body)
    assert info, body
    for needle in (f"Job `{job}`", "a lighthouse", "seeds: 1000, 1001", "steps: 6 (3 base + 3 refiner, split 0.5)",
                   "guidance 1", "(`anime`)", "aspect 12:5", "1536x640", "timings: total", "base ", "refiner "):
        assert needle in info, (needle, info)

    _, body = _click(fleet, bot, first, f"dream:d:{job}", bob)
    assert "Only the member who asked for it" in _ephemeral(body)
    assert not standin.message(first.id).deleted

    reroll, body = _click(fleet, bot, first, f"dream:r:{job}", alice)
    assert body["type"] == 4 and not body["data"].get("flags", 0) & 64 and "Reroll of" in body["data"]["content"]
    vary, body = _click(fleet, bot, first, f"dream:v:{job}:1", alice)
    assert "Variations of image 2" in body["data"]["content"]
    # The upscale outlives its click's interaction token (2 s here, 15 min on Discord): the relay posts it
    # as a channel message instead, with the same buttons.
    standin.token_lifetime_s = 2.0
    up, body = _click(fleet, bot, first, f"dream:u:{job}:0", alice)
    standin.token_lifetime_s = 900
    assert "upscaled 2x" in body["data"]["content"] and "3072x1280" in body["data"]["content"]
    # The quota is spent: the same limits as /dream refuse the next follow-up, for the member's eyes only.
    _, body = _click(fleet, bot, first, f"dream:r:{job}", alice)
    refusal = _ephemeral(body)
    assert refusal and "hourly quota 0.88/1 standard images used and this dream counts as 0.22" in refusal, body

    rerolled = _result_of(standin, reroll)
    seeds = [int(a.filename.rsplit("-", 1)[1].split(".")[0]) for a in rerolled.attachments]
    assert len(seeds) == 2 and seeds[1] == (seeds[0] + 1) % 2**32 and seeds[0] != 1000
    assert all(a.data not in originals for a in rerolled.attachments)
    assert [im.size for im in _images(rerolled)] == [(1536, 640)] * 2
    varied = _result_of(standin, vary)
    assert [im.size for im in _images(varied)] == [(1536, 640)] * 2 and "Variations of image 2" in varied.content
    upscaled = standin.wait_for_message(lambda m: m.interaction_id is None and m.attachments
                                        and "upscaled 2x" in (m.content or ""), timeout=240)
    assert [im.size for im in _images(upscaled)] == [(3072, 1280)] and f"<@{alice}>" in upscaled.content
    # Follow-up results are messages of their own (of their click while its token lives), under the same
    # bot, with buttons of their own.
    for msg, click in ((rerolled, reroll), (varied, vary), (upscaled, None)):
        assert msg.author_app_id == bot.app.id and msg.id != first.id
        assert msg.interaction_id == (click.id if click else None)
        assert f"dream:i:{_job_of(msg)}" in msg.custom_ids()
    assert not any(c.startswith("dream:u:") for c in upscaled.custom_ids())  # 6144 px would be next
    t_follow = time.monotonic()

    # The source images are past retention (their files' clock turned back): Variations says so and points
    # at Reroll.
    _age_images(_job_of(rerolled), days=31)
    _, body = _click(fleet, bot, rerolled, f"dream:v:{_job_of(rerolled)}:0", alice)
    assert "no longer kept" in _ephemeral(body) and "Reroll" in _ephemeral(body)

    # Crafted ids: an unknown job, a job of another server, an image the result doesn't have, garbage.
    other = params.from_result(_result(1, job_id="ffeeddccbbaa9988").model_copy(
        update={"origin": make_origin(instance="bot1", guild_id=gid + 1, channel_id=3, user_id=alice)}))
    params.save(rconn, other, 60)
    crafted = _post_as_bot(fleet, bot, ["dream:v:abcdefabcdefabcd:0", "dream:u:ffeeddccbbaa9988:0",
                                        f"dream:u:{job}:3", "dream:x:1", f"dream:d:{job}"])
    answers = [_ephemeral(_click(fleet, bot, crafted, cid, alice)[1]) for cid in crafted.custom_ids()]
    assert "don't know that result" in answers[0]
    assert "another server" in answers[1]
    assert "no image 4" in answers[2]
    assert "isn't one I know" in answers[3]
    assert "doesn't belong to this message" in answers[4]  # Delete only ever deletes the job's own message
    assert not standin.message(crafted.id).deleted

    # Delete: the requester removes their own; a member with Manage Server removes anyone's.
    _, body = _click(fleet, bot, first, f"dream:d:{job}", alice)
    assert body["type"] == 6
    deadline = time.monotonic() + 5
    # The bot deletes the message, then its records: wait for both.
    while (not standin.message(first.id).deleted or rconn.exists(keys.result_key(job))) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert standin.message(first.id).deleted
    assert not rconn.exists(keys.result_key(job))  # its images go too
    for msg in (varied, upscaled):  # an interaction's reply and a channel message alike
        _click(fleet, bot, msg, f"dream:d:{_job_of(msg)}", carol)
        deadline = time.monotonic() + 5
        while not standin.message(msg.id).deleted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert standin.message(msg.id).deleted
    print(f"\nbuttons: first result {t_first - t_start:.1f}s, three follow-ups {t_follow - t_first:.1f}s, "
          f"total {time.monotonic() - t_start:.1f}s")
