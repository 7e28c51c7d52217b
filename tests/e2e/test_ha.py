"""Redis Sentinel on loopback, all real processes (tests/support/ha.py): clients follow a failover without a restart,
"queued" means a replica has it, the Lua scripts survive a primary that never saw them, and the short
failover chaos run (bench/chaos.py --failover --quick) loses nothing and posts nothing twice."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time

import pytest
import redis

from dreamcore import keys, redisconn
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.queue import fair_order
from dreamcore.queue.rq_queues import DreamQueue, queue_names
from dreamcore.settings import load_settings
from tests.support import ROOT
from tests.support.ha import HaRedis


def _job(user: int = 1, guild: int = 10):
    origin = make_origin(instance="bot1", guild_id=guild, channel_id=20, user_id=user)
    return make_job(make_request(prompt=f"from {user}", seed=1, faces="off"), origin)


@pytest.fixture
def ha():
    group = HaRedis().start()
    yield group
    group.stop()


def _patient(fn, timeout: float = 20.0):
    """What the callers' own backoff does after a failover: try again until the new primary answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _wait_replica_online(conn: redis.Redis, timeout: float = 30.0) -> None:
    """Until a replica has finished its initial sync and acknowledges writes (what WAIT counts)."""
    deadline = time.monotonic() + timeout
    while conn.info("replication").get("slave0", {}).get("state") != "online" or conn.wait(1, 1000) < 1:
        assert time.monotonic() < deadline, "no replica came back online"
        time.sleep(0.1)


def _replica(ha: HaRedis) -> redis.Redis:
    primary = ha.primary_port()
    node = next(n for n in ha.nodes if n.port != primary and n.proc is not None and n.proc.poll() is None)
    return redis.Redis(port=node.port)


def test_a_queued_dream_is_on_the_replica_when_the_member_hears_of_it(ha):
    settings = load_settings(**ha.env)
    assert redisconn.replicas_to_wait(settings) == 1  # with sentinels, WAIT 1 unless told otherwise
    q = DreamQueue(redisconn.connect(settings), settings)
    job = _job()
    q.enqueue(job)
    # No sleep: the replica had it before enqueue returned.
    assert _replica(ha).hexists(keys.FQ_JOBS, job.job_id)


def test_no_replica_means_not_queued_and_the_quota_back(ha):
    from bot.backend import UNAVAILABLE, Backend

    settings = load_settings(**ha.env, redis_wait_ms=2000, limit_cooldown_s=0, limit_user_images_hour=2)
    conn = redisconn.connect(settings)
    backend = Backend(settings, conn)
    for node in ha.nodes:
        if node.port != ha.primary_port():
            node.kill()  # the replica's machine is gone; the primary still answers
    out = backend.submit(_job(user=7))
    assert not out.ok and out.kind == "unavailable" and out.message == UNAVAILABLE
    assert DreamQueue(conn, settings).waiting() == 0  # taken back out: nothing runs that nobody was told of
    # The refused dream did not count: both of this hour's two images are still there once a replica is.
    restarted = next(n for n in ha.nodes if n.port != ha.primary_port())
    restarted.start()
    _wait_replica_online(conn)
    assert backend.submit(_job(user=7)).ok and backend.submit(_job(user=7)).ok
    assert backend.submit(_job(user=7)).kind == "user_hour"


def test_clients_and_scripts_follow_a_failover_without_a_restart(ha):
    """The promoted replica never saw an EVALSHA's script load (Redis replicates a script's effects, not the
    script), so the first call there answers NOSCRIPT: redis-py's Script loads it and runs it again."""
    from dreamcore.limits.limiter import Limiter

    # The longest wait for the replica the settings allow: what is tested is that the scripts and clients
    # follow the failover; on a loaded 2-core CI machine a just-synced replica once took over 500 ms to ack.
    settings = load_settings(**ha.env, limit_cooldown_s=0, redis_wait_ms=2500)
    conn = redisconn.connect(settings, timeout_s=4.0, connect_timeout_s=1.0)
    q = DreamQueue(conn, settings)
    limiter = Limiter(conn)
    before = [_job(user=u) for u in (1, 2)]
    for j in before:
        assert limiter.acquire(10, j.origin.user_id, j.job_id, 1, 4).ok
        q.enqueue(j)
    assert q.position(before[1].job_id) == 1

    old = ha.primary_port()
    killed = ha.kill_primary()
    ha.wait_promoted(old)
    new = redis.Redis(port=ha.primary_port())
    position = hashlib.sha1(fair_order.POSITION.source.encode()).hexdigest()
    assert new.script_exists(position) == [False]

    # Same client objects, no restart: positions, a claim and a new acquire all run on the new primary.
    assert _patient(lambda: q.position(before[1].job_id)) == 1
    assert _patient(lambda: fair_order.claim_next(conn, queue_names()))[1] == before[0].job_id
    after = _job(user=3)
    assert _patient(lambda: limiter.acquire(10, 3, after.job_id, 1, 4)).ok
    # The only replica was promoted: until another one joins, nothing is "queued" that one loss could take.
    with pytest.raises(redisconn.NotReplicated):
        q.enqueue(after)
    assert q.position(after.job_id) is None
    killed.start()  # the old primary's machine comes back and the sentinels make it the new one's replica
    _wait_replica_online(new)
    assert q.enqueue(after).position == 1
    assert new.script_exists(position) == [True]


@pytest.mark.timeout(600)
def test_quick_failover_chaos_run_loses_nothing_and_posts_nothing_twice():
    # Two replicas: dreams are queued again as soon as one is promoted (the other follows the new primary
    # within the failover itself), so the run does not hang on how long the sentinels take to demote a
    # returning primary, which on a loaded CI machine was longer than the whole run (8 of 40 queued).
    # The one-replica refusal and its end when a replica is back are tested above, without timing.
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), "--failover", "--quick",
                           "--replicas", "2"],
                          capture_output=True, text=True, timeout=560, cwd=ROOT)
    print("\n" + proc.stdout[-1200:])
    line = next((x for x in proc.stdout.splitlines() if x.startswith("jobs ")), "")
    m = re.fullmatch(r"jobs (\d+), delivered (\d+), told-failed (\d+), lost (\d+), duplicated (\d+)", line)
    assert m, proc.stdout[-3000:] + proc.stderr[-3000:]
    n, d, f, lost, dup = map(int, m.groups())
    assert d + f == n and lost == 0 and dup == 0
    # Refused only while a promotion is under way: every dream sent in the clear of both outages was queued.
    clear = re.search(r"sent in the clear (\d+), queued of them (\d+)", proc.stdout)
    assert clear and clear.group(1) == clear.group(2) and int(clear.group(1)) >= 4, proc.stdout[-1500:]
    # And a run where most were refused would prove nothing about queued dreams surviving a failover.
    assert d >= n // 2
    assert "2 primary SIGKILLs" in proc.stdout
    assert proc.returncode == 0
