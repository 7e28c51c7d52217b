"""The fair queue on a real Redis against a plain Python reference of the same two-level rule, over random
sequences of enqueues (several servers, members, priority tiers), claims, batch claims and cancels; its
counters, positions and the reconcile that repairs them."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreamcore import cost, keys
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.queue import fair_order
from dreamcore.queue.rq_queues import DreamQueue, claim_companions, queue_names
from dreamcore.settings import load_settings

NAMES = queue_names()


@dataclass
class Ref:
    """The rule written the obvious way. Per queue: each server's slots (round, arrival) and its jobs sorted
    by (tier first, round, arrival); the queue runs its slots in (round, arrival) order, a server's k-th
    slot standing for its k-th job."""

    slots: dict[str, list[dict]] = field(default_factory=lambda: {n: [] for n in NAMES})
    jobs: dict[str, list[dict]] = field(default_factory=lambda: {n: [] for n in NAMES})
    seq: int = 0

    def server_jobs(self, name: str, guild: int) -> list[dict]:
        return sorted((j for j in self.jobs[name] if j["guild"] == guild),
                      key=lambda j: (-j["tier"], j["round"], j["seq"]))

    def server_slots(self, name: str, guild: int) -> list[dict]:
        return sorted((s for s in self.slots[name] if s["guild"] == guild), key=lambda s: (s["round"], s["seq"]))

    def order(self, name: str) -> list[dict]:
        seen: dict[int, int] = {}
        out = []
        for s in sorted(self.slots[name], key=lambda s: (s["round"], s["seq"])):
            k = seen.get(s["guild"], 0)
            seen[s["guild"]] = k + 1
            out.append(self.server_jobs(name, s["guild"])[k])
        return out

    def push(self, name: str, job_id: str, guild: int, owner: str, tier: int, images: int, units: float,
             batch: str) -> None:
        self.seq += 1
        same_tier = [j for j in self.jobs[name] if j["guild"] == guild and j["tier"] == tier]
        head = min((j["round"] for j in same_tier), default=0)
        mine = [j["round"] for j in same_tier if j["owner"] == owner]
        self.jobs[name].append({"id": job_id, "guild": guild, "owner": owner, "tier": tier, "images": images,
                                "units": units, "batch": batch, "seq": self.seq,
                                "round": max(head, max(mine) + 1) if mine else head})
        qhead = min((s["round"] for s in self.slots[name]), default=0)
        last = [s["round"] for s in self.slots[name] if s["guild"] == guild]
        self.slots[name].append({"guild": guild, "seq": self.seq,
                                 "round": max(qhead, max(last) + 1) if last else qhead})

    def take(self, job_id: str, served: bool = False) -> None:
        """A job leaves: served at its turn, its server gives up that slot (its first); cancelled or taken
        into a batch early, its server gives up its last, so its other dreams move up."""
        for name in NAMES:
            for j in self.jobs[name]:
                if j["id"] == job_id:
                    slots = self.server_slots(name, j["guild"])
                    self.slots[name].remove(slots[0] if served else slots[-1])
                    self.jobs[name].remove(j)
                    return

    def next(self) -> str | None:
        for name in NAMES:
            if self.jobs[name]:
                job = self.order(name)[0]
                self.take(job["id"], served=True)
                return job["id"]
        return None

    def batch(self, key: str, budget: int, window: int, relax: bool) -> list[str]:
        """Companions for a batch: a fast batch's from the fast queues only, a relax batch's from them all."""
        seen, out = 0, []
        for name in NAMES if relax else NAMES[:-1]:
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


PRIORITY = {"dream-high": "high", "dream-default": "default", "dream-low": "low", "dream-relax": "relax"}
ops = st.lists(st.one_of(
    st.tuples(st.just("enqueue"), st.integers(1, 6), st.sampled_from(NAMES), st.integers(1, 4),
              st.sampled_from([20, 30]), st.integers(0, 1)),
    st.tuples(st.just("claim")),
    st.tuples(st.just("batch"), st.sampled_from([20, 30]), st.integers(1, 8), st.integers(1, 6), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
), min_size=1, max_size=40)


def _job(user: int, priority: str, images: int, steps: int, guild: int | None = None):
    origin = make_origin(instance="bot1", guild_id=guild or 1 + user % 3, channel_id=10, user_id=user)
    return make_job(make_request(prompt=f"from {user}", seed=1, count=images, steps=steps), origin, priority=priority)


def _units(job) -> float:
    return cost.of_job(job, 1024, 128)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ops)
def test_order_counters_and_positions_match_the_reference(rconn, seq):
    rconn.flushdb()
    q, ref, keys_of = DreamQueue(rconn, load_settings()), Ref(), {}
    for op in seq:
        if op[0] == "enqueue":
            _, user, name, images, steps, tier = op
            job = _job(user, PRIORITY[name], images, steps)
            keys_of[steps] = job.batch_key
            fresh = not any(j["guild"] == job.origin.guild_id for j in ref.jobs[name])
            q.enqueue(job, _units(job), tier=tier)
            ref.push(name, job.job_id, job.origin.guild_id, f"{job.origin.guild_id}:{user}", tier, images,
                     _units(job), job.batch_key)
            if fresh:  # a server's first waiting dream: at most one dream of each other server ahead of it
                order = [j["guild"] for j in ref.order(name)]
                ahead = order[:[j["id"] for j in ref.order(name)].index(job.job_id)]
                assert all(ahead.count(g) <= 1 for g in set(ahead)), (op, ahead)
        elif op[0] == "claim":
            got = fair_order.claim_next(rconn, NAMES)
            assert (got[1] if got else None) == ref.next()
        elif op[0] == "batch":
            _, steps, budget, window, relax = op
            if steps in keys_of:
                got = [j for _, j in claim_companions(rconn, keys_of[steps], budget, window, relax=relax)]
                assert got == ref.batch(keys_of[steps], budget, window, relax)
        else:
            waiting = ref.all()
            if waiting:
                victim = waiting[op[1] % len(waiting)]["id"]
                assert q.remove(victim)
                ref.take(victim)
        for name in NAMES:
            assert fair_order.waiting_ids(rconn, name) == [j["id"] for j in ref.order(name)], op
            # Whatever was claimed, batched or cancelled: each server's slots stand in consecutive rounds,
            # one a round, so two servers with dreams waiting are served in turn.
            for guild in {j["guild"] for j in ref.jobs[name]}:
                rounds = [sl["round"] for sl in ref.server_slots(name, guild)]
                assert rounds == list(range(rounds[0], rounds[0] + len(rounds))), (op, guild, rounds)
    # Counters and positions, read in O(1) / O(log n), agree with the walk the reference makes.
    everything = ref.all()
    t = fair_order.totals(rconn, NAMES)
    assert t.jobs == len(everything) and round(t.units, 2) == round(sum(j["units"] for j in everything), 2)
    for guild in (1, 2, 3):
        mine = [j for j in everything if j["guild"] == guild]
        assert fair_order.guild_waiting(rconn, guild) == len(mine)
        assert round(fair_order.guild_units(rconn, guild), 2) == round(sum(j["units"] for j in mine), 2)
    places = q.places([j["id"] for j in everything])
    for k, j in enumerate(everything):
        assert places[j["id"]].ahead == k
        assert round(places[j["id"]].units_ahead, 2) == round(sum(x["units"] for x in everything[:k]), 2)
    for user in range(1, 7):
        owner = f"{1 + user % 3}:{user}"
        assert sorted(q.mine(owner)) == sorted(j["id"] for j in everything if j["owner"] == owner)
    # Where a server's next dream would stand: behind every slot up to the round after its last one.
    for guild in (1, 2, 3, 4):
        name = NAMES[1]
        ahead = sum(len(ref.jobs[n]) for n in NAMES[:1])
        slots = ref.slots[name]
        qhead = min((s["round"] for s in slots), default=0)
        last = [s["round"] for s in slots if s["guild"] == guild]
        r = max(qhead, max(last) + 1) if last else qhead
        assert q.would_wait(guild, 1, "default").ahead == ahead + sum(1 for s in slots if s["round"] <= r)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(piles=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 6)), min_size=2, max_size=8))
def test_a_new_dream_goes_ahead_of_every_later_round_of_servers_and_of_members(rconn, piles):
    """The guarantee, as servers and members see it: with nothing taken meanwhile, a server's k-th waiting
    dream is queued ahead of every other server's (k+1)-th and later ones (it waits behind at most one
    dream of each other server per dream of its own), and inside a server a member's k-th ahead of every
    other member's (k+1)-th."""
    rconn.flushdb()
    q = DreamQueue(rconn, load_settings())
    who: dict[str, tuple[int, int]] = {}
    for user, (guild, n) in enumerate(piles, start=1):
        for _ in range(n):
            job = _job(user, "default", 1, 20, guild=guild)
            q.enqueue(job, 1.0)
            who[job.job_id] = (guild, user)
            order = fair_order.waiting_ids(rconn, "dream-default")
            for level in (0, 1):
                index, counts = {}, {}
                for jid in order:
                    k = who[jid][level]
                    index[jid] = counts.get(k, 0)
                    counts[k] = index[jid] + 1
                me = order.index(job.job_id)
                mine = who[job.job_id][level]
                others = [jid for jid in order if who[jid][level] != mine and
                          (level == 0 or who[jid][0] == who[job.job_id][0])]
                assert all(index[jid] <= index[job.job_id] for jid in others if order.index(jid) < me)
                # ... and it jumped ahead of nobody with a smaller index (equal indices: by slot, then arrival).
                assert all(index[jid] >= index[job.job_id] for jid in others if order.index(jid) > me)


def test_reconcile_repairs_drifted_counters_and_keeps_counting_through_a_busy_queue(rconn, monkeypatch):
    q = DreamQueue(rconn, load_settings())
    jobs = [_job(u, "default", 1 + u % 4, 20) for u in range(1, 450)]
    for job in jobs:
        q.enqueue(job, _units(job))
    want = fair_order.totals(rconn, NAMES)
    # Drift, as a crash between two steps of an older release or a hand edit would leave it.
    rconn.hset(keys.FQ_COUNT, mapping={"units:dream-default": 5, "guild:1": 99999, "guild:77": 3,
                                       "gunits:2": 7})
    assert fair_order.totals(rconn, NAMES).units != want.units

    # A worker and a cancel keep working while the reconcile walks the queue, in every phase of the walk.
    real = fair_order.RECOUNT_STEP
    taken = []

    def busy_step(conn, **call):
        out = real(conn, **call)
        taken.append(fair_order.claim_next(rconn, NAMES)[1])
        late = _job(1000 + len(taken), "default", 2, 20)
        q.enqueue(late, _units(late))
        jobs.append(late)
        victim = next(j for j in jobs[len(jobs) // 2:] if j.job_id not in taken)
        assert q.remove(victim.job_id)
        taken.append(victim.job_id)
        return out

    monkeypatch.setattr(fair_order, "RECOUNT_STEP", busy_step)
    changed = fair_order.reconcile(rconn, NAMES, chunk=50)
    monkeypatch.undo()
    assert changed["guild:77"] == (3, 0) and changed["guild:1"][0] > 99_000 and "gunits:2" in changed
    left = [j for j in jobs if j.job_id not in set(taken)]
    t = fair_order.totals(rconn, NAMES)
    assert t.jobs == len(left) and round(t.units, 2) == round(sum(_units(j) for j in left), 2)
    for guild in (1, 2, 3):
        mine = [j for j in left if j.origin.guild_id == guild]
        assert fair_order.guild_waiting(rconn, guild) == len(mine)
        assert round(fair_order.guild_units(rconn, guild), 2) == round(sum(_units(j) for j in mine), 2)
    assert not rconn.exists(keys.FQ_RECOUNT) and not rconn.exists(keys.FQ_RECOUNT_LOCK)
    assert fair_order.reconcile(rconn, NAMES) == {}  # nothing left to repair
