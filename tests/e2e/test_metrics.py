"""Prometheus metrics and /healthz, end to end: a real bot process and a real worker process (tests/support/fleet.py)
on free ports, one /dream through the Discord stand-in, then both endpoints scraped over HTTP."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dreamcore import metrics
from dreamcore.localredis import LocalRedis, free_port
from dreamcore.queue.rq_queues import queue_names
from tests.support.fleet import Fleet, image_messages

pytestmark = pytest.mark.timeout(180)


def _get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


def _wait_status(url: str, want: int, timeout: float) -> tuple[float, str]:
    """Poll until `url` answers `want`; returns (seconds waited, body)."""
    t0 = time.monotonic()
    status, body = 0, ""
    while time.monotonic() - t0 < timeout:
        status, body = _get(url)
        if status == want:
            return time.monotonic() - t0, body
        time.sleep(0.2)
    raise AssertionError(f"{url} answered {status} {body!r}, not {want}, for {timeout} s")


def _scrape(port: int) -> dict[tuple[str, frozenset], float]:
    status, text = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, (status, text)
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def fleet(bare_fleet):
    return bare_fleet


def test_one_dream_shows_up_in_the_bot_and_worker_metrics(fleet, standin):
    fleet.setup(1)
    bot = fleet.bots[0]
    bot_port, worker_port = free_port(), free_port()
    fleet.start_bot(bot, DREAMBOT_METRICS_PORT=str(bot_port), DREAMBOT_LIMIT_MAX_STEPS="10")
    # Model offload on the CPU: accelerate's hooks move nothing here, but the dream below runs through them
    # in a real worker process, and /healthz says which tier was taken.
    fleet.start_worker(DREAMBOT_METRICS_PORT=str(worker_port), DREAMBOT_OFFLOAD="model")
    fleet.wait_bots_ready()
    _, body = _wait_status(f"http://127.0.0.1:{bot_port}/healthz", 200, 15)
    assert body.strip() == "ok"

    inter = fleet.dream(bot, aspect="12:5", seed=7, faces="on")  # the face pass runs (and finds nothing)
    assert inter.wait_ack(5)["type"] in (4, 5)
    deadline = time.monotonic() + 120
    while not image_messages(standin, bot.channel_id):
        assert time.monotonic() < deadline, "no image delivered\n" + fleet.logs()[-3000:]
        time.sleep(0.1)
    # A limit refuses the next one: more steps than this guild allows.
    refusal = fleet.dream(bot, steps=20)
    body = refusal.wait_ack(5)
    assert body["type"] == 4 and body["data"]["flags"] & 64

    _, worker_health = _wait_status(f"http://127.0.0.1:{worker_port}/healthz", 200, 30)
    lines = worker_health.splitlines()
    assert lines[0] == "ok" and "device: cpu" in lines and "dtype: float32" in lines, worker_health
    assert any(x.startswith("memory: offload model, batches of up to 8 images: DREAMBOT_OFFLOAD=model on the CPU")
               for x in lines), worker_health
    assert "levers: fuse_qkv, channels_last" in lines, worker_health  # the defaults; compile is off on a CPU
    deadline = time.monotonic() + 10  # the delivery is counted once it is recorded, just after the post
    while not (_value(_scrape(bot_port), "dreambot_deliveries_total", where="interaction") or 0) >= 1:
        assert time.monotonic() < deadline, "delivery never counted"
        time.sleep(0.1)

    b = _scrape(bot_port)
    count = _value(b, "dreambot_ack_seconds_count")
    assert count is not None and count >= 2, count  # the dream and the refusal
    assert 0 < _value(b, "dreambot_ack_seconds_sum") < 3 * count
    assert _value(b, "dreambot_ack_seconds_bucket", le="3.0") == count  # every ack inside Discord's window
    assert _value(b, "dreambot_limits_refused_total", kind="max_steps") == 1
    assert _value(b, "dreambot_limits_refused_total", kind="busy") == 0  # preset, so rates see it
    assert _value(b, "dreambot_delivery_retries_total") == 0
    assert _value(b, "dreambot_redis_up") == 1

    w = _scrape(worker_port)
    for stage in ("encode", "base", "refiner", "decode", "faces", "png", "total"):
        assert _value(w, "dreambot_stage_seconds_count", stage=stage) == 1, stage  # one image
        assert _value(w, "dreambot_stage_seconds_sum", stage=stage) > 0, stage
    parts = sum(_value(w, "dreambot_stage_seconds_sum", stage=s)
                for s in ("encode", "base", "refiner", "decode", "faces", "png"))
    assert parts <= _value(w, "dreambot_stage_seconds_sum", stage="total") * 1.01
    assert _value(w, "dreambot_jobs_total", outcome="done") == 1
    assert _value(w, "dreambot_jobs_total", outcome="failed") == 0
    assert all(_value(w, "dreambot_jobs_failed_total", reason=r) == 0 for r in metrics.FAIL_REASONS)
    for samples in (b, w):  # every process reports the live depth of every queue
        assert {_value(samples, "dreambot_queue_depth", queue=q) for q in queue_names()} == {0}
    assert _value(w, "process_resident_memory_bytes") > 0  # the default collectors come along

    assert _get(f"http://127.0.0.1:{bot_port}/healthz") == (200, "ok\n")
    assert _get(f"http://127.0.0.1:{worker_port}/healthz") == (200, worker_health)  # the same details, still ok


def test_worker_health_turns_503_when_redis_goes_away(tiny_model_dir, tmp_path):
    private = LocalRedis().start()
    fleet = Fleet(None, private.url, tiny_model_dir, tmp_path)  # no Discord: a worker alone
    port = free_port()
    health = f"http://127.0.0.1:{port}/healthz"
    try:
        fleet.start_worker(DREAMBOT_METRICS_PORT=str(port))
        _wait_status(health, 200, 60)
        private.kill()
        waited, body = _wait_status(health, 503, metrics.REDIS_FRESH_S + 10)
        assert "redis reachable" in body and "models loaded" not in body
        assert waited >= metrics.REDIS_FRESH_S - 3, "a blip shorter than REDIS_FRESH_S is not an outage"
        w = _scrape(port)  # the scrape still answers, fast, without a stale depth
        assert _value(w, "dreambot_redis_up") == 0
        assert not [k for k in w if k[0] == "dreambot_queue_depth"]
        private.start()
        _wait_status(health, 200, 15)
    finally:
        fleet.stop()
        private.close()


def test_queue_depth_is_read_at_scrape_time_and_survives_a_dead_redis(rconn, redis_url):
    from prometheus_client import CollectorRegistry, generate_latest

    rconn.rpush("rq:queue:dream-low", "a", "b", "c")
    rconn.rpush("rq:queue:dream-high", "d")
    registry = CollectorRegistry()
    registry.register(metrics.QueueDepthCollector(redis_url))
    text = generate_latest(registry).decode()
    assert 'dreambot_queue_depth{queue="dream-low"} 3.0' in text
    assert 'dreambot_queue_depth{queue="dream-high"} 1.0' in text
    assert 'dreambot_queue_depth{queue="dream-default"} 0.0' in text
    assert "dreambot_redis_up 1.0" in text

    dead = CollectorRegistry()
    dead.register(metrics.QueueDepthCollector(f"redis://127.0.0.1:{free_port()}/0"))
    t0 = time.monotonic()
    text = generate_latest(dead).decode()
    assert time.monotonic() - t0 < 1.5
    assert "dreambot_redis_up 0.0" in text and "dreambot_queue_depth{" not in text


def test_labels_stay_in_small_fixed_sets():
    # Process-wide counters: each call must add exactly one to the folded label, whatever ran before.
    before = (metrics.LIMITS_REFUSED.labels("other")._value.get(),
              metrics.DELIVERIES.labels("undeliverable")._value.get(),
              metrics.JOBS_FAILED.labels("internal")._value.get())
    metrics.refused("something new")
    metrics.delivered("undeliverable: channel 123: Unknown Channel")
    metrics.job_failed("who knows")
    after = (metrics.LIMITS_REFUSED.labels("other")._value.get(),
             metrics.DELIVERIES.labels("undeliverable")._value.get(),
             metrics.JOBS_FAILED.labels("internal")._value.get())
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    assert "something new" not in {s.labels.get("kind") for m in metrics.LIMITS_REFUSED.collect() for s in m.samples}


def test_port_zero_serves_nothing_and_a_taken_port_is_not_fatal():
    assert metrics.start_metrics_server(0) is None
    port = free_port()
    first = metrics.start_metrics_server(port, metrics.Health({"x": lambda: True}))
    try:
        assert metrics.start_metrics_server(port) is None
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    finally:
        first.shutdown()
        first.server_close()


def test_redis_probe_counts_only_recent_answers(redis_url):
    probe = metrics.RedisProbe(redis_url, every_s=0.1).start()
    try:
        deadline = time.monotonic() + 5
        while not probe.fresh():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not probe.fresh(within_s=-1)
    finally:
        probe.stop()
    assert not metrics.RedisProbe(f"redis://127.0.0.1:{free_port()}/0").fresh()
