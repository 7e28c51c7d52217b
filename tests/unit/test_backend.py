"""Submitting, viewing and cancelling dreams on a real Redis: limits, backpressure, ETA, fair order,
cancellation of waiting and running jobs, and quota given back."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from dreamcore import keys, results, stats
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.settings import get_settings, load_settings
from tests.support.fleet import image_store


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


def _units(backend, job) -> float:
    return backend.queue.units(job)


def test_refused_or_failed_enqueue_gives_quota_back(backend, rconn):
    backend.store.set(10, "user_images_hour", "4", actor_id=99)
    rconn.hset(keys.STATS_KEY, "s_per_unit", "600")  # the most believed: a 3.75-unit dream is 37 min of work
    busy = backend.submit(_job(count=4, steps=40))
    assert not busy.ok and busy.kind == "busy"
    rconn.hdel(keys.STATS_KEY, "s_per_unit")
    assert backend.submit(_job(count=4, steps=40)).ok  # the busy refusal did not eat the quota


def test_backpressure_is_per_server_and_states_the_wait(backend, rconn):
    """A server whose next dream would wait past DREAMBOT_MAX_WAIT_MIN (10 min here) is told "busy"; another
    server's first dream stands ahead of that backlog and is taken."""
    unit = _units(backend, _job(user=1, count=4, steps=40))
    rconn.hset(keys.STATS_KEY, "s_per_unit", f"{120 / unit:.4f}")  # a 4-image dream takes 2 min
    accepted = 0
    while True:
        out = backend.submit(_job(user=100 + accepted, count=4, steps=40))
        if not out.ok:
            break
        accepted += 1
        assert accepted < 50
    # 10 min of work, 2 min a dream, one worker: the 5th dream ends at 10 min, the 6th would pass the bound.
    assert accepted == 5
    assert out.kind == "busy" and out.message.startswith("busy: this server has 5 dreams waiting and a new one "
                                                         "would wait about 10 min")
    other = backend.submit(_job(user=999, guild=11, count=4, steps=40))
    assert other.ok and other.position == 1  # behind the flooding server's first dream only


def test_eta_and_queue_view(backend, rconn):
    rconn.hset(keys.STATS_KEY, "s_per_unit", "2")
    ja, jb = _job(user=1, count=2), _job(user=2, count=3)
    ua, ub = _units(backend, ja), _units(backend, jb)
    a = backend.submit(ja)
    b = backend.submit(jb)
    assert a.eta_s == pytest.approx(2 * ua) and b.eta_s == pytest.approx(2 * (ua + ub))
    mine = backend.my_jobs(10, 2)
    assert [(j.job_id, j.state, j.position) for j in mine] == [(b.job_id, "waiting", 1)]
    assert mine[0].eta_s == pytest.approx(2 * (ua + ub))
    assert backend.my_jobs(11, 2) == []  # another guild's view


def test_eta_times_the_jobs_own_part_at_its_kinds_speed(backend, rconn):
    rconn.hset(keys.STATS_KEY, mapping={"s_per_unit": "2", "s_per_unit:dream": "3"})
    ja = _job(user=1, count=2)
    a = backend.submit(ja)
    assert a.eta_s == pytest.approx(3 * _units(backend, ja))


def test_priority_roles_go_first_inside_their_server(backend):
    backend.store.set(10, "priority_roles", "555", actor_id=99)
    low = backend.submit(_job(user=1))
    vip = backend.submit(_job(user=2), role_ids=[555])
    assert vip.position == 0 and backend.queue.position(low.job_id) == 1


def test_cancel_rules_and_refund(backend, rconn):
    backend.store.set(10, "user_images_day", "2", actor_id=99)  # units: a 40-step 1536x640 image is 0.94
    out = backend.submit(_job(user=1, count=2, steps=40))
    assert not backend.submit(_job(user=1, steps=40)).ok
    assert "Only the member" in backend.cancel(out.job_id, actor_id=2, guild_id=10, is_admin=False).message
    assert "know no dream" in backend.cancel(out.job_id, actor_id=1, guild_id=77, is_admin=True).message
    assert "know no dream" in backend.cancel("../../etc", actor_id=1, guild_id=10, is_admin=False).message
    done = backend.cancel(out.job_id, actor_id=1, guild_id=10, is_admin=False)
    assert done.ok and backend.queue.position(out.job_id) is None
    result, _ = results.load(rconn, image_store(), out.job_id)
    assert result.status == "failed" and result.error == "cancelled by you"
    assert backend.submit(_job(user=1, count=2, steps=40)).ok  # quota came back
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
    return [e[1][b"job_id"].decode() for e in rconn.xrange(keys.outbox_key("bot1"))]


def test_fairness_one_members_pile_does_not_starve_another(backend, rconn, tiny_env, pipeline):
    from worker.runner import make_worker

    a_jobs = [backend.submit(_job(user=1, steps=1)).job_id for _ in range(20)]
    b_job = backend.submit(_job(user=2, steps=1)).job_id
    assert all(a_jobs)
    # The worker's first claim (one batch of up to DREAMBOT_BATCH_IMAGES, in run order) takes B's dream:
    # it stands second, behind A's first. (Which result of a batch is published first is the finisher's.)
    make_worker(get_settings(), rconn, pipeline, name="fair").work(burst=True, max_jobs=1, logging_level="WARNING")
    finished = _finished_order(rconn)
    assert b_job in finished and len(finished) <= get_settings().batch_images


def test_running_job_stops_at_the_next_step_and_refunds(backend, rconn, tiny_env, pipeline):
    from worker.runner import make_worker

    backend.store.set(10, "user_images_day", "2", actor_id=99)  # 60 steps: 1.38 units; 40 steps: 0.94
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
    assert backend.submit(_job(user=3, steps=40)).ok  # the day's quota came back


def test_a_dream_past_its_deadline_is_not_queued_and_its_quota_comes_back(backend, rconn):
    """"can't queue" is said only of a dream that was not queued: past its deadline a submit queues nothing
    and gives back what it took."""
    backend.store.set(10, "user_images_hour", "1", actor_id=99)
    late = backend.submit(_job(user=5, steps=40), deadline=time.monotonic() - 1)
    assert not late.ok and late.kind == "unavailable" and "can't queue" in late.message
    assert backend.queue.waiting() == 0 and not rconn.keys("dream:job:*")
    assert backend.submit(_job(user=5, steps=40)).ok  # the hour's one unit was given back


def test_a_dream_a_worker_took_before_the_error_reached_the_bot_is_not_called_unqueued(backend, rconn, monkeypatch):
    """Redis fails after the enqueue went through (the reply lost): a dream still waiting is taken back and
    the member hears "can't queue"; one a worker already holds will come, so the member is told that."""
    from bot.backend import UNCONFIRMED
    from dreamcore.queue import fair_order, rq_queues

    real = rq_queues.DreamQueue.enqueue

    def enqueued_then_lost(self, job, *args, **kw):
        real(self, job, *args, **kw)
        if job.request.prompt == "taken":
            fair_order.claim_next(rconn, rq_queues.queue_names())  # a worker was quicker than the reply
        raise redis.ConnectionError("the reply never came")

    monkeypatch.setattr(rq_queues.DreamQueue, "enqueue", enqueued_then_lost)
    gone = backend.submit(_job(user=6, prompt="still waiting"))
    assert not gone.ok and gone.kind == "unavailable" and backend.queue.waiting() == 0
    taken = backend.submit(_job(user=7, prompt="taken"))
    assert not taken.ok and taken.kind == "unconfirmed" and taken.message == UNCONFIRMED


def test_direct_messages_can_be_turned_off(rconn):
    from bot.backend import NO_DMS, Backend

    off = Backend(load_settings(direct_messages=False), rconn)
    dm = make_job(make_request(prompt="in a dm", seed=1), make_origin(instance="bot1", channel_id=20, user_id=1))
    out = off.submit(dm)
    assert (out.ok, out.kind, out.message) == (False, "dm", NO_DMS)
    assert Backend(load_settings(), rconn).submit(dm).ok


def test_an_upscale_is_charged_by_its_tiles(backend, rconn):
    """2048 -> 4096 is 25 tiles of the refiner: it costs its tiles' work in the quotas, the queue's counters
    and the ETA, not one image."""
    from dreamcore import cost
    from dreamcore.job import JobSource

    rconn.hset(keys.STATS_KEY, mapping={"s_per_unit": "1", "s_per_unit:upscale": "2"})
    up = make_job(make_request(prompt="big", seed=1, steps=40), make_origin(instance="bot1", guild_id=10,
                                                                            channel_id=20, user_id=8),
                  kind="upscale", source=JobSource(job_id="0123456789abcdef", index=0, strength=0.3))
    units = backend.queue.units(up, (4096, 4096))
    assert units == cost.rounded(cost.upscale_units(4096, 4096, 40, 0.3, 7.0, 1024, 128)) > 6
    out = backend.submit(up, size=(4096, 4096))
    assert out.ok and out.eta_s == pytest.approx(2 * units)
    assert backend.store.usage(10, 8)["user_images_hour"] == pytest.approx(units)
    assert fairq_units(rconn) == pytest.approx(units)


def fairq_units(rconn) -> float:
    from dreamcore.queue import fair_order
    from dreamcore.queue.rq_queues import queue_names

    return fair_order.totals(rconn, queue_names()).units


def test_in_direct_messages_each_member_is_a_server_of_their_own(backend):
    """One member's pile of direct-message dreams never queues ahead of another member's first."""
    def dm(user):
        return make_job(make_request(prompt="dm", seed=1, steps=4), make_origin(instance="bot1", channel_id=20,
                                                                                user_id=user))
    for _ in range(5):
        assert backend.submit(dm(41)).ok
    assert backend.submit(dm(42)).position == 1  # behind one of 41's, not five


def test_a_speed_past_belief_is_not_believed(rconn):
    """Per-server backpressure reads the pool's speed: a figure no GPU reaches (a worker's bug, or anyone with
    a worker's Redis rights) is capped, so it can't tell every server "busy" for hours."""
    rconn.hset(keys.STATS_KEY, mapping={"s_per_unit": "1e9", "s_per_unit:dream": "nonsense"})
    speed = stats.Speed(rconn)
    assert speed.overall == stats.MAX_S_PER_UNIT and "dream" not in speed.per_kind
