"""Quality, turbo and relax (dreamcore.modes): what each request runs and costs, the quotas that count it (and
relax, which none does), the queue that serves relax only when fast work is done, batches that never mix
modes, and the ETAs measured per mode. The worker's half (the adapter, the scheduler) is tests/unit/test_adapters.py;
the whole way through a bot, a worker and the Discord stand-in is at the end."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from dreamcore import cost, stats
from dreamcore.job import JobError, make_job, make_origin, make_request, parse_job
from dreamcore.limits.limiter import Limiter
from dreamcore.limits.stored import LimitStore
from dreamcore.modes import TURBO
from dreamcore.queue import fair_order
from dreamcore.queue.rq_queues import DreamQueue, claim_companions, queue_names
from dreamcore.settings import load_settings
from tests.support.fleet import click, one_bot, result_message, send

T0 = 1_700_000_000.0


def _origin(user: int = 7, guild: int | None = 42):
    return make_origin(instance="dreambot", guild_id=guild, channel_id=5, user_id=user)


def _job(mode: str = "quality", user: int = 7, guild: int | None = 42, **fields):
    return make_job(make_request(prompt="a lighthouse", seed=1, mode=mode, **fields), _origin(user, guild))


# --- What a request in each mode runs ------------------------------------------------------------------------


def test_a_turbo_request_runs_the_turbo_recipe_whatever_was_given():
    req = make_request(prompt="a fox", mode="turbo", steps=40, guidance=9.0, split=0.7)
    assert (req.steps, req.guidance, req.split, req.adapter) == (TURBO.steps, TURBO.guidance, TURBO.split, "turbo")
    # A payload that says turbo with other settings is refused, naming the fixed ones.
    job = make_job(req, _origin())
    raw = job.to_dict()
    raw["request"]["steps"] = 30
    with pytest.raises(JobError, match="a turbo dream runs 4 steps at guidance 0 on the base alone"):
        parse_job(raw)


def test_the_mode_travels_only_where_it_says_something():
    quality = _job()
    assert quality.v == 1 and "mode" not in quality.to_dict()["request"]  # a worker of an older release reads it
    turbo, relax = _job("turbo"), _job("relax")
    assert turbo.v == relax.v == 5
    assert parse_job(turbo.to_json()).request.mode == "turbo"
    assert parse_job(json.dumps(relax.to_dict() | {"priority": "relax"})).priority == "relax"


def test_a_kind_without_a_turbo_path_runs_in_quality_mode():
    turbo = _job("turbo")
    src = {"job_id": turbo.job_id, "index": 0, "strength": 0.3}
    upscale = make_job(turbo.request, turbo.origin, kind="upscale", source=src)
    assert (upscale.request.mode, upscale.request.steps, upscale.request.guidance) == ("quality", 40, 7.0)
    variation = make_job(turbo.request, turbo.origin, kind="variation", source=src | {"strength": 0.55})
    assert variation.request.mode == "turbo" and variation.request.steps == TURBO.steps
    relax = make_job(_job("relax").request, turbo.origin, kind="upscale", source=src)
    assert relax.request.mode == "relax"  # relax is a queue: every kind has it


def test_a_turbo_dream_takes_no_face_pass():
    assert _job("turbo").face_pass is None
    assert _job("quality").face_pass is not None and _job("relax").face_pass is not None


def test_each_mode_costs_its_gpu_time_in_the_one_unit():
    settings = load_settings()

    def units(job):
        return cost.of_job(job, settings.upscale_tile, settings.upscale_overlap)

    assert units(_job()) == 1.0
    assert units(_job("relax")) == 1.0  # the quality path's GPU time, only queued behind
    # Four steps without guidance: (4 * 0.5 + 2) / 42 of a standard image.
    assert units(_job("turbo")) == cost.turbo_image() == 0.1
    assert units(_job("turbo", count=4)) == 0.38
    assert cost.left_text(12.3) == "about 12 more standard dreams, or 123 turbo"
    assert cost.left_text(1.0, turbo=False) == "about 1 more standard dream"


# --- Quotas ---------------------------------------------------------------------------------------------------


@pytest.fixture
def limiter(rconn):
    rconn.flushdb()
    store = LimitStore(rconn, load_settings())
    for key, value in {"user_images_hour": "2", "cooldown_s": "0", "user_max_active": "50"}.items():
        store.set(42, key, value, 99)
    return Limiter(rconn, store)


def _acquire(limiter, job_id: str, units: float, mode: str, now: float = T0):
    return limiter.acquire(42, 7, job_id, 1, 40, units=units, mode=mode, now=now)


def test_relax_draws_from_no_quota_and_the_fast_modes_from_one(limiter):
    assert _acquire(limiter, "a" * 16, 1.0, "quality").ok
    assert _acquire(limiter, "b" * 16, 0.9, "turbo").ok  # nine turbo images' worth
    got = _acquire(limiter, "c" * 16, 0.2, "turbo")
    assert not got.ok and got.kind == "user_hour", got
    # The quota is spent, and relax still runs: it counts against nothing.
    assert _acquire(limiter, "d" * 16, 1.0, "relax").ok
    assert limiter.store.usage(42, 7, now=T0)["user_images_hour"] == 1.9
    assert _acquire(limiter, "e" * 16, 0.1, "turbo").ok


def test_a_mode_the_server_turned_off_is_refused_with_a_way_on(limiter):
    limiter.store.set(42, "turbo", "off", 99)
    got = _acquire(limiter, "a" * 16, 0.1, "turbo")
    assert not got.ok and got.kind == "mode" and "doesn't take turbo dreams; try mode:quality" in got.message
    assert _acquire(limiter, "b" * 16, 1.0, "quality").ok
    # The server's default mode must be one it allows.
    from dreamcore.limits.model import LimitError
    with pytest.raises(LimitError, match="the default mode is turbo, which is off here"):
        limiter.store.set(42, "mode", "turbo", 99)


def test_a_finished_job_is_charged_what_it_cost(limiter):
    assert _acquire(limiter, "a" * 16, 1.0, "quality").ok
    # Its face pass found and redrew more than was charged up front: the quota takes the measured cost.
    limiter.release(42, 7, "a" * 16, settle=1.44)
    assert limiter.store.usage(42, 7, now=T0 + 1)["user_images_hour"] == 1.44
    assert _acquire(limiter, "b" * 16, 0.5, "quality", now=T0 + 2).ok
    limiter.release(42, 7, "b" * 16, settle=0.25)  # and less, where it cost less
    assert limiter.store.usage(42, 7, now=T0 + 3)["user_images_hour"] == 1.69
    # A relax job was charged nothing, and is settled at nothing.
    assert _acquire(limiter, "c" * 16, 1.0, "relax", now=T0 + 4).ok
    limiter.release(42, 7, "c" * 16, settle=1.0)
    assert limiter.store.usage(42, 7, now=T0 + 5)["user_images_hour"] == 1.69


# --- The queue ------------------------------------------------------------------------------------------------


def test_relax_waits_while_fast_work_is_queued_and_runs_when_it_is_not(rconn):
    rconn.flushdb()
    q = DreamQueue(rconn, load_settings())
    relax = _job("relax", user=1).model_copy(update={"priority": "relax"})
    q.enqueue(relax, 1.0)
    fast = [_job(user=2), _job("turbo", user=3).model_copy(update={"priority": "low"})]
    for job in fast:
        q.enqueue(job, 1.0)
    # Behind every fast dream, though it came first; its place and ETA say so.
    assert q.place(relax.job_id).ahead == 2
    order = [fair_order.claim_next(rconn, queue_names())[1] for _ in range(3)]
    assert order == [fast[0].job_id, fast[1].job_id, relax.job_id]
    assert fair_order.claim_next(rconn, queue_names()) is None


def test_a_turbo_batch_and_a_quality_batch_never_mix(rconn):
    rconn.flushdb()
    q = DreamQueue(rconn, load_settings())
    quality = [_job(user=u) for u in (1, 2)]
    turbo = [_job("turbo", user=u) for u in (3, 4)]
    relax = _job("relax", user=5).model_copy(update={"priority": "relax"})
    for job in (*quality, *turbo, relax):
        q.enqueue(job, 1.0)
    assert turbo[0].batch_key == "1024x1024/4/4/0/turbo" and quality[0].batch_key == "1024x1024/40/32/7"
    got = claim_companions(rconn, turbo[0].batch_key, 8, 50)
    assert sorted(j for _, j in got) == sorted(j.job_id for j in turbo)
    # A relax dream shares a quality dream's key, but never rides along in a fast batch ...
    got = claim_companions(rconn, quality[0].batch_key, 8, 50)
    assert sorted(j for _, j in got) == sorted(j.job_id for j in quality)
    # ... only in a relax one.
    assert claim_companions(rconn, relax.batch_key, 8, 50, relax=True) == [("dream-relax", relax.job_id)]


def test_etas_use_each_modes_own_measured_speed(rconn):
    rconn.flushdb()
    turbo, quality = _job("turbo"), _job()
    stats.record_job(rconn, 10.0, 1.0, stats.speed_key(quality))
    stats.record_job(rconn, 0.5, 0.1, stats.speed_key(turbo))  # 5 s a unit: its fixed costs weigh more
    speed = stats.Speed(rconn)
    assert stats.speed_key(turbo) == "turbo-dream" and speed.of("turbo-dream") == 5.0 and speed.of("dream") == 10.0
    assert speed.eta_s(0.0, 0.1, "turbo-dream") == pytest.approx(0.5 / max(1, speed.workers))
    # The ETAs a waiting reply is refreshed with (bot/progress.py) time each job's own part by its mode too.
    q = DreamQueue(rconn, load_settings())
    q.enqueue(quality, 1.0)
    q.enqueue(turbo, 0.1)
    got = stats.eta_for(q, [quality.job_id, turbo.job_id], {turbo.job_id: "turbo-dream", quality.job_id: "dream"})
    workers = max(1, stats.Speed(rconn).workers)
    overall = stats.Speed(rconn).overall
    assert got[turbo.job_id] == (1, pytest.approx((1.0 * overall + 0.1 * 5.0) / workers))
    assert got[quality.job_id] == (0, pytest.approx(10.0 / workers))


# --- Through a real bot, worker and the Discord stand-in ---------------------------------------------------------


@pytest.fixture(scope="module")
def e(redis_server, tiny_model_dir, tmp_path_factory):
    with one_bot(redis_server, tiny_model_dir, tmp_path_factory.mktemp("modes")) as e:
        yield e


def admin_set(e, key: str, value: str) -> str:
    _, text, _ = send(e, {"key": key, "value": value}, user=e.admin, command="dreamadmin", subcommand="set")
    return text


def test_a_turbo_dream_runs_the_fixed_recipe_says_so_and_its_buttons_keep_it(e):
    inter, text, _ = send(e, {"prompt": "a fox in the snow", "negative": "blurry", "mode": "turbo", "steps": 30})
    assert "⚡ Turbo · 1024x1024" in text and "4 fixed steps (base + Lightning, no guidance)" in text, text
    assert "can't use your negative prompt" in text, text
    job = text.split("`")[1]
    msg = result_message(e, inter)
    assert "⚡ Turbo" in msg.content, msg.content
    (att,) = msg.attachments
    assert Image.open(io.BytesIO(att.data)).size == (1024, 1024)
    _, info, _ = click(e, msg, f"dream:i:{job}")
    assert "mode: Turbo" in info and "steps: 4 fixed (4 run on the base with SDXL-Lightning's LoRA" in info, info
    # Reroll keeps the mode; an upscale (the refiner's work, no turbo path) runs in quality mode.
    _, said, _ = click(e, msg, f"dream:r:{job}")
    assert "⚡ Turbo" in said, said
    _, said, _ = click(e, msg, f"dream:u:{job}:0")
    # (at the operator's default steps and guidance: the fleet's DREAMBOT_DEFAULT_STEPS is 4)
    assert "Turbo" not in said and "2048x2048 · no style · 4 steps (refiner from 80%) · guidance 7" in said, said


def test_the_server_chooses_the_default_mode_and_which_modes_it_takes(e):
    assert "turbo" in admin_set(e, "turbo", "off")
    try:
        _, text, ephemeral = send(e, {"prompt": "a fox", "mode": "turbo"})
        assert ephemeral and "this server doesn't take turbo dreams; try mode:quality" in text, text
        assert "mode" in admin_set(e, "mode", "relax")
        inter, text, _ = send(e, {"prompt": "a fox", "steps": 2})  # left out: the server's default
        assert "🌙 Relax ·" in text and "counts against no quota" in text, text
        assert "🌙 Relax" in result_message(e, inter).content
    finally:
        admin_set(e, "mode", "default")
        admin_set(e, "turbo", "default")
