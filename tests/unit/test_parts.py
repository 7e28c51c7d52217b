"""A dream of more images than one call fits on the worker's device (memory.plan's call_images: with model
offload, 11.2 GiB free fits 3 full-size images, test_memory.py) is made in parts, one after another, and is the same dream: the
same seeds, the same images, one progress from start to end. Real tiny pipelines on the CPU, real Redis."""

from __future__ import annotations

import dataclasses
import io
import types

import pytest

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from dreamcore.job import make_job, make_origin, make_request  # noqa: E402
from dreamcore.queue.rq_queues import DreamQueue  # noqa: E402
from dreamcore.ranges import MAX_SEED  # noqa: E402
from dreamcore.settings import get_settings  # noqa: E402
from tests.support.pixels import assert_different, assert_same_image  # noqa: E402
from tests.support.worker_run import drain, job_for, outbox, work  # noqa: E402
from worker import img2img  # noqa: E402
from worker.make import in_parts, split_request  # noqa: E402
from worker.pipeline import DreamPipeline, StepEvent  # noqa: E402


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")


@pytest.fixture
def fits_three(pipeline):
    """The pipeline as a device that fits 3 images a call would plan it (DreamPipeline.load caches the
    instance, so the plan is put back afterwards)."""
    plan = pipeline.memory
    pipeline.memory = dataclasses.replace(plan, call_images=3, batch_images=3)
    try:
        yield pipeline
    finally:
        pipeline.memory = plan


def test_split_request_keeps_every_seed_in_order():
    req = make_request(prompt="x", seed=7, count=4)
    assert [(p.seed, p.count) for p in split_request(req, 3)] == [(7, 3), (10, 1)]
    assert [(p.seed, p.count) for p in split_request(req, 2)] == [(7, 2), (9, 2)]
    assert split_request(req, 4) == [req]
    assert [s for p in split_request(req, 1) for s in p.seeds] == req.seeds
    # Seeds wrap past the largest the same way DreamRequest.seeds does.
    top = make_request(prompt="x", seed=MAX_SEED - 1, count=4)
    assert [s for p in split_request(top, 3) for s in p.seeds] == top.seeds == [MAX_SEED - 1, MAX_SEED, 0, 1]
    assert all(p.prompt == "x" and p.steps == req.steps for p in split_request(req, 3))


def test_a_dream_in_parts_is_the_dream_in_one_call(pipeline, fits_three):
    req = make_request(prompt="a lighthouse at dusk", seed=21, steps=2, count=4, aspect="12:5")
    whole = pipeline.generate(req)  # before the fixture's plan mattered: generate() itself never splits
    events: list[StepEvent] = []
    job = make_job(req, make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=5))
    parts = in_parts(types.SimpleNamespace(pipeline=fits_three), job,
                     lambda r, on_step: fits_three.generate(r, on_step=on_step), events.append)
    assert parts.seeds == whole.seeds == [21, 22, 23, 24]
    assert len(parts.images) == 4 and parts.timings["parts"] == 2
    for got, want in zip(parts.images, whole.images, strict=True):
        assert got.size == want.size == (1536, 640)
        assert_same_image(got, want)
    assert_different(parts.images[2], parts.images[3])  # the comparison can fail
    # One progress over both parts: 1, 2, ... up to twice one call's steps, never back to the start.
    per_call = whole.base_steps + whole.refiner_steps
    assert [e.done for e in events] == list(range(1, 2 * per_call + 1))
    assert {e.total for e in events} == {2 * per_call}
    assert [e.latents.shape[0] for e in events] == [3] * per_call + [1] * per_call
    assert [(e.part, e.parts) for e in events] == [(1, 2)] * per_call + [(2, 2)] * per_call


def test_the_member_reads_which_part_is_running(tiny_env, rconn, pipeline, fits_three, monkeypatch):
    """Through the worker's real step hook into Redis, and the bot's words for it: the bar runs once over both
    parts, the step text says which part it is in (each part runs the base and the refiner anew)."""
    from bot.progress import part_text
    from dreamcore import results
    from worker import steps
    from worker.runtime import Runtime

    monkeypatch.setattr(steps, "PROGRESS_INTERVAL_S", 0.0)  # publish every step, not every 2 s
    job = job_for(count=4, seed=60, steps=2)
    hook = steps.StepHook(Runtime(settings=get_settings(), conn=rconn, pipeline=fits_three, checker=None), [job])
    seen = []

    def watch(ev):
        hook(ev)
        fields, preview = results.load_progress(rconn, job.job_id)
        seen.append((fields.get("done"), fields.get("total"), part_text(fields), preview is not None))

    gen = in_parts(types.SimpleNamespace(pipeline=fits_three), job,
                   lambda r, on_step: fits_three.generate(r, on_step=on_step), watch)
    assert len(gen.images) == 4
    # The last step of all publishes nothing (the images follow); every other step one progress entry.
    assert seen[:-1] == [("1", "4", ", part 1 of 2", True), ("2", "4", ", part 1 of 2", True),
                         ("3", "4", ", part 2 of 2", True)]
    assert part_text({"stage": "base"}) == "" and part_text({"part": "x", "parts": "2"}) == ""


def test_variations_in_parts_match_too(pipeline, fits_three):
    req = make_request(prompt="a lighthouse at dusk", seed=5, steps=4, count=4)
    source = pipeline.generate(make_request(prompt="a harbour", seed=1, steps=2)).images[0].resize((128, 96))
    whole = img2img.vary(pipeline, req, source, 0.6, size=(128, 96))
    job = make_job(req, make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=5))
    parts = in_parts(types.SimpleNamespace(pipeline=fits_three), job,
                     lambda r, on_step: img2img.vary(fits_three, r, source, 0.6, on_step=on_step, size=(128, 96)),
                     lambda e: None)
    assert parts.seeds == whole.seeds and len(parts.images) == 4
    for got, want in zip(parts.images, whole.images, strict=True):
        assert_same_image(got, want)


def test_through_the_queue_a_four_image_dream_on_a_three_image_device(tiny_env, rconn, fits_three):
    """What the member sees: the dream done, four images with their seeds, each the image its seed gives."""
    outbox(rconn)
    job = job_for(count=4, seed=40, steps=2)
    DreamQueue(rconn, get_settings()).enqueue(job)
    work(rconn, fits_three)
    result, images = drain(rconn)[job.job_id]
    assert result.status == "done"
    assert [i.seed for i in result.images] == [40, 41, 42, 43]
    assert result.timings["parts"] == 2  # 3 + 1: it was made in parts, not in one call
    alone = fits_three.generate(make_request(prompt="a lighthouse at dusk", aspect="12:5", steps=2, seed=43))
    decoded = []
    for data in images:
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.size == (1536, 640)
        decoded.append(img.convert("RGB"))
    assert_same_image(decoded[3], alone.images[0])  # the last image, made in the second part
