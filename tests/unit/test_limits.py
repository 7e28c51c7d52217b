"""Guild limits on a real Redis: atomic under threads and processes, exact quotas, messages, admin input."""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dreamcore.i18n import duration
from dreamcore.keys import LimitKeys, operator_key
from dreamcore.limits import stored
from dreamcore.limits.buckets import DAY_BUCKET_S, HOUR_BUCKET_S
from dreamcore.limits.limiter import Limiter
from dreamcore.limits.model import DAY, HOUR, KNOWN_KEYS, GuildLimits, LimitError, default_limits, limit_range
from dreamcore.limits.stored import LimitStore
from dreamcore.limits.words import find_blocked_word
from dreamcore.settings import Settings, SettingsError, load_settings

T0 = 1_700_000_000.0
ADMIN = 99
# Every counting limit as loose as it goes, so a test can tighten exactly one.
LOOSE = {
    "cooldown_s": 0, "user_max_active": 50, "user_images_hour": 1000, "user_images_day": 5000,
    "guild_images_hour": 5000, "guild_images_day": 20000, "guild_max_queued": 1000,
}
_guilds = itertools.count(1000)


def new_guild() -> int:
    return next(_guilds)


def configure(store: LimitStore, guild: int, **values) -> GuildLimits:
    out = store.get(guild)
    for key, value in values.items():
        if isinstance(value, bool):
            raw = "on" if value else "off"
        elif isinstance(value, list):
            raw = ",".join(str(v) for v in value) or "clear"
        else:
            raw = str(value)
        out = store.set(guild, key, raw, ADMIN)
    return out


@pytest.fixture
def store(rconn):
    return LimitStore(rconn, load_settings())


@pytest.fixture
def limiter(rconn, store):
    return Limiter(rconn, store)


def ask(limiter, guild, user, job, images=1, steps=20, now=T0, **kw):
    return limiter.acquire(guild, user, job, images, steps, now=now, **kw)


# --- Concurrency: exactly N get through -----------------------------------------------------------------

# kind -> (the one tight limit, same member for every request?, images per request, how many must pass)
SCENARIOS = {
    "cooldown": ({"cooldown_s": 60}, True, 1, 1),
    "user_active": ({"user_max_active": 3}, True, 1, 3),
    "user_hour": ({"user_images_hour": 7}, True, 1, 7),
    "user_day": ({"user_images_day": 9}, True, 1, 9),
    "guild_hour": ({"guild_images_hour": 11}, False, 1, 11),
    "guild_day": ({"guild_images_day": 13}, False, 1, 13),
    "guild_queued": ({"guild_max_queued": 5}, False, 1, 5),
    # images, not requests: 10 images allow three 3-image dreams
    "user_hour_3_images": ({"user_images_hour": 10}, True, 3, 3),
    "guild_day_4_images": ({"guild_images_day": 17}, False, 4, 4),
}


def _expected_kind(name: str) -> str:
    return name.split("_3_")[0].split("_4_")[0]


def _user(same: bool, worker: int, i: int) -> int:
    return 42 if same else 10_000 + worker * 1000 + i


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_threads_get_exactly_the_limit(rconn, store, limiter, name):
    tight, same, images, n = SCENARIOS[name]
    guild = new_guild()
    configure(store, guild, **{**LOOSE, **tight})
    threads, per_thread = 16, 4
    barrier = threading.Barrier(threads)

    def fire(t):
        barrier.wait()
        return [ask(limiter, guild, _user(same, t, i), f"t{t}-{i}", images) for i in range(per_thread)]

    with ThreadPoolExecutor(threads) as pool:
        decisions = [d for batch in pool.map(fire, range(threads)) for d in batch]
    accepted = sum(d.ok for d in decisions)
    print(f"\n[threads] {name}: {threads} threads x {per_thread} requests -> {accepted} accepted (limit allows {n})")
    assert accepted == n
    assert {d.kind for d in decisions if not d.ok} == {_expected_kind(name)}
    u = store.usage(guild, 42, now=T0)
    assert u["guild_images_day"] == n * images
    assert u["guild_active"] == n


def _bot_process(url, guild, same, images, per_proc, worker, barrier, out):
    """One 'bot instance': its own connection, store and limiter, firing as soon as all are ready."""
    client = redis.Redis.from_url(url)
    limiter = Limiter(client, LimitStore(client, load_settings()))
    barrier.wait()
    res = []
    for i in range(per_proc):
        d = limiter.acquire(guild, _user(same, worker, i), f"p{worker}-{i}", images, 20, now=T0)
        res.append((d.ok, d.kind))
    out.put(res)
    client.close()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_processes_get_exactly_the_limit(redis_url, store, name):
    tight, same, images, n = SCENARIOS[name]
    guild = new_guild()
    configure(store, guild, **{**LOOSE, **tight})
    ctx = multiprocessing.get_context("fork")
    procs_n, per_proc = 10, 6
    barrier, out = ctx.Barrier(procs_n), ctx.Queue()
    procs = [ctx.Process(target=_bot_process, args=(redis_url, guild, same, images, per_proc, w, barrier, out))
             for w in range(procs_n)]
    for p in procs:
        p.start()
    results = [r for _ in procs for r in out.get(timeout=30)]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    accepted = sum(ok for ok, _ in results)
    print(f"\n[processes] {name}: {procs_n} processes x {per_proc} requests -> {accepted} accepted (limit allows {n})")
    assert len(results) == procs_n * per_proc
    assert accepted == n
    assert {kind for ok, kind in results if not ok} == {_expected_kind(name)}


def test_concurrent_release_refunds_once(rconn, store, limiter):
    guild = new_guild()
    configure(store, guild, **{**LOOSE, "user_images_hour": 4})
    assert ask(limiter, guild, 5, "only", images=4).ok
    assert not ask(limiter, guild, 5, "next", images=1).ok
    barrier = threading.Barrier(16)

    def rel(_):
        barrier.wait()
        return limiter.release(guild, 5, "only", refund=True)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(rel, range(16)))
    assert results.count(True) == 1
    u = store.usage(guild, 5, now=T0)
    assert (u["user_images_hour"], u["user_active"], u["guild_images_hour"], u["guild_active"]) == (0, 0, 0, 0)


# --- Hypothesis: images never exceed a quota, and nothing that fitted was refused -----------------------

QUOTA_KINDS = ("user_hour", "user_day", "guild_hour", "guild_day")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    quotas=st.tuples(st.integers(1, 12), st.integers(1, 20), st.integers(1, 25), st.integers(1, 30)),
    reqs=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 4)), min_size=1, max_size=24),
)
def test_quotas_hold_under_concurrency(rconn, quotas, reqs):
    store = LimitStore(rconn, load_settings())
    limiter = Limiter(rconn, store)
    guild = new_guild()
    quota = dict(zip(QUOTA_KINDS, quotas, strict=True))
    configure(store, guild, **{**LOOSE, "user_images_hour": quota["user_hour"], "user_images_day": quota["user_day"],
                               "guild_images_hour": quota["guild_hour"], "guild_images_day": quota["guild_day"]})

    def one(i):
        user, images = reqs[i]
        return ask(limiter, guild, 100 + user, f"h{i}", images=images)

    with ThreadPoolExecutor(8) as pool:
        decisions = list(pool.map(one, range(len(reqs))))
    per_user = {u: sum(im for (uu, im), d in zip(reqs, decisions, strict=True) if d.ok and uu == u) for u in range(3)}
    total = sum(per_user.values())
    assert total <= min(quota["guild_hour"], quota["guild_day"])
    for u, used in per_user.items():
        assert used <= min(quota["user_hour"], quota["user_day"])
        assert store.usage(guild, 100 + u, now=T0)["user_images_day"] == used
    # Maximal: every refusal names a quota this request really did not fit into (usage only grew since).
    for (user, images), d in zip(reqs, decisions, strict=True):
        event(f"concurrent: {'accepted' if d.ok else d.kind}")
        if d.ok:
            continue
        assert d.kind in QUOTA_KINDS
        used = per_user[user] if d.kind.startswith("user") else total
        assert used + images > quota[d.kind], (d, per_user, total)
    # With one member and single images, exactly the tightest quota passes.
    if len({u for u, _ in reqs}) == 1 and all(im == 1 for _, im in reqs):
        assert total == min(len(reqs), *quota.values())


def counts_until(t: float, span: int) -> float:
    """An image accepted at t counts in a span-long window until the end of its bucket plus the span."""
    width = HOUR_BUCKET_S if span == HOUR else DAY_BUCKET_S
    return (math.floor(t / width) + 1) * width + span


class Model:
    """The limits in plain Python, one request at a time, to hold the Lua script to."""

    def __init__(self, lim: GuildLimits, active_ttl: float):
        self.lim, self.ttl = lim, active_ttl
        self.usage: dict[int, list[tuple[float, int, str]]] = {}
        self.gusage: list[tuple[float, int, str]] = []
        self.active: dict[int, dict[str, float]] = {}
        self.gactive: dict[str, float] = {}
        self.cooldown: dict[int, float] = {}
        self.jobs: dict[str, tuple[int, int]] = {}

    def acquire(self, user, job, images, exempt, now):
        lim = self.lim
        for entries in [*self.usage.values(), self.gusage]:
            entries[:] = [e for e in entries if counts_until(e[0], DAY) > now]
        for act in [*self.active.values(), self.gactive]:
            for j in [j for j, t in act.items() if t <= now - self.ttl]:
                del act[j]
        uu = self.usage.setdefault(user, [])
        ua = self.active.setdefault(user, {})
        # Exempt skips the member's own limits; the server's hold for everyone.
        fails = []
        at = self.cooldown.get(user)
        if not exempt and lim.cooldown_s > 0 and at is not None and now < at + lim.cooldown_s:
            fails.append(("cooldown", at + lim.cooldown_s - now))
        if not exempt and len(ua) >= lim.user_max_active:
            fails.append(("user_active", None))
        for kind, entries, span, q in (
            ("user_hour", uu, HOUR, lim.user_images_hour), ("user_day", uu, DAY, lim.user_images_day),
            ("guild_hour", self.gusage, HOUR, lim.guild_images_hour),
            ("guild_day", self.gusage, DAY, lim.guild_images_day),
        ):
            if exempt and kind.startswith("user"):
                continue
            inside = sorted((counts_until(e[0], span), e[1]) for e in entries if counts_until(e[0], span) > now)
            used = sum(e[1] for e in inside)
            if used + images <= q:
                continue
            if images > q:
                fails.append((kind, math.inf))
                continue
            need, freed = used + images - q, 0
            for until, im in inside:
                freed += im
                if freed >= need:
                    fails.append((kind, until - now))
                    break
        if len(self.gactive) >= lim.guild_max_queued:
            fails.append(("guild_queued", None))
        best, rank = None, -2.0
        for kind, retry in fails:
            r = -1.0 if retry is None else retry
            if r > rank:
                best, rank = (kind, None if retry is None or math.isinf(retry) else retry), r
        if best:
            return best
        uu.append((now, images, job))
        self.gusage.append((now, images, job))
        ua[job] = now
        self.gactive[job] = now
        self.jobs[job] = (user, images)
        if not exempt and lim.cooldown_s > 0:
            self.cooldown[user] = now
        return None

    def release(self, job, refund):
        if job not in self.jobs:
            return False
        user, _ = self.jobs.pop(job)
        self.active.get(user, {}).pop(job, None)
        self.gactive.pop(job, None)
        if refund:
            self.usage[user] = [e for e in self.usage.get(user, []) if e[2] != job]
            self.gusage[:] = [e for e in self.gusage if e[2] != job]
        return True


STEPS = [0.0, 0.5, 3.0, 20.0, 61.0, 1800.0, 3599.0, 3600.0, 7200.0, 40000.0, DAY]
EXEMPT_ROLE = 777


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lim=st.fixed_dictionaries({
        "cooldown_s": st.sampled_from([0, 5, 60]), "user_max_active": st.integers(1, 3),
        "user_images_hour": st.integers(1, 10), "user_images_day": st.integers(1, 15),
        "guild_images_hour": st.integers(1, 20), "guild_images_day": st.integers(1, 25),
        "guild_max_queued": st.integers(1, 6),
    }),
    ops=st.lists(st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 2), st.integers(1, 4), st.sampled_from(STEPS)),
        st.tuples(st.just("release"), st.integers(0, 40), st.booleans(), st.sampled_from(STEPS)),
    ), min_size=1, max_size=30),
)
def test_script_matches_model(rconn, lim, ops):
    """Step by step, with the clock moving: every decision (and its wait) is what the model says."""
    store = LimitStore(rconn, load_settings(), active_ttl_s=5000)
    limiter = Limiter(rconn, store)
    guild = new_guild()
    limits = configure(store, guild, **lim, exempt_roles=[EXEMPT_ROLE])
    model = Model(limits, 5000)
    now, jobs = T0, []
    for n, (op, a, b, dt) in enumerate(ops):
        now += dt
        if op == "acquire":
            user, images, job = a, b, f"m{n}"
            exempt = user == 2  # member 2 holds the exempt role
            d = limiter.acquire(guild, 500 + user, job, images, 20, role_ids=[EXEMPT_ROLE] if exempt else [],
                                now=now)
            want = model.acquire(500 + user, job, images, exempt, now)
            got = None if d.ok else (d.kind, d.retry_after_s)
            event(f"model: {'accepted' if d.ok else d.kind}")
            assert (got is None) == (want is None), (n, got, want)
            if want is not None:
                assert got[0] == want[0], (n, got, want)
                assert (got[1] is None) == (want[1] is None) and (got[1] is None or abs(got[1] - want[1]) < 1e-6)
            else:
                jobs.append((500 + user, job))
        elif jobs:
            user, job = jobs[a % len(jobs)]
            assert limiter.release(guild, user, job, refund=b) == model.release(job, b)


# --- Messages -------------------------------------------------------------------------------------------


def test_cooldown_message_and_time(store, limiter):
    guild = new_guild()
    configure(store, guild, cooldown_s=30)
    assert ask(limiter, guild, 1, "a", now=T0).ok
    d = ask(limiter, guild, 1, "b", now=T0 + 7)
    assert (d.ok, d.kind, d.retry_after_s) == (False, "cooldown", 23.0)
    assert d.message == "cooldown: try again in 23 s"
    assert ask(limiter, guild, 2, "c", now=T0 + 7).ok  # another member has their own cooldown
    assert ask(limiter, guild, 1, "d", now=T0 + 30).ok


def test_daily_quota_message(store, limiter):
    guild = new_guild()
    configure(store, guild, **{**LOOSE, "user_images_day": 40})
    for i in range(10):
        assert ask(limiter, guild, 1, f"j{i}", images=4, now=T0 + i).ok
    # All ten fell in one 10-minute bucket, which counts until its end (T0 + 400 s) plus a day.
    resets = counts_until(T0, DAY)
    assert resets == T0 + 400 + DAY
    d = ask(limiter, guild, 1, "x", images=1, now=resets - (5 * HOUR + 12 * 60))
    assert d.kind == "user_day"
    assert d.retry_after_s == pytest.approx(5 * HOUR + 12 * 60)
    assert d.message == "daily quota 40/40 standard images used, resets in 5 h 12 min"
    assert not ask(limiter, guild, 1, "y", images=1, now=resets - 0.001).ok
    assert store.usage(guild, 1, now=resets)["user_images_day"] == 0  # the whole bucket expired at once
    assert ask(limiter, guild, 1, "y", images=4, now=resets).ok


def test_hourly_partial_and_never_fitting_messages(store, limiter):
    guild = new_guild()
    configure(store, guild, **{**LOOSE, "user_images_hour": 6})
    assert ask(limiter, guild, 1, "a", images=3, now=T0).ok
    assert ask(limiter, guild, 1, "b", images=2, now=T0 + 600).ok
    d = ask(limiter, guild, 1, "c", images=3, now=T0 + 900)
    # 5/6 used, needs 3: the first dream (3 images) must expire, at the end of its minute (T0 + 40 s) + 1 h.
    assert (d.kind, d.retry_after_s) == ("user_hour", 2740.0)
    assert d.message == ("hourly quota 5/6 standard images used and this dream counts as 3 standard images; "
                         "enough frees up in 45 min 40 s")
    configure(store, guild, user_images_hour=2)
    d = ask(limiter, guild, 2, "big", images=4, now=T0)
    assert (d.kind, d.retry_after_s) == ("user_hour", None)
    assert "counts as 4 standard images" in d.message and "hourly quota is 2" in d.message


def test_active_and_guild_messages(store, limiter):
    guild = new_guild()
    configure(store, guild, **{**LOOSE, "user_max_active": 2})
    assert ask(limiter, guild, 1, "a").ok and ask(limiter, guild, 1, "b").ok
    d = ask(limiter, guild, 1, "c")
    assert (d.kind, d.retry_after_s) == ("user_active", None)
    assert d.message.startswith("you already have 2 dreams queued or running (limit 2)")
    limiter.release(guild, 1, "a", refund=False)
    assert ask(limiter, guild, 1, "c").ok

    configure(store, guild, user_max_active=50, guild_images_hour=5)
    d = ask(limiter, guild, 2, "g", images=4, now=T0 + 60)
    assert d.kind == "guild_hour"
    assert d.message == ("this server's hourly quota 3/5 standard images used and this dream counts as 4 "
                         "standard images; "
                         "enough frees up in 59 min 40 s")
    configure(store, guild, guild_images_hour=5000, guild_max_queued=2)  # "b" and "c" are active
    d = ask(limiter, guild, 3, "q", now=T0 + 60)
    assert d.kind == "guild_queued"
    assert d.message.startswith("this server already has 2 dreams queued or running (limit 2)")


def test_longest_wait_is_reported(store, limiter):
    guild = new_guild()
    configure(store, guild, **{**LOOSE, "cooldown_s": 60, "user_images_hour": 1})
    assert ask(limiter, guild, 1, "a", now=T0).ok
    d = ask(limiter, guild, 1, "b", now=T0 + 10)  # both cooldown (50 s) and hourly (3630 s) refuse
    assert (d.kind, d.retry_after_s) == ("user_hour", 3630.0)


def test_duration():
    assert [duration(s) for s in (0.2, 23, 59.5, 60, 250, 3599, 3600, 18720, 18721)] == [
        "1 s", "23 s", "1 min", "1 min", "4 min 10 s", "59 min 59 s", "1 h", "5 h 12 min", "5 h 13 min"]


# --- Release, refund, idempotency -------------------------------------------------------------------------


def test_release_and_refund(store, limiter):
    guild = new_guild()
    configure(store, guild, **{**LOOSE, "user_images_hour": 4, "user_max_active": 1})
    assert ask(limiter, guild, 1, "a", images=3).ok
    assert ask(limiter, guild, 1, "b", images=1).kind == "user_active"
    assert limiter.release(guild, 1, "a", refund=False) is True
    assert limiter.release(guild, 1, "a", refund=True) is False  # second release: nothing, no refund
    u = store.usage(guild, 1, now=T0)
    assert (u["user_images_hour"], u["user_active"], u["guild_active"]) == (3, 0, 0)
    assert ask(limiter, guild, 1, "b", images=1).ok  # 4/4 images, 1/1 active
    d = ask(limiter, guild, 1, "c", images=1)
    assert d.kind == "user_hour"  # both refuse; the quota lasts longer than "until a job ends"
    assert limiter.release(guild, 1, "b", refund=True) is True
    assert limiter.release(guild, 1, "b", refund=True) is False
    assert store.usage(guild, 1, now=T0)["user_images_hour"] == 3
    assert ask(limiter, guild, 1, "c", images=1).ok
    assert ask(limiter, guild, 1, "d", images=1).kind == "user_hour"
    assert limiter.release(guild, 1, "c", refund=True)
    assert ask(limiter, guild, 1, "d", images=2).kind == "user_hour"  # 3 + 2 > 4
    assert ask(limiter, guild, 1, "d", images=1).ok
    assert limiter.release(guild, 2, "c") is False  # unknown job
    assert limiter.release(guild, 2, "a") is False


def test_release_by_another_member_does_nothing(store, limiter):
    guild = new_guild()
    configure(store, guild, **LOOSE)
    assert ask(limiter, guild, 1, "a").ok
    assert limiter.release(guild, 2, "a", refund=True) is False
    assert store.usage(guild, 1, now=T0)["user_active"] == 1
    assert limiter.release(guild, 1, "a") is True


def test_acquire_is_idempotent_per_job(store, limiter):
    guild = new_guild()
    configure(store, guild, cooldown_s=30)
    assert ask(limiter, guild, 1, "same", images=2).ok
    assert ask(limiter, guild, 1, "same", images=2, now=T0 + 1).ok  # a retried call: not counted twice
    u = store.usage(guild, 1, now=T0 + 1)
    assert (u["user_images_hour"], u["user_active"]) == (2, 1)
    assert ask(limiter, guild, 1, "other", now=T0 + 1).kind == "cooldown"


def test_reset_user(store, limiter):
    guild = new_guild()
    configure(store, guild, **{**LOOSE, "cooldown_s": 60, "user_images_day": 2})
    assert ask(limiter, guild, 1, "a", images=2).ok
    assert not ask(limiter, guild, 1, "b", now=T0 + 100).ok
    store.reset_user(guild, 1, actor_id=ADMIN)
    u = store.usage(guild, 1, now=T0 + 1)
    assert (u["user_images_day"], u["user_active"], u["cooldown_remaining_s"]) == (0, 0, 0.0)
    assert u["guild_images_day"] == 2  # the server's total keeps what was really made
    assert ask(limiter, guild, 1, "b", images=2, now=T0 + 1).ok
    assert limiter.release(guild, 1, "a", refund=True)  # reset jobs can still be released
    assert store.audit(guild, 1)[0]["key"] == "reset_user"


def test_usage_report(store, limiter):
    guild = new_guild()
    configure(store, guild, **{**LOOSE, "cooldown_s": 10})
    assert ask(limiter, guild, 1, "a", images=3, now=T0).ok
    assert ask(limiter, guild, 2, "b", images=2, now=T0 + HOUR).ok
    assert store.usage(guild, 1, now=T0 + HOUR + 60) == {
        "user_images_hour": 0, "user_images_day": 3, "user_active": 1, "cooldown_remaining_s": 0.0,
        "guild_images_hour": 2, "guild_images_day": 5, "guild_active": 2,
    }
    assert store.usage(guild, 2, now=T0 + HOUR + 4)["cooldown_remaining_s"] == 6.0


def test_server_clock_by_default(store, limiter):
    guild = new_guild()
    configure(store, guild, cooldown_s=30)
    assert limiter.acquire(guild, 1, "a", 1, 20).ok
    d = limiter.acquire(guild, 1, "b", 1, 20)
    assert d.kind == "cooldown" and 25 < d.retry_after_s <= 30
    assert 25 < store.usage(guild, 1)["cooldown_remaining_s"] <= 30


def test_keys_expire_except_config(rconn, store, limiter):
    guild = new_guild()
    configure(store, guild, cooldown_s=5)
    assert ask(limiter, guild, 1, "a").ok
    keys = {k.decode() for k in rconn.keys(f"dream:limits:{{{guild}}}:*")}
    assert keys == {LimitKeys.config(guild), LimitKeys.audit(guild), LimitKeys.cooldown(guild, 1),
                    *LimitKeys.usage_keys(guild, 1), LimitKeys.user_active(guild, 1),
                    LimitKeys.guild_active(guild), LimitKeys.job(guild, "a")}
    for k in keys - {LimitKeys.config(guild)}:
        assert 0 < rconn.ttl(k) <= 400 * DAY, k
    assert rconn.ttl(LimitKeys.config(guild)) == -1


# --- Static checks ----------------------------------------------------------------------------------------


def test_paused_refuses_everyone_even_exempt(store, limiter):
    guild = new_guild()
    configure(store, guild, paused=True, exempt_roles=[5])
    d = ask(limiter, guild, 1, "a", role_ids=[5])
    assert (d.ok, d.kind, d.retry_after_s) == (False, "paused", None)
    assert "paused" in d.message
    configure(store, guild, paused=False)
    assert ask(limiter, guild, 1, "a").ok


def test_channels_per_instance(store, limiter):
    guild = new_guild()
    store.set(guild, "channels", "bota:111,<#222>", ADMIN)
    assert store.get(guild).channels == {"bota": [111, 222]}
    d = ask(limiter, guild, 1, "a", instance="bota", channel_id=333)
    assert d.kind == "channel" and "<#111>" in d.message and "<#222>" in d.message
    assert ask(limiter, guild, 1, "b", instance="bota", channel_id=222).ok
    assert ask(limiter, guild, 2, "c", instance="botb", channel_id=333).ok  # botb serves every channel
    store.set(guild, "channels", "bota:", ADMIN)
    assert store.get(guild).channels == {}
    assert ask(limiter, guild, 3, "d", instance="bota", channel_id=333).ok


def test_max_images_and_steps(store, limiter):
    guild = new_guild()
    configure(store, guild, max_images=2, max_steps=30)
    d = ask(limiter, guild, 1, "a", images=3)
    assert d.kind == "max_images" and "at most 2 images" in d.message
    d = ask(limiter, guild, 1, "a", images=2, steps=31)
    assert d.kind == "max_steps" and "at most 30 steps" in d.message
    assert ask(limiter, guild, 1, "a", images=2, steps=30).ok


@pytest.mark.parametrize("prompt,negative,blocked", [
    ("a bad dream", "", True),
    ("a BAD dream", "", True),
    ("Bad!", "", True),
    ("so b\u200bad", "", True),  # zero-width space hidden inside
    ("so b\u00adad\u2060", "", True),  # soft hyphen, word joiner
    ("ＢＡＤ", "", True),  # fullwidth letters
    ("a badge", "", False),
    ("sinbad sails", "", False),
    ("bad_guy", "", False),
    ("nice", "very  bad", True),  # the phrase, in the negative prompt, any spacing
    ("nice", "very\u200b bad", True),
    ("very nice, bad", "", True),
    ("Große STRASSE", "", True),  # casefold: blocked "straße"
    ("плохой день", "", False),  # unicode-aware whole words: "плохо" is not inside "плохой"
    ("очень плохо.", "", True),
    ("kötü", "", True),
    ("kötüler", "", False),
])
def test_blocked_words(store, limiter, prompt, negative, blocked):
    guild = new_guild()
    store.set(guild, "blocked_words", "bad, very bad, Straße, ПЛОХО, kötü", ADMIN)
    d = ask(limiter, guild, 1, "a", prompt=prompt, negative_prompt=negative)
    assert d.ok is not blocked
    if blocked:
        assert d.kind == "blocked_word"
        assert ("negative prompt" in d.message) == (negative != "")


def test_blocked_words_bind_exempt_members_and_mask_the_word(store, limiter):
    guild = new_guild()
    configure(store, guild, exempt_roles=[5], blocked_words=["bad"])
    d = ask(limiter, guild, 1, "a", prompt="bad", role_ids=[5])
    assert d.kind == "blocked_word" and "(b**)" in d.message
    assert find_blocked_word(["b\u200bad"], "BAD") == (0, "bad")  # the list itself is cleaned too


def test_exempt_roles_skip_the_members_own_limits_never_the_servers(store, limiter):
    guild = new_guild()
    configure(store, guild, cooldown_s=600, user_max_active=1, user_images_hour=1, user_images_day=1,
              guild_images_hour=20, guild_images_day=100, guild_max_queued=5, max_images=1, max_steps=10,
              exempt_roles=[5, 6])
    for i in range(5):
        d = ask(limiter, guild, 1, f"e{i}", images=4, steps=50, role_ids=[6], now=T0 + i)
        assert d.ok, d
    u = store.usage(guild, 1, now=T0 + 5)
    assert (u["user_images_hour"], u["guild_active"]) == (20, 5)  # recorded: real load
    # The server's own limits hold for the exempt member too: the hourly quota and the queue are full.
    d = ask(limiter, guild, 1, "e5", images=1, steps=5, role_ids=[6], now=T0 + 5)
    assert not d.ok and d.kind in ("guild_hour", "guild_queued")
    d = ask(limiter, guild, 2, "m", steps=5, now=T0 + 5)  # a plain member meets the (now full) server
    assert not d.ok and d.kind in ("guild_hour", "guild_day", "guild_queued")


def test_priority_roles_order_dreams_inside_their_server_only(store, limiter):
    guild = new_guild()
    configure(store, guild, priority_roles=[7], cooldown_s=60)
    a = ask(limiter, guild, 1, "a", role_ids=[3, 7])
    assert (a.priority, a.tier) == ("default", 1)  # the server's own queue: priority acts inside it
    assert ask(limiter, guild, 2, "b", role_ids=[3]).tier == 0
    d = ask(limiter, guild, 1, "c", role_ids=[7])
    assert (d.ok, d.tier) == (False, 1)


def test_everyone_is_refused_as_a_priority_or_exempt_role_and_ignored_if_stored(store, limiter, rconn):
    guild = new_guild()
    for key in ("priority_roles", "exempt_roles"):
        with pytest.raises(LimitError, match="@everyone"):
            store.set(guild, key, f"5,{guild}", ADMIN)
        assert getattr(store.get(guild), key) == []
    # Stored by an older release: ignored, so every member is neither priority nor exempt.
    rconn.hset(LimitKeys.config(guild), mapping={"priority_roles": f"[{guild}]", "exempt_roles": f"[{guild}]",
                                                 "user_max_active": "1"})
    assert ask(limiter, guild, 1, "a", role_ids=[guild]).tier == 0
    d = ask(limiter, guild, 1, "b", role_ids=[guild])
    assert not d.ok and d.kind in ("cooldown", "user_active")  # not exempt: the member's own limits hold


def test_the_operators_ceilings_and_priority_apply_over_the_admins(store, limiter, rconn):
    from dreamcore import servers

    guild = new_guild()
    configure(store, guild, **LOOSE)
    servers.change(rconn, guild, priority="high", max_queued=2, units_hour=3)
    assert ask(limiter, guild, 1, "a", now=T0).priority == "high"
    assert ask(limiter, guild, 2, "b", now=T0).ok
    d = ask(limiter, guild, 3, "c", now=T0)
    assert (d.ok, d.kind) == (False, "guild_queued")
    limiter.release(guild, 1, "a")
    d = ask(limiter, guild, 3, "c", images=2, now=T0)  # 2 + 2 units past the operator's 3 an hour
    assert (d.ok, d.kind) == (False, "guild_hour")
    with pytest.raises(ValueError, match="priority"):
        servers.change(rconn, guild, priority="urgent")
    servers.clear(rconn, guild)
    assert servers.get(rconn, guild) == servers.ServerPolicy()
    rconn.hset(operator_key(guild), mapping={"max_queued": "lots", "priority": "low"})
    assert servers.get(rconn, guild) == servers.ServerPolicy(priority="low")  # the bad value is ignored


def test_direct_messages_count_each_member_on_their_own(store, limiter):
    # What a server-wide limit would be in a DM is each member's own: one member can't use up another's.
    configure(store, None, **{**LOOSE, "guild_max_queued": 2, "guild_images_hour": 3})
    for user in (1, 2, 3):
        for i in range(2):
            assert ask(limiter, None, user, f"dm{user}-{i}", now=T0).ok
        d = ask(limiter, None, user, f"dm{user}-x", now=T0)
        assert (d.ok, d.kind) == (False, "guild_queued")
    assert store.usage(None, 1, now=T0)["guild_active"] == 2


# --- Admin input, audit, stored config ------------------------------------------------------------------


def test_defaults_and_ranges_come_from_settings(monkeypatch, rconn):
    s = Settings()
    lim = default_limits(s)
    assert (lim.cooldown_s, lim.user_max_active, lim.user_images_hour, lim.user_images_day) == (10, 2, 30, 100)
    assert (lim.guild_images_hour, lim.guild_images_day, lim.max_images, lim.max_steps) == (300, 1500, 4, 60)
    assert lim.guild_max_queued == 50 and not lim.paused and lim.channels == {}
    for key, info in Settings.model_fields.items():
        if key.startswith("limit_") and info.annotation in (int, float):
            name = key.removeprefix("limit_")
            lo = next(m.ge for m in info.metadata if getattr(m, "ge", None) is not None)
            hi = next(m.le for m in info.metadata if getattr(m, "le", None) is not None)
            assert limit_range(name) == (lo, hi), name
    monkeypatch.setenv("DREAMBOT_LIMIT_COOLDOWN_S", "42")
    assert LimitStore(rconn, load_settings()).get(1).cooldown_s == 42
    monkeypatch.setenv("DREAMBOT_LIMIT_COOLDOWN_S", "99999")
    with pytest.raises(SettingsError, match="DREAMBOT_LIMIT_COOLDOWN_S"):
        load_settings()


def test_unknown_key_lists_the_known_ones(store):
    with pytest.raises(LimitError) as err:
        store.set(1, "colldown", "5", ADMIN)
    assert "colldown" in str(err.value) and err.value.key == "colldown"
    for key in KNOWN_KEYS:
        assert key in str(err.value)


@pytest.mark.parametrize("key", [k for k in KNOWN_KEYS if limit_range(k)])
def test_out_of_range_names_key_and_range(store, key):
    lo, hi = limit_range(key)
    for bad in (hi + 1, lo - 1, 99999):
        if lo <= bad <= hi:
            continue
        with pytest.raises(LimitError, match=rf"^{key} must be between {lo} and {hi}, got {bad}$"):
            store.set(1, key, str(bad), ADMIN)
    kind = "a number" if isinstance(hi, float) else "a whole number"
    with pytest.raises(LimitError, match=rf"{key} must be {kind} between {lo} and {hi}, got 'lots'"):
        store.set(1, key, "lots", ADMIN)
    assert getattr(store.set(1, key, f" {hi} ", ADMIN), key) == hi
    assert store.overrides(1) == {key: hi}


def test_cooldown_message_example(store):
    with pytest.raises(LimitError, match="^cooldown_s must be between 0 and 3600, got 99999$"):
        store.set(1, "cooldown_s", "99999", ADMIN)


def test_parsing_each_type(store):
    g = new_guild()
    for raw, want in (("on", True), ("OFF", False), ("yes", True), ("false", False)):
        assert store.set(g, "paused", raw, ADMIN).paused is want
    with pytest.raises(LimitError, match="paused must be true/false"):
        store.set(g, "paused", "maybe", ADMIN)
    assert store.set(g, "exempt_roles", "1, 2 3,<@&4>", ADMIN).exempt_roles == [1, 2, 3, 4]
    assert store.set(g, "exempt_roles", "+5,1", ADMIN).exempt_roles == [1, 2, 3, 4, 5]
    assert store.set(g, "exempt_roles", "-2,3", ADMIN).exempt_roles == [1, 4, 5]
    assert store.set(g, "exempt_roles", "none", ADMIN).exempt_roles == []
    with pytest.raises(LimitError, match="exempt_roles: 'abc' is not a Discord id"):
        store.set(g, "exempt_roles", "1,abc", ADMIN)
    assert store.set(g, "blocked_words", "Bad, worse , b\u200bad,,", ADMIN).blocked_words == ["Bad", "worse"]
    assert store.set(g, "blocked_words", "+awful", ADMIN).blocked_words == ["Bad", "worse", "awful"]
    assert store.set(g, "blocked_words", "-BAD", ADMIN).blocked_words == ["worse", "awful"]
    with pytest.raises(LimitError, match="blocked_words"):
        store.set(g, "blocked_words", "x" * 65, ADMIN)
    store.set(g, "channels", "one:1,2", ADMIN)
    assert store.set(g, "channels", "two:3", ADMIN).channels == {"one": [1, 2], "two": [3]}
    assert store.set(g, "channels", "one:+4", ADMIN).channels == {"one": [1, 2, 4], "two": [3]}
    with pytest.raises(LimitError, match="instance:channel_id"):
        store.set(g, "channels", "1,2", ADMIN)
    assert store.set(g, "channels", "clear", ADMIN).channels == {}
    with pytest.raises(LimitError, match="exempt_roles allows at most 100 entries, got 101"):
        store.set(g, "exempt_roles", ",".join(str(i) for i in range(1, 102)), ADMIN)
    # "default" drops the guild's own value: the limit follows the settings again.
    store.set(g, "max_steps", "20", ADMIN)
    assert store.set(g, "max_steps", "default", ADMIN).max_steps == 60
    assert "max_steps" not in store.overrides(g)


def test_audit_trail_and_logs(store, caplog, monkeypatch):
    g = new_guild()
    with caplog.at_level(logging.INFO, logger="dreamcore.limits"):
        store.set(g, "cooldown_s", "30", 11)
        store.set(g, "cooldown_s", "45", 12)
        store.set(g, "priority_roles", "8", 11)
    entries = store.audit(g, 10)
    assert [(e["actor_id"], e["key"], e["old"], e["new"]) for e in entries] == [
        (11, "priority_roles", [], [8]), (12, "cooldown_s", 30, 45), (11, "cooldown_s", 10, 30)]
    assert all(e["ts"] > 1.5e9 for e in entries)
    assert store.audit(g, 1) == entries[:1]
    rec = [r for r in caplog.records if r.getMessage() == "guild limit changed"]
    assert [(r.actor_id, r.limit, r.old, r.new, r.guild_id) for r in rec][1] == (12, "cooldown_s", "30", "45", g)
    with pytest.raises(LimitError):  # a refused change is not audited
        store.set(g, "cooldown_s", "-1", 11)
    assert len(store.audit(g, 10)) == 3
    monkeypatch.setattr(stored, "AUDIT_KEEP", 5)
    for i in range(8):
        store.set(g, "max_steps", str(10 + i), 11)
    entries = store.audit(g, 100)
    assert len(entries) == 5 and entries[0]["new"] == 17


def test_corrupt_config_falls_back_to_defaults(rconn, store, limiter, caplog):
    g = new_guild()
    configure(store, g, cooldown_s=30, paused=True)
    key = LimitKeys.config(g)
    rconn.hset(key, "max_steps", "{not json")
    rconn.hset(key, "user_images_hour", "99999999")
    rconn.hset(key, "blocked_words", '"not a list"')
    rconn.hset(key, "from_the_future", "1")
    with caplog.at_level(logging.WARNING, logger="dreamcore.limits"):
        lim = store.get(g)
    assert (lim.cooldown_s, lim.paused) == (30, True)  # the good values survive
    assert (lim.max_steps, lim.user_images_hour, lim.blocked_words) == (60, 30, [])
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 4
    # The whole key is the wrong type: every default, a warning, and admins can still set values.
    rconn.delete(key)
    rconn.set(key, "garbage")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dreamcore.limits"):
        assert store.get(g) == default_limits(load_settings())
        assert ask(limiter, g, 1, "a").ok
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert store.set(g, "cooldown_s", "5", ADMIN).cooldown_s == 5
    assert store.get(g).cooldown_s == 5


def test_bad_arguments(limiter):
    with pytest.raises(ValueError, match="images"):
        limiter.acquire(1, 1, "a", 0, 20)
    with pytest.raises(ValueError, match="job_id"):
        limiter.acquire(1, 1, "", 1, 20)


def test_survives_script_cache_flush(rconn, store, limiter):
    g = new_guild()
    assert ask(limiter, g, 1, "a").ok
    rconn.script_flush()  # as after a Redis restart: EVALSHA misses, the script is loaded again
    assert ask(limiter, g, 2, "b").ok


# --- Buckets: the cost of a submit does not grow with the day's usage --------------------------------------


def test_bucket_fields_stay_bounded_over_a_busy_day(rconn, store, limiter):
    """A guild making a dream every 20 s all day keeps at most 61 + 145 live bucket fields, so every submit
    reads the same handful whatever the day's total; the quota still counts every image."""
    guild = new_guild()
    configure(store, guild, **{**LOOSE, "guild_images_day": 10_000_000, "guild_images_hour": 1_000_000})
    n = 0
    for i in range(0, DAY + 2 * HOUR, 20):
        assert ask(limiter, guild, 1 + n % 7, f"busy{n}", now=T0 + i).ok
        limiter.release(guild, 1 + n % 7, f"busy{n}")
        n += 1
    assert rconn.hlen(LimitKeys.guild_hour(guild)) <= HOUR // HOUR_BUCKET_S + 1
    assert rconn.hlen(LimitKeys.guild_day(guild)) <= DAY // DAY_BUCKET_S + 1
    now = T0 + DAY + 2 * HOUR - 20
    u = store.usage(guild, 1, now=now)
    made = [T0 + i for i in range(0, DAY + 2 * HOUR, 20)]
    assert u["guild_images_hour"] == sum(1 for t in made if counts_until(t, HOUR) > now)
    assert u["guild_images_day"] == sum(1 for t in made if counts_until(t, DAY) > now)


def test_an_older_releases_usage_is_folded_into_buckets(rconn, store, limiter):
    """The previous release kept one zset entry per dream ("<images>:<job>" scored by time). After an
    upgrade that usage still counts, once, and a job it accepted is still refunded on cancel."""
    guild = new_guild()
    configure(store, guild, **{**LOOSE, "user_images_hour": 10})
    pipe = rconn.pipeline()
    for key in (LimitKeys.old_user_usage(guild, 1), LimitKeys.old_guild_usage(guild)):
        pipe.zadd(key, {"4:old1": T0 - 100, "3:old2": T0 - 50, "9:gone": T0 - 2 * DAY})
    pipe.hset(LimitKeys.job(guild, "old2"), mapping={"user": 1, "images": 3, "at": repr(T0 - 50), "exempt": 0})
    pipe.execute()
    assert store.usage(guild, 1, now=T0)["user_images_hour"] == 7
    d = ask(limiter, guild, 1, "new", images=4, now=T0)
    assert d.kind == "user_hour"  # 7 + 4 > 10
    assert not rconn.exists(LimitKeys.old_user_usage(guild, 1), LimitKeys.old_guild_usage(guild))
    u = store.usage(guild, 1, now=T0)
    assert (u["user_images_hour"], u["user_images_day"], u["guild_images_day"]) == (7, 7, 7)
    assert limiter.release(guild, 1, "old2", refund=True)
    assert store.usage(guild, 1, now=T0)["user_images_hour"] == 4
    assert ask(limiter, guild, 1, "new", images=4, now=T0).ok
