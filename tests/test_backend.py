"""Submitting, viewing and cancelling dreams on a real Redis: limits, backpressure, ETA, fair order,
cancellation of waiting and running jobs, and quota given back."""

from __future__ import annotations

import threading
import time

import pytest
from fleet import image_store

from dreamcore import results, stats
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.settings import get_settings, load_settings


def _job(user=1, guild=10, count=1, prompt="a lighthouse", steps=4, **kw):
    origin = make_origin(instance="bot1", guild_id=guild, channel_id=20, user_id=user)
    return make_job(make_request(prompt=prompt, count=count, steps=steps, seed=1, aspect="12:5", **kw), origin)


@pytest.fixture
def backend(rconn):
    from bot.backend import Backend

    b = Backend(load_settings(limit_cooldown_s=0, limit_user_max_active=50, max_wait_min=10), rconn)
    return b


def test_limit_refusal_says_which_and_when(backend):
    backend.store.set(10, "cooldown_s", "45", actor_id=99)
    assert backend.submit(_job()).ok
    refused = backend.submit(_job())
    assert not refused.ok and refused.kind == "cooldown"
    assert refused.message.startswith("cooldown: try again in 4") and refused.message.endswith(" s")


def test_refused_or_failed_enqueue_gives_quota_back(backend, rconn):
    backend.store.set(10, "user_images_hour", "4", actor_id=99)
    rconn.hset(stats.STATS_KEY, "s_per_image", "1000")  # every dream is now "too busy"
    busy = backend.submit(_job(count=4))
    assert not busy.ok and busy.kind == "busy"
    rconn.hdel(stats.STATS_KEY, "s_per_image")
    assert backend.submit(_job(count=4)).ok  # the busy refusal did not eat the quota


def test_backpressure_states_the_wait(backend, rconn):
    rconn.hset(stats.STATS_KEY, "s_per_image", "30")
    accepted = 0
    while True:
        out = backend.submit(_job(user=100 + accepted, count=4))
        if not out.ok:
            break
        accepted += 1
        assert accepted < 50
    # 10 min of work at 30 s/image and one worker: 20 images fit, the 6th 4-image dream would pass the bound.
    assert accepted == 5
    assert out.kind == "busy" and out.message.startswith("busy: about 10 min of work is queued")


def test_eta_and_queue_view(backend, rconn):
    rconn.hset(stats.STATS_KEY, "s_per_image", "2")
    a = backend.submit(_job(user=1, count=2))
    b = backend.submit(_job(user=2, count=3))
    assert a.eta_s == pytest.approx(4) and b.eta_s == pytest.approx(10)
    mine = backend.my_jobs(10, 2)
    assert [(j.job_id, j.state, j.position) for j in mine] == [(b.job_id, "waiting", 1)]
    assert mine[0].eta_s == pytest.approx(10)
    assert backend.my_jobs(11, 2) == []  # another guild's view


def test_priority_roles_use_the_high_queue(backend):
    backend.store.set(10, "priority_roles", "555", actor_id=99)
    low = backend.submit(_job(user=1))
    vip = backend.submit(_job(user=2), role_ids=[555])
    assert vip.position == 0 and backend.queue.position(low.job_id) == 1


def test_cancel_rules_and_refund(backend, rconn):
    backend.store.set(10, "user_images_day", "2", actor_id=99)
    out = backend.submit(_job(user=1, count=2))
    assert not backend.submit(_job(user=1)).ok
    assert "Only the member" in backend.cancel(out.job_id, actor_id=2, guild_id=10, is_admin=False).message
    assert "know no dream" in backend.cancel(out.job_id, actor_id=1, guild_id=77, is_admin=True).message
    assert "know no dream" in backend.cancel("../../etc", actor_id=1, guild_id=10, is_admin=False).message
    done = backend.cancel(out.job_id, actor_id=1, guild_id=10, is_admin=False)
    assert done.ok and backend.queue.position(out.job_id) is None
    result, _ = results.load(rconn, image_store(), out.job_id)
    assert result.status == "failed" and result.error == "cancelled by you"
    assert backend.submit(_job(user=1, count=2)).ok  # quota came back
    again = backend.cancel(out.job_id, actor_id=1, guild_id=10, is_admin=False)
    assert not again.ok and "already ended" in again.message


def test_admin_cancels_anyones(backend, rconn):
    out = backend.submit(_job(user=1))
    assert backend.cancel(out.job_id, actor_id=2, guild_id=10, is_admin=True).ok
    assert results.load(rconn, image_store(), out.job_id)[0].error == "cancelled by <@2>"


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    from worker.pipeline import DreamPipeline

    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")


def _finished_order(rconn):
    return [e[1][b"job_id"].decode() for e in rconn.xrange(results.outbox_key("bot1"))]


def test_fairness_one_members_pile_does_not_starve_another(backend, rconn, tiny_env, pipeline):
    from worker.runner import make_worker

    a_jobs = [backend.submit(_job(user=1, steps=1)).job_id for _ in range(20)]
    b_job = backend.submit(_job(user=2, steps=1)).job_id
    assert all(a_jobs)
    make_worker(get_settings(), rconn, pipeline, name="fair").work(burst=True, max_jobs=2, logging_level="WARNING")
    assert b_job in _finished_order(rconn)[:2]


def test_running_job_stops_at_the_next_step_and_refunds(backend, rconn, tiny_env, pipeline):
    from worker.runner import make_worker

    backend.store.set(10, "user_images_day", "1", actor_id=99)
    out = backend.submit(_job(user=3, steps=60))
    assert out.ok
    said = {}

    def cancel_once_started():  # the worker needs the main thread (signals), so the member acts from here
        deadline = time.monotonic() + 30
        while backend.queue.fetch(out.job_id).get_status() != "started" and time.monotonic() < deadline:
            time.sleep(0.02)
        said["msg"] = backend.cancel(out.job_id, actor_id=3, guild_id=10, is_admin=False)

    t = threading.Thread(target=cancel_once_started)
    t.start()
    t0 = time.monotonic()
    make_worker(get_settings(), rconn, pipeline, name="cancel").work(burst=True, logging_level="WARNING")
    t.join(5)
    assert said["msg"].ok and "next step" in said["msg"].message
    assert time.monotonic() - t0 < 20  # 60 steps would take far longer than stopping at the next one
    result, _ = results.load(rconn, image_store(), out.job_id)
    assert result.status == "failed" and result.error == "cancelled by you"
    assert backend.submit(_job(user=3)).ok  # the day's one image came back
