"""Batch claims on a real Redis: which waiting dreams a worker may take into its batch, and that a claim
never loses or doubles a job (atomic against other workers, recoverable if the claimer dies)."""

from __future__ import annotations

import threading

from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from dreamcore.job import make_job, make_origin, make_request
from dreamcore.queue import fair_order
from dreamcore.queue.rq_queues import DreamQueue, FairQueue, claim_companions, queue_name
from dreamcore.settings import load_settings


def _job(user: int, priority: str = "default", **kw):
    kw.setdefault("steps", 30)
    kw.setdefault("seed", user)
    origin = make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=user)
    return make_job(make_request(prompt=f"picture {user}", **kw), origin, priority=priority)


def _enqueue(conn, *jobs):
    q = DreamQueue(conn, load_settings())
    for j in jobs:
        q.enqueue(j)
    return jobs


def test_batch_key_is_in_the_queued_meta_for_dreams_only(rconn):
    (job,) = _enqueue(rconn, _job(1, count=3))
    meta = Job.fetch(job.job_id, connection=rconn, serializer=JSONSerializer).meta
    assert meta["batch"] == job.batch_key == "1024x1024/30/24/7"
    assert meta["images"] == 3
    assert _job(2, aspect="12:5", guidance=5.5).batch_key == "1536x640/30/24/5.5"
    # Same geometry, different prompt/style/seed/count: same key. Any of size/steps/split/guidance: not.
    assert _job(3, count=4, style="none", seed=9).batch_key == _job(4).batch_key
    for kw in ({"steps": 31}, {"aspect": "9:7"}, {"guidance": 7.5}, {"split": 0.6}):
        assert _job(5, **kw).batch_key != _job(4).batch_key, kw


def test_claim_takes_matching_jobs_within_budget_and_window(rconn):
    a, b, c, d, e = _enqueue(rconn, _job(1), _job(2, steps=20), _job(3, count=4), _job(4, count=2), _job(5))
    key = a.batch_key
    # Budget 3 images: a (1) fits, b has another key, c (4) does not fit, d (2) fits -> budget 0, stop.
    got = claim_companions(rconn, key, budget=3, window=32)
    assert got == [(queue_name("default"), a.job_id), (queue_name("default"), d.job_id)]
    waiting = fair_order.waiting_ids(rconn, queue_name("default"))
    assert waiting == [b.job_id, c.job_id, e.job_id]  # the others keep their order
    inter = rconn.lrange(FairQueue(queue_name("default"), connection=rconn).intermediate_queue_key, 0, -1)
    assert [x.decode() for x in inter] == [a.job_id, d.job_id]
    # A window of 2 looks at b and c only: nothing within it fits 3 images.
    assert claim_companions(rconn, key, budget=3, window=2) == []
    assert claim_companions(rconn, key, budget=8, window=3) == [(queue_name("default"), c.job_id),
                                                                (queue_name("default"), e.job_id)]
    assert claim_companions(rconn, key, budget=0, window=10) == []


def test_claim_looks_at_high_priority_first(rconn):
    low, high, default = _enqueue(rconn, _job(1, "low"), _job(2, "high"), _job(3, "default"))
    got = claim_companions(rconn, low.batch_key, budget=2, window=32)
    assert [j for _, j in got] == [high.job_id, default.job_id]


def test_jobs_enqueued_without_a_batch_key_are_never_claimed(rconn):
    (a,) = _enqueue(rconn, _job(1))
    FairQueue(queue_name("default"), connection=rconn, serializer=JSONSerializer).enqueue(
        "worker.tasks.run_dream", {"garbage": True}, job_id="eeeeeeeeeeeeeeee")
    assert [j for _, j in claim_companions(rconn, a.batch_key, 8, 32)] == [a.job_id]


def test_concurrent_claims_never_take_a_job_twice(rconn):
    jobs = _enqueue(rconn, *[_job(u) for u in range(1, 61)])
    key = jobs[0].batch_key
    taken: list[list[str]] = []
    barrier = threading.Barrier(6)

    def claimer():
        barrier.wait()
        mine = []
        while True:
            got = claim_companions(rconn, key, budget=4, window=100)
            if not got:
                break
            mine += [j for _, j in got]
        taken.append(mine)

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [j for mine in taken for j in mine]
    assert sorted(flat) == sorted(j.job_id for j in jobs), "every job taken exactly once"
    assert len(set(flat)) == len(flat)


def test_a_claim_whose_worker_died_is_requeued_by_rq_maintenance(rconn):
    """The gap between the claim and RQ's started registry: the worker dies there. RQ's intermediate-queue
    cleanup (which every worker runs during maintenance) puts the job back, retries permitting."""
    (a,) = _enqueue(rconn, _job(1))
    assert claim_companions(rconn, a.batch_key, 4, 32)  # ... and the claimer dies here
    q = FairQueue(queue_name("default"), connection=rconn, serializer=JSONSerializer)
    assert rconn.llen(q.key) == 0
    worker = SimpleWorker([q], connection=rconn, serializer=JSONSerializer)
    q.intermediate_queue.cleanup(worker, q)  # first sighting: remembered
    first_seen = q.intermediate_queue.get_first_seen_key(a.job_id)
    rconn.set(first_seen, float(rconn.get(first_seen)) - 120)  # two minutes later
    q.intermediate_queue.cleanup(worker, q)
    assert fair_order.waiting_ids(rconn, queue_name("default")) == [a.job_id], "job back in its queue"
    assert rconn.llen(q.intermediate_queue_key) == 0
    assert Job.fetch(a.job_id, connection=rconn, serializer=JSONSerializer).get_status() == "queued"


def test_a_retried_job_is_never_claimed_into_a_batch(rconn):
    """A job whose worker died while running it may be what kills workers: it runs alone from then on."""
    from worker.runner import _is_retry

    a, b = _enqueue(rconn, _job(1), _job(2))
    rq_b = Job.fetch(b.job_id, connection=rconn, serializer=JSONSerializer)
    assert not _is_retry(rq_b)
    rconn.hset(rq_b.key, "retries_left", rq_b.meta["tries"] - 2)  # what RQ writes when it retries the job
    assert _is_retry(Job.fetch(b.job_id, connection=rconn, serializer=JSONSerializer))
    assert [j for _, j in claim_companions(rconn, a.batch_key, 8, 32)] == [a.job_id]
