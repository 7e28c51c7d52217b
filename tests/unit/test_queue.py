"""The queue on a real Redis: JSON payloads, priorities, positions, fair order across members."""

from __future__ import annotations

import json
import zlib

from rq.serializers import JSONSerializer

from dreamcore.job import make_job, make_origin, make_request
from dreamcore.queue import fair_order
from dreamcore.queue.rq_queues import DreamQueue
from dreamcore.settings import load_settings


def _job(user: int, priority: str = "default", guild: int = 1):
    origin = make_origin(instance="bot1", guild_id=guild, channel_id=10, user_id=user)
    return make_job(make_request(prompt=f"from {user}", seed=1), origin, priority=priority)


def test_payload_is_json_not_pickle(rconn):
    q = DreamQueue(rconn, load_settings())
    job = _job(7)
    q.enqueue(job)
    data = rconn.hget(f"rq:job:{job.job_id}", "data")
    decoded = JSONSerializer.loads(zlib.decompress(data))  # RQ compresses job data
    assert decoded[0] == "worker.tasks.run_dream"
    assert decoded[2][0]["request"]["prompt"] == "from 7"
    assert json.loads(rconn.hget(f"rq:job:{job.job_id}", "meta"))["owner"] == "1:7"
    assert int(rconn.hget(f"rq:job:{job.job_id}", "timeout")) == load_settings().job_timeout_s


def test_positions_span_priorities(rconn):
    q = DreamQueue(rconn, load_settings())
    low = q.enqueue(_job(1, "low"))
    d1 = q.enqueue(_job(2))
    d2 = q.enqueue(_job(3))
    high = q.enqueue(_job(4, "high"))
    assert high.position == 0
    assert q.position(d1.job_id) == 1
    assert q.position(d2.job_id) == 2
    assert q.position(low.job_id) == 3
    assert q.position("0000000000000000") is None


def test_fair_order_interleaves_members(rconn):
    q = DreamQueue(rconn, load_settings())
    a_jobs = [q.enqueue(_job(100)).job_id for _ in range(20)]
    b = q.enqueue(_job(200)).job_id
    c = q.enqueue(_job(300)).job_id
    order = fair_order.waiting_ids(rconn, "dream-default")
    # B's first job waits behind A's first job only; C's lands right behind it.
    assert order.index(b) == 1
    assert order.index(c) == 2
    # A's own jobs keep their order.
    assert [j for j in order if j in a_jobs] == a_jobs
    b2 = q.enqueue(_job(200)).job_id
    order = fair_order.waiting_ids(rconn, "dream-default")
    # B's second job is in round 1: behind A's second job, ahead of A's third.
    assert order.index(b2) == order.index(a_jobs[1]) + 1 < order.index(a_jobs[2])


def test_a_waiting_dream_never_expires_unrun(rconn, monkeypatch):
    """However long the queue, a waiting job's hash stays until a worker takes it: with a queued-time TTL
    (it used to be the result TTL) a dream that waited past it vanished and its member never heard."""
    monkeypatch.setenv("DREAMBOT_RESULT_TTL", "60")
    q = DreamQueue(rconn, load_settings())
    job = _job(8)
    q.enqueue(job)
    assert rconn.ttl(f"rq:job:{job.job_id}") == -1
    assert q.position(job.job_id) == 0


def test_python_reads_what_the_scripts_write_in_the_formats_it_declares(rconn):
    """A member (owner_of), the server a dream counts in (server_of) and a job's entry (entry_job) are declared
    once in Python and handed to the scripts: what the scripts wrote, Python finds by its own formats."""
    q = DreamQueue(rconn, load_settings())
    direct = make_job(make_request(prompt="in a direct message", seed=1),
                      make_origin(instance="bot1", guild_id=None, channel_id=10, user_id=42))
    in_guild = _job(42, guild=9)
    q.enqueue(direct)
    q.enqueue(in_guild)
    assert q.mine(fair_order.owner_of(None, 42)) == [direct.job_id]
    assert q.mine(fair_order.owner_of(9, 42)) == [in_guild.job_id]
    assert fair_order.guild_waiting(rconn, fair_order.server_of(None, 42)) == 1
    assert fair_order.guild_waiting(rconn, fair_order.server_of(9, 42)) == 1
    assert fair_order.parse_owner(fair_order.owner_of(None, 42)) == (fair_order.DM_GUILD, "42")
