"""Fuzzing every way a value gets into the product: job payloads read from Redis (by parse_job and by a real
worker), the values admins give /dreamadmin set, and the /dream options a real bot process receives.

The rule everywhere: a clear message or a valid result, never another exception, never an exception in the
logs. Each fuzz prints its counts ("fuzz <what>: N examples, A accepted, R rejected").

(tests/unit/test_schema.py already fuzzes make_request's keyword options; this file does not repeat that.)
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import re
import time
from collections import Counter
from types import SimpleNamespace
from unittest.mock import AsyncMock, MagicMock

import discord
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import dreamcore.job as jobmod
from dreamcore.job import (
    ASPECTS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    DreamJob,
    JobError,
    clean_text,
    make_job,
    make_origin,
    make_request,
    origin_of,
    parse_job,
)
from dreamcore.styles import load_styles
from tests.support.fleet import image_store

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))

# --- Strategies: the nastiest text and JSON values ----------------------------------------------------------

# Zero-width and bidi controls, C0/C1 controls, BOM, soft hyphen, combining marks, line/paragraph separators,
# private use, unassigned, fullwidth letters, emoji with a ZWJ: what people paste and what hides words.
SPECIAL = ("\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\u2066"
           "\u2067\u2068\u2069\u206f\ufeff\u00ad\x00\x01\x07\x08\t\n\x0b\x0c\r\x1b\x1f\x7f\x80\x85\x9f"
           "\u0301\u0308\u20dd\u2028\u2029\u3000\ue000\U000f0000\U000e0001\U0001f600\u200d\U0001f469"
           "\uff21\ufb01\u1100\u1161\u11a8`*_~|<>@#&:\"'\\/ ")
special_text = st.text(alphabet=st.sampled_from(SPECIAL), max_size=40)
mixed_text = st.text(alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=("Cs",))),
                     max_size=60)
# Up to 10 000 characters without asking Hypothesis for 10 000 draws: a short piece repeated.
long_text = st.builds(lambda piece, n: (piece * n)[:10_000], st.text(min_size=1, max_size=12),
                      st.integers(min_value=100, max_value=10_000))
fuzz_text = st.one_of(st.text(max_size=30), special_text, mixed_text, long_text,
                      st.sampled_from(["", " ", "none", "1:1", "0123456789abcdef", "bot1", "@everyone",
                                       "<@&123>", "'; DROP TABLE jobs; --", "../../etc/passwd", "NaN"]))
fuzz_int = st.one_of(st.integers(min_value=-2**70, max_value=2**70),
                     st.sampled_from([0, 1, -1, 4, 5, 100, 101, MAX_SEED, MAX_SEED + 1, 2**63, 2**64, -2**63]))
fuzz_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([0.0, -0.0, 0.5, 0.49999, 1.0, 1.0000001, 30.0, 30.0001, 1.5e9, 5e9]))
json_leaf = st.one_of(st.none(), st.booleans(), fuzz_int, fuzz_float, fuzz_text)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=8,
)


def valid_job(job_id: str = "0123456789abcdef", token: str = "aW50ZXJhY3Rpb246MTIzOjEy") -> DreamJob:
    origin = make_origin(instance="bot1", guild_id=11, channel_id=12, user_id=13, application_id=14,
                         interaction_id=15, interaction_token=token)
    req = make_request(prompt="a lighthouse at dusk", negative_prompt="fog", style="anime", aspect="12:5",
                       seed=42, count=1, steps=4, guidance=7.5, split=0.8)
    return make_job(req, origin, job_id=job_id)


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out.extend(_paths(v, prefix + (k,)))
    return out


BASE = valid_job().to_dict()
BASES = [BASE]
if hasattr(jobmod, "JobSource"):  # schema version 2: a variation names the image it starts from
    _variation = make_job(make_request(prompt="a lighthouse, again", seed=43, steps=4),
                          make_origin(instance="bot1", guild_id=11, channel_id=12, user_id=13),
                          job_id="1123456789abcdef", kind="variation",
                          source={"job_id": "0123456789abcdef", "index": 0, "strength": 0.55})
    BASES.append(_variation.to_dict())


def _at(doc: dict, path: tuple):
    for k in path:
        doc = doc[k]
    return doc


EXAMPLE: dict[tuple, object] = {}  # every field path of every base -> a valid value of it
for _base in BASES:
    for _path in _paths(_base):
        EXAMPLE.setdefault(_path, _at(_base, _path))
FIELD_PATHS = list(EXAMPLE)  # every field, nested ones included
DICT_PATHS = [()] + [p for p in FIELD_PATHS if isinstance(EXAMPLE[p], dict)]  # where an extra key can go


def _near(value: object) -> st.SearchStrategy:
    """Values of the field's own type (or one JSON loosely turns into it): most of what gets accepted."""
    if isinstance(value, bool) or value is None:
        return st.one_of(st.booleans(), st.none())
    if isinstance(value, int):
        return st.one_of(fuzz_int, st.integers(0, 2 * value + 2), st.booleans(),
                         st.integers(0, 200).map(str), st.integers(0, 100).map(float))
    if isinstance(value, float):
        return st.one_of(fuzz_float, st.floats(0, 2 * value + 1), st.integers(0, 40), st.floats(0, 31).map(str))
    if isinstance(value, str):
        return st.one_of(fuzz_text, st.builds(lambda junk, v=value: junk[:3] + v + junk[3:], special_text))
    return json_value


def _set(path: tuple) -> st.SearchStrategy:
    return st.tuples(st.just("set"), st.just(path), st.one_of(json_value, _near(EXAMPLE[path]),
                                                                 _near(EXAMPLE[path])))


mutation = st.one_of(
    st.sampled_from(FIELD_PATHS).flatmap(_set),
    st.sampled_from(FIELD_PATHS).flatmap(_set),
    st.sampled_from(FIELD_PATHS).flatmap(_set),
    st.tuples(st.just("delete"), st.sampled_from(FIELD_PATHS), st.none()),
    st.tuples(st.just("extra"), st.sampled_from(DICT_PATHS), st.tuples(fuzz_text, json_value)),
)


def mutate(base: dict, mutations: list) -> dict:
    doc = copy.deepcopy(base)
    for op, path, value in mutations:
        parent = doc
        for k in path[:-1] if op != "extra" else path:
            if not isinstance(parent, dict) or k not in parent:
                parent = None
                break
            parent = parent[k]
        if not isinstance(parent, dict):
            continue  # an earlier mutation replaced or removed the container
        if op == "set":
            parent[path[-1]] = value
        elif op == "delete":
            parent.pop(path[-1], None)
        else:
            key, val = value
            parent[key] = val
    return doc


mutated_job = st.builds(mutate, st.sampled_from(BASES), st.lists(mutation, min_size=1, max_size=3))


def _as_wire(doc: dict, how: str, cut: int) -> object:
    text = json.dumps(doc, allow_nan=True)
    if how == "dict":
        return doc
    if how == "str":
        return text
    if how == "bytes":
        return text.encode("utf-8", "surrogatepass")
    return text[: cut % (len(text) + 1)]  # truncated JSON


garbage = st.one_of(
    st.binary(max_size=200),
    fuzz_text,
    json_value,
    st.builds(json.dumps, json_value),
    st.sampled_from([b"\xff\xfe", b"", "", "{", "[" * 5000, "1" * 5000, "-" + "9" * 5000, "1e999999",
                     '{"v": 1' + ', "v": 2' * 3 + "}", '{"v": ' + "1" * 5000 + "}", "\ud800", "NaN",
                     '{"__proto__": {}}', "null", "true", "[]", "{}"]),
)
wired_job = st.builds(_as_wire, mutated_job, st.sampled_from(["dict", "dict", "str", "bytes", "cut"]),
                      st.integers(0, 10**6))
# Only values of each field's own type: what a bot of a slightly different release might write.
gentle_job = st.builds(mutate, st.sampled_from(BASES), st.lists(
    st.sampled_from(FIELD_PATHS).flatmap(lambda p: st.tuples(st.just("set"), st.just(p), _near(EXAMPLE[p]))),
    min_size=1, max_size=2))
payloads = st.integers(0, 9).flatmap(lambda i: gentle_job if i < 4 else wired_job if i < 8 else garbage)


# --- What "a valid job" and "a clear refusal" mean -------------------------------------------------------------

_SNOWFLAKE = range(1, 2**64)
_TOKEN = re.compile(r"[A-Za-z0-9_.\-]{1,600}")


def assert_within_bounds(job: DreamJob) -> None:
    """Every field of an accepted job is of its type and inside its bounds, and the job round-trips."""
    assert job.v in VERSIONS and type(job.v) is int
    assert re.fullmatch(r"[a-f0-9]{16}", job.job_id)
    assert job.priority in ("high", "default", "low") and job.kind in KINDS
    source = getattr(job, "source", None)  # variations and upscales start from an earlier image
    if source is not None:
        assert re.fullmatch(r"[a-f0-9]{16}", source.job_id) and type(source.index) is int
        assert 0 <= source.index <= 3 and math.isfinite(source.strength) and 0 < source.strength <= 1
    r = job.request
    for text, lo in ((r.prompt, 1), (r.negative_prompt, 0)):
        assert isinstance(text, str) and lo <= len(text) <= MAX_PROMPT_CHARS
        assert clean_text(text) == text, f"text not clean (cleaning it again changes it): {text!r}"
    assert r.style in load_styles() and r.aspect in ASPECTS
    for name, lo, hi in (("seed", 0, MAX_SEED), ("count", 1, 4), ("steps", 1, 100),
                         ("max_upload_bytes", 1024 * 1024, 500 * 1024 * 1024)):
        v = getattr(r, name)
        assert type(v) is int and lo <= v <= hi, (name, v)
    for name, lo, hi in (("guidance", 0.0, 30.0), ("split", 0.5, 1.0)):
        v = getattr(r, name)
        assert type(v) is float and math.isfinite(v) and lo <= v <= hi, (name, v)
    o = job.origin
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", o.instance)
    for name in ("guild_id", "application_id", "interaction_id"):
        v = getattr(o, name)
        assert v is None or (type(v) is int and v in _SNOWFLAKE), (name, v)
    for name in ("channel_id", "user_id"):
        v = getattr(o, name)
        assert type(v) is int and v in _SNOWFLAKE, (name, v)
    assert o.interaction_token is None or _TOKEN.fullmatch(o.interaction_token)
    assert type(o.created_at) is float and 1.5e9 <= o.created_at <= 5e9
    # What a worker accepts, it can write back and read again unchanged (results carry origin and request).
    assert parse_job(job.to_json()) == job
    json.loads(job.to_json())


JOB_FIELDS = set(DreamJob.model_fields)
VERSIONS = getattr(jobmod, "READABLE_VERSIONS", (jobmod.SCHEMA_VERSION,))
KINDS = getattr(jobmod, "KINDS", ("dream",))


def _decoded(payload: object) -> object:
    try:
        return json.loads(payload) if isinstance(payload, (str, bytes)) else payload
    except (ValueError, RecursionError):
        return None


def assert_clear_refusal(err: JobError, payload: object) -> None:
    """Non-empty, naming the field when there is one (a field of the job, or the unknown key it found)."""
    payload = _decoded(payload)
    text = str(err)
    assert text.strip(), "empty JobError message"
    if err.field is not None:
        names = JOB_FIELDS | {"job"} | (set(payload) if isinstance(payload, dict) else set())
        assert any(err.field == n or err.field.startswith(f"{n}.") for n in names), err.field
        assert err.field in text or (err.field == "v" and "schema version" in text), (err.field, text[:200])
    elif isinstance(payload, dict) and payload.get("v") == 1:
        pytest.fail(f"a JobError for a v1 object must name a field: {text[:200]}")


# --- parse_job ------------------------------------------------------------------------------------------------


def test_parse_job_fuzz_gives_a_bounded_job_or_a_clear_job_error():
    counts: Counter[str] = Counter()

    @settings(FUZZ, max_examples=1000)
    @given(payloads)
    def check(payload):
        counts["examples"] += 1
        try:
            job = parse_job(payload)
        except JobError as err:
            counts["rejected"] += 1
            assert_clear_refusal(err, payload)
            return
        counts["accepted"] += 1
        assert_within_bounds(job)

    check()
    print(f"\nfuzz parse_job: {counts['examples']} examples, {counts['accepted']} accepted, "
          f"{counts['rejected']} rejected")
    assert counts["accepted"] and counts["rejected"]


@pytest.mark.parametrize("raw", [
    "1" * 5000,  # int() refuses > 4300 digits with ValueError, not JSONDecodeError
    '{"v": 1, "job_id": ' + "9" * 5000 + "}",
    "[" * 100_000,  # nesting past the recursion limit
    '{"a":' * 100_000,
    b"[" * 100_000,
], ids=["5000-digit-int", "5000-digit-field", "deep-array", "deep-object", "deep-bytes"])
def test_parse_job_pathological_json_is_a_job_error(raw):
    with pytest.raises(JobError, match="not JSON"):
        parse_job(raw)
    assert origin_of(raw) is None


def test_cleaning_is_stable():
    # A zero-width character between a letter and its accent: dropping it must not leave text that a second
    # cleaning would change (the worker cleans again what the bot cleaned).
    for raw in ("e\u200b\u0301", "A\u2060\u030a", "\u1100\u200d\u1161", "e\u00ad\u0301x"):
        once = clean_text(raw)
        assert clean_text(once) == once, (raw, once)


# --- /dreamadmin set ------------------------------------------------------------------------------------------

from bot.admin import DreamAdmin  # noqa: E402
from bot.admin_text import MAX_MESSAGE, render, show_text  # noqa: E402
from dreamcore.keys import LimitKeys  # noqa: E402
from dreamcore.limits.model import KNOWN_KEYS, GuildLimits, LimitError, limit_range  # noqa: E402
from dreamcore.limits.stored import LimitStore  # noqa: E402


def _admin_value(key: str) -> st.SearchStrategy[str]:
    """What an admin might type for `key`: garbage, and things close to what it takes."""
    lo, hi = limit_range(key) or (0, 100)
    near = st.one_of(
        st.integers(lo - 2, hi + 2).map(str),
        st.integers(-2**70, 2**70).map(str),
        st.sampled_from(["true", "false", "on", "OFF", "default", "none", "clear", "+1,2", "-1", "+", "-", ",",
                         "bot1:", "bot1:1,2", "BOT1: <#5>", "x:", ":1", "<@&12> <@&13>", "+<@&0>", "-bad,worse",
                         "+" + ",".join(["word"] * 600), "٣", "²", "1e3", "0x10", " 7 ", "+7", "-0", "1" * 30,
                         "9" * 5000, "\u200b5", "5\u200b"]),
        st.lists(st.integers(-5, 2**65), max_size=6).map(lambda ids: ", ".join(map(str, ids))),
        st.builds(lambda sign, words: sign + ",".join(words), st.sampled_from(["", "+", "-"]),
                  st.lists(fuzz_text.map(lambda t: t[:80]), max_size=5)),
    )
    return st.one_of(near, near, fuzz_text.map(lambda t: t[:1500]), fuzz_text)


def test_limit_store_set_fuzz_gives_valid_limits_or_a_limit_error(rconn):
    store = LimitStore(rconn)
    guild, actor = 4242, 77
    counts: Counter[str] = Counter()

    @settings(FUZZ, max_examples=400)
    @given(st.sampled_from(KNOWN_KEYS).flatmap(lambda k: st.tuples(st.just(k), _admin_value(k))))
    def check(key_value):
        key, value = key_value
        counts["examples"] += 1
        before = rconn.hgetall(LimitKeys.config(guild))
        try:
            limits = store.set(guild, key, value, actor)
        except LimitError as err:
            counts["rejected"] += 1
            assert key in str(err) and err.key == key, (key, str(err)[:200])
            assert rconn.hgetall(LimitKeys.config(guild)) == before, "a refused value changed the stored limits"
            return
        counts["accepted"] += 1
        assert isinstance(limits, GuildLimits)
        # What was stored reads back as the same valid limits, and every admin view of it renders.
        assert store.get(guild) == limits
        GuildLimits.model_validate(limits.model_dump())
        assert len(show_text(limits, store.overrides(guild))) <= MAX_MESSAGE
        render(key, getattr(limits, key))

    check()
    print(f"\nfuzz /dreamadmin set (LimitStore.set): {counts['examples']} examples, {counts['accepted']} accepted, "
          f"{counts['rejected']} rejected")
    assert counts["accepted"] and counts["rejected"]


def _admin_interaction(guild_id: int, store: LimitStore) -> SimpleNamespace:
    response = MagicMock()
    response.is_done.return_value = False
    response.send_message = AsyncMock()
    return SimpleNamespace(guild_id=guild_id, permissions=discord.Permissions(manage_guild=True),
                           user=SimpleNamespace(id=77), response=response, followup=MagicMock(),
                           client=SimpleNamespace(backend=SimpleNamespace(store=store)))


def test_dreamadmin_set_replies_fit_one_message(rconn):
    """The admin's reply, whatever they typed (Discord lets a value be 1500 characters): one ephemeral message
    under Discord's 2000-character limit, or Discord refuses it and the admin sees "something went wrong"."""
    store = LimitStore(rconn)
    admin = DreamAdmin()
    counts: Counter[str] = Counter()

    @settings(FUZZ, max_examples=100)
    @given(st.sampled_from(KNOWN_KEYS + ("nope", " cooldown_s ", "\u200bpaused")),
           st.one_of(fuzz_text, st.sampled_from(["\u200b" * 1500, "\x07" * 1500, "'" * 1500, "7" * 1500]))
           .map(lambda t: t[:1500] or "x"))
    def check(key, value):
        counts["examples"] += 1
        inter = _admin_interaction(5151, store)
        asyncio.run(admin.set_limit.callback(admin, inter, key[:64], value))
        inter.response.send_message.assert_awaited_once()
        (text,), kwargs = inter.response.send_message.call_args
        assert kwargs["ephemeral"] is True and kwargs["allowed_mentions"].to_dict()["parse"] == []
        assert 0 < len(text) <= MAX_MESSAGE, f"a {len(text)}-character reply for {key!r}={value[:40]!r}"
        counts["refused" if text.startswith(("Can't", "Unknown")) else "changed"] += 1

    check()
    print(f"\nfuzz /dreamadmin set replies: {counts['examples']} examples, {counts['changed']} accepted, "
          f"{counts['refused']} rejected")


# --- Corrupt jobs through a real worker -------------------------------------------------------------------------

from dreamcore import results  # noqa: E402
from dreamcore.queue.rq_queues import DreamQueue  # noqa: E402
from dreamcore.settings import get_settings  # noqa: E402

PLACEHOLDER_ID = "0000000000000000"
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    from worker.pipeline import DreamPipeline

    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")


def _own_id(payload: object, job_id: str) -> object:
    """A job id in a payload is the RQ job's own id, as the bot writes it (see the xfail test below for why a
    payload whose job_id names some other job is kept out of this sample)."""
    if isinstance(payload, dict) and isinstance(payload.get("job_id"), str) and payload["job_id"]:
        payload = dict(payload, job_id=job_id)
    return payload


# What a worker can find in a job's args: any JSON value RQ's JSON serializer round-trips (no bytes).
worker_payload = st.integers(0, 9).flatmap(
    lambda i: gentle_job if i < 4
    else st.builds(_as_wire, mutated_job, st.sampled_from(["dict", "dict", "str", "cut"]), st.integers(0, 10**6))
    if i < 8 else st.one_of(fuzz_text, json_value))


def exception_records(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """An "exception in the logs": a record at ERROR or above, a record carrying exc_info, or a record whose
    text holds a Python traceback."""
    return [r for r in records if r.levelno >= logging.ERROR or r.exc_info or TRACEBACK in r.getMessage()]


def expected_rq_failure(record: logging.LogRecord, corrupt_ids: set[str]) -> str | None:
    """The one exception record a corrupt job may leave: RQ's own "job X: exception raised while executing"
    record for a job we refused on purpose, whose traceback ends in worker.errors.JobRejected (no other
    exception underneath). Returns the job id, or None if the record is anything else."""
    if not record.name.startswith("rq.") or record.exc_info:
        return None
    text = record.getMessage()
    m = re.search(r"job (\S+): exception raised while executing \(worker\.tasks\.run_dream\)", text)
    if not m or m.group(1) not in corrupt_ids:
        return None
    if text.count(TRACEBACK) != 1:  # a second traceback: another exception was chained in
        return None
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if TRACEBACK in line)
    # The exception line is the first unindented line after the frames (the message may go on over lines).
    exc_line = next((line for line in lines[start + 1:] if line and not line.startswith(" ")), "")
    return m.group(1) if exc_line.startswith("worker.errors.JobRejected: ") else None


def _run_worker(rconn, pipeline):
    from worker.runner import make_worker

    worker = make_worker(get_settings(), rconn, pipeline, name="fuzz-worker")
    worker.work(burst=True, logging_level="WARNING")
    return worker


def _published(rconn) -> dict[str, tuple]:
    """Every result any outbox announces (progress nudges aside): job id -> (instance, DreamResult)."""
    out = {}
    for key in rconn.scan_iter("dream:outbox:*"):
        if key.endswith(b":progress"):
            continue  # live progress of running jobs, not results
        instance = key.decode().split(":", 2)[2]
        for _, fields in rconn.xrange(key):
            if fields.get(b"status") == b"progress":
                continue  # live progress of a running job, not a result
            jid = fields[b"job_id"].decode()
            assert jid not in out, f"job {jid} announced twice"
            loaded = results.load(rconn, image_store(), jid)
            assert loaded is not None, jid
            out[jid] = (instance, loaded[0])
    return out


@pytest.fixture
def rq_logs(caplog, monkeypatch):
    """caplog sees RQ's records even after an earlier worker in this session turned their propagation off."""
    for name in ("rq", "rq.worker", "rq.job", "rq.queue"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    caplog.set_level(logging.INFO)
    return caplog


def test_corrupt_jobs_through_a_real_worker_fail_alone_and_tell_their_member(tiny_env, rconn, pipeline, rq_logs):
    samples: list[object] = []

    @settings(FUZZ, max_examples=40, phases=[Phase.generate])
    @given(worker_payload)
    def collect(payload):
        payload = _own_id(payload, PLACEHOLDER_ID)
        try:
            parse_job(payload)
        except JobError:
            samples.append(payload)

    collect()
    samples = samples[:25]
    assert len(samples) >= 15, len(samples)
    queue = DreamQueue(rconn, get_settings())
    rq_queue = queue.queues["default"]
    corrupt = {}
    for i, payload in enumerate(samples):
        jid = f"c0{i:014x}"
        corrupt[jid] = _own_id(payload, jid)
        rq_queue.enqueue("worker.tasks.run_dream", corrupt[jid], job_id=jid)
    good = valid_job(job_id="600d000000000000", token="aW50ZXJhY3Rpb246Z29vZA")
    queue.enqueue(good)

    worker = _run_worker(rconn, pipeline)

    published = _published(rconn)
    instance, result = published.pop(good.job_id)
    assert result.status == "done" and len(result.images) == 1 and instance == "bot1"
    failed = set(rq_queue.failed_job_registry.get_job_ids())
    told = 0
    for jid, payload in corrupt.items():
        assert jid in failed, f"corrupt job {jid} did not fail: {payload!r:.200}"
        origin = origin_of(payload)
        if origin is None:
            assert jid not in published  # nobody to tell; RQ's failed registry keeps it
            continue
        instance, result = published.pop(jid)
        assert instance == origin.instance and result.origin == origin and result.status == "failed"
        assert result.error.startswith("this request could not be read (") and len(result.error) > 40
        told += 1
    assert not published, f"results nobody asked for: {sorted(published)}"
    assert worker.get_state() != "busy" and queue.waiting() == 0

    # No exception in the logs but RQ's one record per refused job.
    unexpected, seen = [], Counter()
    for rec in exception_records(rq_logs.records):
        jid = expected_rq_failure(rec, set(corrupt))
        if jid is None:
            unexpected.append(f"{rec.name} {rec.levelname}: {rec.getMessage()[-600:]}")
        else:
            seen[jid] += 1
    assert not unexpected, "\n\n".join(unexpected)
    assert set(seen) == set(corrupt) and max(seen.values()) == 1
    assert not [r for r in rq_logs.records if r.name.startswith("dreambot") and r.levelno >= logging.ERROR]
    print(f"\nfuzz worker: {len(corrupt)} corrupt payloads + 1 good job through a real worker; "
          f"{len(corrupt)} failed alone, {told} members told why, good job done")


def test_a_job_id_inside_a_corrupt_payload_is_not_trusted(tiny_env, rconn, pipeline, rq_logs):
    queue = DreamQueue(rconn, get_settings())
    good = valid_job(job_id="600d000000000001")
    bogus_ids = ["0", "0", "a\ud800b", good.job_id]
    corrupt = {}
    for i, bogus in enumerate(bogus_ids):
        jid = f"bad{i:013x}"
        doc = valid_job(job_id=jid).to_dict()
        doc["origin"]["user_id"] = 100 + i
        doc["request"]["count"] = 99
        corrupt[jid] = dict(doc, job_id=bogus)
        queue.queues["default"].enqueue("worker.tasks.run_dream", corrupt[jid], job_id=jid)
    queue.enqueue(good)
    _run_worker(rconn, pipeline)
    published = _published(rconn)
    assert published.pop(good.job_id)[1].status == "done", "the good job was skipped"
    for jid in corrupt:
        result = published.pop(jid)[1]
        assert "could not be read" in result.error, result.error
    assert not published, sorted(published)
    assert all(expected_rq_failure(r, set(corrupt)) for r in exception_records(rq_logs.records))


# --- /dream options through a real bot process on the Discord stand-in ---------------------------------------

from tests.support.fleet import Fleet, final_answer  # noqa: E402
from tests.support.standin import DiscordStandIn  # noqa: E402

STYLES = list(load_styles())


@pytest.fixture(scope="module")
def dream_bot(redis_server, tmp_path_factory):
    """One stand-in and one real bot process for the module. No worker: jobs just wait in the queue."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    tmp = tmp_path_factory.mktemp("fuzz-bot")
    standin = DiscordStandIn().start()
    fleet = Fleet(standin, redis_server.url, tmp / "no-model", tmp)
    try:
        fleet.setup(1)
        bot = fleet.bots[0]
        # Quotas out of the way, so more of the fuzzed dreams get as far as the queue.
        fleet.start_bot(bot, DREAMBOT_LIMIT_USER_IMAGES_HOUR="1000", DREAMBOT_LIMIT_USER_IMAGES_DAY="5000",
                        DREAMBOT_LIMIT_GUILD_IMAGES_HOUR="5000", DREAMBOT_LIMIT_GUILD_IMAGES_DAY="20000",
                        DREAMBOT_LIMIT_GUILD_MAX_QUEUED="1000", DREAMBOT_LIMIT_MAX_STEPS="100")
        fleet.wait_bots_ready()
        yield SimpleNamespace(fleet=fleet, standin=standin, bot=bot)
    finally:
        fleet.stop()
        standin.stop()


def _typed(good: st.SearchStrategy, *junk: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly values of the option's type (in range or out), sometimes anything at all."""
    return st.one_of(good, good, good, *junk, json_leaf)


# What Discord's client lets through (right types, in range, a listed choice) with the nastiest content it
# allows: zero-width-only prompts, control characters, 1500 characters, the edges of each range.
discord_text = st.one_of(fuzz_text, special_text, long_text).map(lambda t: t[:1500])
allowed_options = st.fixed_dictionaries(
    {"prompt": discord_text.filter(bool)},
    optional={
        "negative": discord_text,
        "style": st.sampled_from(STYLES),
        "aspect": st.sampled_from(list(ASPECTS)),
        "seed": st.one_of(st.integers(0, MAX_SEED), st.sampled_from([0, MAX_SEED])),
        "count": st.integers(1, 4),
        "steps": st.integers(1, 100),
        "guidance": st.one_of(st.floats(0, 30), st.sampled_from([0.0, 30.0])),
        "split": st.one_of(st.floats(0.5, 1.0), st.sampled_from([0.5, 1.0])),
    },
)
# Anything at all, as a crafted client could send it: Discord's checks (the stand-in's send_slash) refuse most.
any_options = st.fixed_dictionaries(
    {"prompt": _typed(st.one_of(fuzz_text, long_text))},
    optional={
        "negative": _typed(fuzz_text),
        "style": _typed(st.sampled_from(STYLES), fuzz_text),
        "aspect": _typed(st.sampled_from(list(ASPECTS)), fuzz_text),
        "seed": _typed(st.integers(0, MAX_SEED), fuzz_int),
        "count": _typed(st.integers(1, 4), fuzz_int),
        "steps": _typed(st.integers(1, 100), fuzz_int),
        "guidance": _typed(st.floats(0, 30), fuzz_float, fuzz_int),
        "split": _typed(st.floats(0.5, 1.0), fuzz_float),
        "bogus": json_leaf,
    },
)
dream_options = st.integers(0, 9).flatmap(lambda i: allowed_options if i < 7 else any_options)


def log_problems(text: str) -> list[str]:
    """Lines of a bot log that show an exception: a record at ERROR or CRITICAL, a record with a traceback
    ("exc"), a record above DEBUG whose text holds a traceback, or any non-JSON line (an uncaught exception
    printed by Python, a library writing to stderr) mentioning Traceback or ERROR. DEBUG records are dumps
    of what Discord sent, so a fuzzed prompt that says "Traceback" is not counted there."""
    bad = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            if "Traceback" in line or "ERROR" in line:
                bad.append(line)
            continue
        if not isinstance(rec, dict):
            continue
        level = rec.get("level")
        if level in ("ERROR", "CRITICAL") or "exc" in rec or (level != "DEBUG" and TRACEBACK in line):
            bad.append(line[:2000])
    return bad


def test_dream_options_fuzz_through_a_real_bot(dream_bot):
    e = dream_bot
    start = e.bot.log.stat().st_size if e.bot.log.exists() else 0
    counts: Counter[str] = Counter()

    @settings(FUZZ, max_examples=40, phases=[Phase.generate])
    @given(dream_options)
    def check(options):
        counts["examples"] += 1
        if any(isinstance(v, float) and not math.isfinite(v) for v in options.values()):
            # JSON has no NaN or infinity: Discord can't send one (the stand-in's encoder would, and discord.py's
            # orjson gateway decoder would rightly choke on it). make_request's refusal of them is tested above.
            counts["refused by Discord"] += 1
            return
        try:
            inter = e.fleet.dream(e.bot, **options)
        except (ValueError, LookupError):
            counts["refused by Discord"] += 1  # the client never sends it: out of range, wrong type, no choice
            return
        body = inter.wait_ack(5)
        assert not inter.late and inter.ack_latency_s < 3.0, inter.ack_latency_s
        content, ephemeral, mentions = final_answer(e.standin, inter, body)
        assert content and len(content) <= 2000
        assert mentions is not None and mentions.get("parse") == [] and not mentions.get("users") \
            and not mentions.get("roles"), mentions
        if content.startswith("Queued: job `"):
            assert not ephemeral
            counts["accepted"] += 1
        else:
            assert ephemeral, f"a refusal shown to everyone: {content[:200]}"
            counts["rejected"] += 1

    check()
    time.sleep(0.5)  # anything the bot logs after its last answer
    log = e.bot.log.read_bytes()[start:].decode("utf-8", "replace")
    problems = log_problems(log)
    print(f"\nfuzz /dream (real bot): {counts['examples']} examples, {counts['accepted']} accepted, "
          f"{counts['rejected']} rejected, {counts['refused by Discord']} refused by Discord's client")
    assert not problems, "\n".join(problems[:10])
    assert "interaction acknowledged" in log
    assert counts["accepted"] + counts["rejected"] >= 5


# Interactions the bot's own command code can't take: Discord registered another version of a command than the
# bot runs (a deploy between two syncs, two instances of one application on different releases), or a crafted
# client. Each is the sender's fault, not ours: one warning line in the log and an answer to the member, no
# traceback (tracebacks are kept for the project's own faults, so those stay visible).
MALFORMED = [
    {"name": "dream", "options": [{"name": "prompt", "type": 3, "value": "a cat"},
                                  {"name": "seed", "type": 4, "value": "not a number"}]},
    {"name": "dream", "options": [{"name": "prompt", "type": 3, "value": "a cat"},
                                  {"name": "count", "type": 10, "value": 2.5}]},
    {"name": "dream", "options": [{"name": "prompt", "type": 3, "value": "a cat"},
                                  {"name": "guidance", "type": 3, "value": "loud"}]},
    {"name": "dream", "options": [{"name": "negative", "type": 3, "value": "no prompt at all"}]},
    {"name": "dream", "options": [{"name": "prompt", "type": 5, "value": True}]},
    {"name": "dreamify", "options": []},
    {"name": "cancel", "options": [{"name": "job", "type": 4, "value": 12}]},
    {"name": "dreamadmin", "options": [{"name": "explode", "type": 1, "options": []}]},
    {"name": "dreamadmin", "options": [{"name": "set", "type": 1, "options": [
        {"name": "key", "type": 4, "value": 7}, {"name": "value", "type": 3, "value": "x"}]}]},
]


def test_malformed_interactions_are_answered_and_logged_as_one_warning_each(dream_bot):
    e = dream_bot
    start = e.bot.log.stat().st_size if e.bot.log.exists() else 0
    answers = []
    for data in MALFORMED:
        inter = e.standin.send_raw_command(e.bot.app.id, e.fleet.guild_id, e.bot.channel_id, e.fleet.user_id, data)
        body = inter.wait_ack(5)
        assert not inter.late
        content, ephemeral, _ = final_answer(e.standin, inter, body)
        assert ephemeral and content, (data, content)
        answers.append(content)
    time.sleep(0.5)
    log = e.bot.log.read_bytes()[start:].decode("utf-8", "replace")
    assert not log_problems(log), "\n".join(log_problems(log)[:5])
    warned = [json.loads(line) for line in log.splitlines()
              if line.startswith("{") and '"malformed interaction refused"' in line]
    assert len(warned) >= len(MALFORMED) - 1, len(warned)  # /dream with a bool prompt may be read as text
    assert all(w["level"] == "WARNING" and "exc" not in w for w in warned)
    assert sum("couldn't read that command" in a for a in answers) >= len(MALFORMED) - 1, answers
