"""The fair queue on a real Redis against a plain Python reference of the same rule, over random sequences
of enqueues, claims, batch claims and cancels; its counters, positions and the reconcile that repairs them."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreamcore import fairq, keys
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.queue import DreamQueue, claim_companions, queue_names
from dreamcore.settings import load_settings

NAMES = queue_names()


@dataclass
class Ref:
    """The rule written the obvious way: per queue, a list of waiting jobs sorted by (round, arrival)."""

    waiting: dict[str, list[dict]] = field(default_factory=lambda: {n: [] for n in NAMES})
    seq: int = 0

    def order(self, name: str) -> list[dict]:
        return sorted(self.waiting[name], key=lambda j: (j["round"], j["seq"]))

    def push(self, name: str, job_id: str, owner: str, images: int, batch: str) -> None:
        jobs = self.waiting[name]
        head = min((j["round"] for j in jobs), default=0)
        mine = [j["round"] for j in jobs if j["owner"] == owner]
        self.seq += 1
        jobs.append({"id": job_id, "owner": owner, "images": images, "batch": batch, "seq": self.seq,
                     "round": max(head, max(mine) + 1) if mine else head})

    def take(self, job_id: str) -> None:
        for jobs in self.waiting.values():
            jobs[:] = [j for j in jobs if j["id"] != job_id]

    def next(self) -> str | None:
        for name in NAMES:
            if self.waiting[name]:
                job = self.order(name)[0]
                self.take(job["id"])
                return job["id"]
        return None

    def batch(self, key: str, budget: int, window: int) -> list[str]:
        seen, out = 0, []
        for name in NAMES:
            if budget <= 0 or seen >= window:
                break
            for j in self.order(name)[: window - seen]:
                seen += 1
                if j["batch"] == key and j["images"] <= budget:
                    out.append(j["id"])
                    budget -= j["images"]
                    if budget <= 0:
                        break
        for jid in out:
            self.take(jid)
        return out

    def all(self) -> list[dict]:
        return [j for n in NAMES for j in self.order(n)]


PRIORITY = {"dream-high": "high", "dream-default": "default", "dream-low": "low"}
ops = st.lists(st.one_of(
    st.tuples(st.just("enqueue"), st.integers(1, 5), st.sampled_from(NAMES), st.integers(1, 4),
              st.sampled_from([20, 30])),
    st.tuples(st.just("claim")),
    st.tuples(st.just("batch"), st.sampled_from([20, 30]), st.integers(1, 8), st.integers(1, 6)),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
), min_size=1, max_size=40)


def _job(user: int, priority: str, images: int, steps: int):
    origin = make_origin(instance="bot1", guild_id=1 + user % 2, channel_id=10, user_id=user)
    return make_job(make_request(prompt=f"from {user}", seed=1, count=images, steps=steps), origin, priority=priority)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ops)
def test_order_counters_and_positions_match_the_reference(rconn, seq):
    rconn.flushdb()
    q, ref, keys_of = DreamQueue(rconn, load_settings()), Ref(), {}
    for op in seq:
        if op[0] == "enqueue":
            _, user, name, images, steps = op
            job = _job(user, PRIORITY[name], images, steps)
            keys_of[steps] = job.batch_key
            q.enqueue(job)
            ref.push(name, job.job_id, f"{job.origin.guild_id}:{user}", images, job.batch_key)
        elif op[0] == "claim":
            got = fairq.claim_next(rconn, NAMES)
            assert (got[1] if got else None) == ref.next()
        elif op[0] == "batch":
            _, steps, budget, window = op
            if steps in keys_of:
                got = [j for _, j in claim_companions(rconn, keys_of[steps], budget, window)]
                assert got == ref.batch(keys_of[steps], budget, window)
        else:
            waiting = ref.all()
            if waiting:
                victim = waiting[op[1] % len(waiting)]["id"]
                assert q.remove(victim)
                ref.take(victim)
        for name in NAMES:
            assert fairq.waiting_ids(rconn, name) == [j["id"] for j in ref.order(name)], op
    # Counters and positions, read in O(1) / O(log n), agree with the walk the reference makes.
    everything = ref.all()
    t = fairq.totals(rconn, NAMES)
    assert t.jobs == len(everything) and t.images == sum(j["images"] for j in everything)
    for guild in (1, 2):
        assert fairq.guild_waiting(rconn, guild) == sum(1 for j in everything if j["owner"].startswith(f"{guild}:"))
    places = q.places([j["id"] for j in everything])
    for k, j in enumerate(everything):
        assert places[j["id"]].ahead == k
        assert places[j["id"]].images_ahead == sum(x["images"] for x in everything[:k])  # exact near the head
    for user in range(1, 6):
        owner = f"{1 + user % 2}:{user}"
        assert sorted(q.mine(owner)) == sorted(j["id"] for j in everything if j["owner"] == owner)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(piles=st.lists(st.integers(1, 6), min_size=2, max_size=6))
def test_a_new_dream_goes_ahead_of_every_later_round(rconn, piles):
    """The guarantee, as members see it: with nothing taken meanwhile, a member's k-th waiting dream is
    queued ahead of every other member's (k+1)-th and later ones."""
    rconn.flushdb()
    q = DreamQueue(rconn, load_settings())
    owner_of: dict[str, int] = {}
    for user, n in enumerate(piles, start=1):
        for _ in range(n):
            job = _job(user, "default", 1, 20)
            q.enqueue(job)
            owner_of[job.job_id] = user
            order = fairq.waiting_ids(rconn, "dream-default")
            index, counts = {}, {}
            for jid in order:
                u = owner_of[jid]
                index[jid] = counts.get(u, 0)
                counts[u] = index[jid] + 1
            me = order.index(job.job_id)
            assert all(index[jid] <= index[job.job_id] for jid in order[:me] if owner_of[jid] != user)
            assert all(index[jid] > index[job.job_id] for jid in order[me + 1:] if owner_of[jid] != user)


def test_reconcile_repairs_drifted_counters_and_keeps_counting_through_a_busy_queue(rconn):
    q = DreamQueue(rconn, load_settings())
    jobs = [_job(u, "default", 1 + u % 4, 20) for u in range(1, 450)]
    for job in jobs:
        q.enqueue(job)
    want = fairq.totals(rconn, NAMES)
    # Drift, as a crash between two steps of an older release or a hand edit would leave it.
    rconn.hset(keys.FQ_COUNT, mapping={"images:dream-default": 5, "guild:1": 99999, "guild:77": 3})
    assert fairq.totals(rconn, NAMES).images != want.images

    # A worker and a cancel keep working while the reconcile walks the queue, in every phase of the walk.
    real = fairq._scripts(rconn)["RECOUNT_STEP"]
    taken = []

    def busy_step(args):
        out = real(args=args)
        taken.append(fairq.claim_next(rconn, NAMES)[1])
        late = _job(1000 + len(taken), "default", 2, 20)
        q.enqueue(late)
        jobs.append(late)
        return out

    fairq._scripts(rconn)["RECOUNT_STEP"] = busy_step
    try:
        changed = fairq.reconcile(rconn, NAMES, chunk=50)
    finally:
        fairq._scripts(rconn)["RECOUNT_STEP"] = real
    assert changed["guild:77"] == (3, 0) and changed["guild:1"][0] == 99999
    left = [j for j in jobs if j.job_id not in set(taken)]
    t = fairq.totals(rconn, NAMES)
    assert t.jobs == len(left) and t.images == sum(j.request.count for j in left)
    for guild in (1, 2):
        assert fairq.guild_waiting(rconn, guild) == sum(1 for j in left if j.origin.guild_id == guild)
    assert not rconn.exists(keys.FQ_RECOUNT) and not rconn.exists(keys.FQ_RECOUNT_LOCK)
    assert fairq.reconcile(rconn, NAMES) == {}  # nothing left to repair
