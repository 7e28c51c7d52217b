"""Shared fixtures: a real redis-server per test session, and the tiny SDXL model built once.

The layout: tests/unit (in this process, on the session's Redis and the tiny model), tests/e2e (each test
starts real processes: bots, workers, Redis replicas and sentinels, containers, an earlier release, a CLI;
marked `e2e`: `pytest -m "not e2e"` runs the rest, about 3.5 minutes on two cores), tests/support (what both
import)."""

from __future__ import annotations

import os
import tempfile

import pytest
import redis

from dreamcore.localredis import LocalRedis

# OpenMP threads that sleep when they have no work, set before torch loads here or in a process started from here
# (they inherit it). torch's pool takes every core and by default spins between parallel regions; with pytest -n 2
# on two cores there are always two pools (two test processes, or a test and the worker it started) on the same
# cores, each spinning in the other's time. Measured on this 2-core machine, pytest -n 2 over
# tests/unit/test_speed_levers.py and test_adapters.py: 162 s spinning, 90 s passive (one thread each: 90 s too,
# but a process alone then leaves a core idle). DREAMBOT's own settings do not touch threads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# One image store folder per test process, shared with the bots and workers it starts (tests/support/fleet.py), so
# nothing lands in the checkout; keys are job ids, so tests never see each other's images.
os.environ["DREAMBOT_IMAGE_DIR"] = tempfile.mkdtemp(prefix="dreambot-images-")


@pytest.hookimpl(trylast=True)  # after tests/e2e/conftest.py has marked its tests `e2e`
def pytest_collection_modifyitems(config, items):
    """Modules that run the model or start processes first, the rest last, each in its own order: pytest-xdist
    hands tests out in this order, so the quick ones (Redis and pure logic, about 55 s in all) fill in at the end
    and the two workers finish together. In file order the compile tests came last on one worker, which ran
    58 s after the other had finished (measured on this 2-core machine)."""
    heavy = {i.path for i in items if i.get_closest_marker("e2e") or "tiny_model_dir" in i.fixturenames}
    items.sort(key=lambda i: i.path not in heavy)  # a stable sort: the order within each part is kept


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server for the session; tests that kill it restart it (see `restart_redis`)."""
    server = LocalRedis().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server):
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def rconn(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny SDXL-architecture base + refiner, built in code and saved the way real weights are."""
    from worker.tiny import make_tiny_model

    out = tmp_path_factory.mktemp("tiny-sdxl")
    make_tiny_model(out)
    return out


@pytest.fixture
def tiny_env(tiny_model_dir, redis_url, monkeypatch, tmp_path):
    """Environment for a worker or demo on the tiny model and the test Redis."""
    env = {
        "REDIS_URL": redis_url,
        "DREAMBOT_BASE_MODEL": str(tiny_model_dir / "base"),
        "DREAMBOT_REFINER_MODEL": str(tiny_model_dir / "refiner"),
        "DREAMBOT_SAFETY_MODEL": str(tiny_model_dir / "safety"),
        "DREAMBOT_TURBO_ADAPTER": str(tiny_model_dir / "turbo"),
        "DREAMBOT_DEVICE": "cpu",
        "DREAMBOT_OUTPUT_DIR": str(tmp_path / "out"),
        "DREAMBOT_LOG_FORMAT": "json",
        "HF_HUB_OFFLINE": "1",
        "DREAMBOT_METRICS_PORT": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from dreamcore.settings import get_settings

    get_settings.cache_clear()
    yield {**os.environ, **env}
    get_settings.cache_clear()


@pytest.fixture
def standin():
    """The local Discord stand-in (REST + gateway) for one test."""
    from tests.support.standin import DiscordStandIn

    s = DiscordStandIn().start()
    yield s
    s.stop()


@pytest.fixture
def bare_fleet(standin, redis_url, tiny_model_dir, tmp_path):
    """A fleet on the stand-in and the test Redis with nothing set up yet (the test calls setup(n))."""
    from tests.support.fleet import Fleet

    f = Fleet(standin, redis_url, tiny_model_dir, tmp_path)
    yield f
    f.stop()


@pytest.fixture
def fleet(redis_url, tiny_model_dir, tmp_path):
    """The Discord stand-in and one bot instance's setup (not yet started) on the test Redis.
    Test modules that need more define their own `fleet`."""
    from tests.support.fleet import Fleet
    from tests.support.standin import DiscordStandIn

    standin = DiscordStandIn().start()
    f = Fleet(standin, redis_url, tiny_model_dir, tmp_path)
    f.setup(1)
    yield f
    f.stop()
    standin.stop()
