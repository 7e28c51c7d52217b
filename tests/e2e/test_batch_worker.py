"""Batching in the worker, on a real Redis and the tiny model: waiting dreams that share a batch key are
denoised together, each member gets their own images (the same their seed gives alone), and a job that
goes wrong in a batch (cancelled, bad prompt, out of memory) fails alone."""

from __future__ import annotations

import io
import signal
import time

import numpy as np
import pytest
from PIL import Image
from rq.job import Job
from rq.serializers import JSONSerializer

from dreamcore import results
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.keys import cancel_key
from dreamcore.queue.rq_queues import DreamQueue
from dreamcore.settings import load_settings
from tests.support.fleet import image_store, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    from worker.pipeline import DreamPipeline

    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")


def _job(user: int, prompt: str | None = None, job_id: str | None = None, **kw):
    kw.setdefault("steps", 4)
    kw.setdefault("seed", user * 100)
    kw.setdefault("faces", "off")  # the tiny model draws no faces: the pass would only look (tests/e2e/test_faces.py)
    origin = make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=user)
    return make_job(make_request(prompt=prompt or f"a lighthouse, take {user}", aspect="12:5", **kw), origin,
                    job_id=job_id)


def _run(conn, pipeline, jobs, batch_images: int = 8, name: str = "batcher"):
    """Enqueue `jobs`, run one worker until the queues are empty, return {job_id: (result, images)}."""
    from worker.runner import make_worker

    box = results.Outbox(conn, "bot1", "t")
    box.ensure_group()
    q = DreamQueue(conn, load_settings())
    for j in jobs:
        q.enqueue(j)
    make_worker(load_settings(batch_images=batch_images), conn, pipeline, name=name).work(
        burst=True, logging_level="WARNING")
    got = {}
    for entry in box.read(block_ms=100, count=100):
        got[entry.job_id] = results.load(conn, image_store(), entry.job_id)
        box.ack(entry)
    return got


def _pixels(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.int16)


def _assert_same_image(a: bytes, b: bytes, what: str) -> None:
    """Equal within the float noise of a different batch shape (measured: a few pixels one level apart)."""
    pa, pb = _pixels(a), _pixels(b)
    assert pa.shape == pb.shape, what
    diff = np.abs(pa - pb)
    assert diff.max() <= 2 and (diff > 0).mean() <= 0.001, f"{what}: max {diff.max()}, {(diff > 0).mean():.4%}"


def test_compatible_dreams_share_one_batch_and_match_their_solo_images(tiny_env, rconn, pipeline):
    jobs = [_job(1, count=2, seed=11), _job(2, seed=22, negative_prompt="fog, blur"),
            _job(3, seed=33), _job(4, steps=3, seed=44)]  # the last has another step count: its own batch
    batched = _run(rconn, pipeline, jobs)
    assert set(batched) == {j.job_id for j in jobs}
    for j in jobs:
        result, images = batched[j.job_id]
        assert result.status == "done", result.error
        assert len(images) == j.request.count
        assert Job.fetch(j.job_id, connection=rconn, serializer=JSONSerializer).get_status() == "finished"
    for j in jobs[:3]:
        timings = batched[j.job_id][0].timings
        assert (timings["batch_jobs"], timings["batch_images"]) == (3, 4), timings
    assert batched[jobs[3].job_id][0].timings.get("batch_images", 1) == 1
    # What the member reads under their images says it shared a batch (the stage times are the batch's).
    from dreamcore.present import result_text

    text = result_text(batched[jobs[1].job_id][0])
    assert "in a batch of 4 images from 3 dreams" in text and "batch_images" not in text, text
    assert "1536x640 · no style · 4 steps" in text, text
    assert "in a batch" not in result_text(batched[jobs[3].job_id][0])

    # The same requests again, one at a time (fresh ids, batching off): every image is the same picture.
    rconn.flushall()
    solo_jobs = [_job(j.origin.user_id, prompt=j.request.prompt, **{
        k: getattr(j.request, k) for k in ("count", "seed", "steps", "style", "negative_prompt")}) for j in jobs]
    solo = _run(rconn, pipeline, solo_jobs, batch_images=1, name="solo")
    for j, s in zip(jobs, solo_jobs, strict=True):
        assert solo[s.job_id][0].timings.get("batch_images", j.request.count) == j.request.count
        for k, (a, b) in enumerate(zip(batched[j.job_id][1], solo[s.job_id][1], strict=True)):
            _assert_same_image(a, b, f"user {j.origin.user_id} image {k}")
    # ... and the test can fail: different members' images are different pictures.
    p1, p2 = _pixels(batched[jobs[1].job_id][1][0]), _pixels(batched[jobs[2].job_id][1][0])
    assert np.abs(p1 - p2).mean() > 5


def test_a_batch_never_holds_more_images_than_the_setting(tiny_env, rconn, pipeline):
    jobs = [_job(u, count=1 + (u == 2)) for u in range(1, 6)]  # 6 images, 3 per batch at most
    got = _run(rconn, pipeline, jobs, batch_images=3)
    sizes = [got[j.job_id][0].timings.get("batch_images", j.request.count) for j in jobs]
    assert all(r.status == "done" for r, _ in got.values())
    assert sizes == [3, 3, 3, 3, 3], sizes  # 1 + 2 (users 1, 2), then 1 + 1 + 1 (users 3, 4, 5)


class _Meddling:
    """The real pipeline, with something done to it around one batch call (what a test needs to happen
    exactly then)."""

    def __init__(self, pipeline, before=None):
        self._pipeline, self._before = pipeline, before
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def generate_prepared(self, items, on_step=None):
        self.calls.append(len(items))
        if self._before is not None:
            self._before(items)
        return self._pipeline.generate_prepared(items, on_step=on_step)


def test_a_job_cancelled_mid_batch_is_dropped_and_the_others_delivered(tiny_env, rconn, pipeline):
    jobs = [_job(1), _job(2), _job(3)]
    # Cancelled by its member once the batch is running: seen at the first step's check.
    meddled = _Meddling(pipeline, before=lambda items: rconn.set(cancel_key(jobs[1].job_id), "2"))
    got = _run(rconn, meddled, jobs)
    assert meddled.calls == [3]
    assert got[jobs[0].job_id][0].status == "done" and got[jobs[2].job_id][0].status == "done"
    cancelled = got[jobs[1].job_id][0]
    assert cancelled.status == "failed" and cancelled.error == "cancelled by you"
    assert got[jobs[1].job_id][1] == []


def test_a_batch_out_of_gpu_memory_runs_its_jobs_one_by_one(tiny_env, rconn, pipeline):
    import torch

    def oom_if_batched(items):
        if len(items) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    meddled = _Meddling(pipeline, before=oom_if_batched)
    jobs = [_job(1), _job(2, count=2), _job(3)]
    got = _run(rconn, meddled, jobs)
    assert meddled.calls == [3]  # the batch; then each job alone through generate()
    for j in jobs:
        result, images = got[j.job_id]
        assert result.status == "done", result.error
        assert len(images) == j.request.count


def test_a_bad_prompt_fails_alone_in_a_batch(tiny_env, rconn, pipeline):
    long_prompt = ("abcd " * 400)[:500]  # 400 tokens in the tiny tokenizer (one per letter): over the 300 taken
    jobs = [_job(1), _job(2, prompt=long_prompt), _job(3)]
    got = _run(rconn, pipeline, jobs)
    bad = got[jobs[1].job_id][0]
    assert bad.status == "failed" and "tokens" in bad.error
    for j in (jobs[0], jobs[2]):
        result = got[j.job_id][0]
        assert result.status == "done" and result.timings["batch_jobs"] == 2


def test_worker_killed_mid_batch_every_job_is_retaken_and_delivered_once(tiny_env, rconn, tmp_path):
    """SIGKILL while a batch of three denoises: all three are in RQ's started registry under the dead worker,
    a second worker takes them as abandoned jobs and each member gets their images once."""
    import subprocess
    import sys

    box = results.Outbox(rconn, "bot1", "t")
    box.ensure_group()
    q = DreamQueue(rconn, load_settings())
    jobs = [_job(u) for u in (1, 2, 3)]
    for j in jobs:
        q.enqueue(j)
    env = {**tiny_env, "DREAMBOT_LEASE": "5", "DREAMBOT_HEARTBEAT": "1", "DREAMBOT_LOG_FORMAT": "text",
           "PYTHONFAULTHANDLER": "1"}
    doomed = subprocess.Popen([sys.executable, "-m", "dreambot", "worker"],
                              env={**env, "DREAMBOT_TEST_FAULTS": "worker-mid-job"},
                              stdout=open(tmp_path / "doomed.log", "ab"), stderr=subprocess.STDOUT)
    assert doomed.wait(120) == -signal.SIGKILL
    started = set(q.queues["default"].started_job_registry.get_job_ids())
    assert started == {j.job_id for j in jobs}, "the whole batch was registered as started"
    assert q.waiting() == 0
    rescuer = subprocess.Popen([sys.executable, "-m", "dreambot", "worker"], env=env,
                               stdout=open(tmp_path / "rescuer.log", "ab"), stderr=subprocess.STDOUT)
    try:
        def finished():
            return all(q.fetch(j.job_id).get_status() == "finished" for j in jobs)
        wait_until(finished, 120, "the batch's jobs were not all retaken")
        time.sleep(0.5)
        entries = [e for e in box.read(block_ms=100, count=100) if e.status != "progress"]
        assert sorted(e.job_id for e in entries) == sorted(j.job_id for j in jobs), "each published once"
        for j in jobs:
            result, images = results.load(rconn, image_store(), j.job_id)
            assert result.status == "done" and len(images) == 1
    finally:
        rescuer.send_signal(signal.SIGTERM)
        try:
            rescuer.wait(60)
        except subprocess.TimeoutExpired:
            rescuer.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack into its log
            rescuer.wait(30)
            tail = (tmp_path / "rescuer.log").read_text(errors="replace")[-6000:]
            raise AssertionError(f"the worker did not stop within 60 s of SIGTERM; its log ends:\n{tail}") from None
