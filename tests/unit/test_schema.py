"""Every bound of the job schema, the settings, and garbage payloads."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamcore.job import (
    ASPECTS,
    MAX_SEED,
    JobError,
    clean_text,
    make_job,
    make_origin,
    make_request,
    parse_job,
)
from dreamcore.settings import SettingsError, load_settings


def _origin(**kw):
    return make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=3, **kw)


@pytest.mark.parametrize("field,value,expect", [
    ("count", 0, "count: .*allowed 1 to 4"),
    ("count", 5, "count: .*allowed 1 to 4"),
    ("steps", 0, "steps: .*allowed 1 to 100"),
    ("steps", 101, "steps: .*allowed 1 to 100"),
    ("guidance", -0.1, "guidance: .*allowed 0.0 to 30.0"),
    ("guidance", 30.5, "guidance: .*allowed 0.0 to 30.0"),
    ("split", 0.4, "split: .*allowed 0.5 to 1.0"),
    ("split", 1.01, "split: .*allowed 0.5 to 1.0"),
    ("seed", -1, f"seed: .*allowed 0 to {MAX_SEED}"),
    ("seed", MAX_SEED + 1, f"seed: .*allowed 0 to {MAX_SEED}"),
    ("aspect", "3:1", "aspect: unknown aspect; one of 1:1"),
    ("style", "vaporwave", "style: unknown style; one of none"),
    ("prompt", "x" * 1501, "prompt: .*allowed 1 to 1500 characters"),
    ("negative_prompt", "x" * 1501, "negative_prompt: .*allowed 0 to 1500 characters"),
    ("max_upload_bytes", 10, "max_upload_bytes: .*allowed"),
    ("steps", "many", "steps: .*valid integer"),
])
def test_every_bound_names_its_field(field, value, expect):
    fields = {"prompt": "a lighthouse", field: value}
    with pytest.raises(JobError, match=expect) as info:
        make_request(**fields)
    assert info.value.field == field


def test_empty_after_cleaning_is_refused():
    with pytest.raises(JobError, match="prompt"):
        make_request(prompt="\u200b\u200b\x00 \n")


def test_text_is_cleaned_not_cut():
    req = make_request(prompt="a\u200b cat\x07 on\t a\nmat")
    assert req.prompt == "a cat on a mat"
    assert clean_text("caf\u0065\u0301") == "café"


def test_seed_always_present_and_seeds_per_image():
    req = make_request(prompt="x", count=3)
    assert 0 <= req.seed <= MAX_SEED
    edge = make_request(prompt="x", count=2, seed=MAX_SEED)
    assert edge.seeds == [MAX_SEED, 0]


def test_all_sdxl_sizes():
    assert set(ASPECTS.values()) == {(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216),
                                     (1344, 768), (768, 1344), (1536, 640), (640, 1536)}
    assert make_request(prompt="x", aspect="12:5").size == (1536, 640)


def test_round_trip_and_versions():
    job = make_job(make_request(prompt="x", seed=5), _origin(interaction_token="abc.DEF-123_x"))
    raw = job.to_json()
    assert parse_job(raw) == job
    newer = json.loads(raw) | {"v": 6}
    with pytest.raises(JobError, match="schema version 6; this worker reads versions 1, 2, 3, 4 and 5"):
        parse_job(json.dumps(newer))
    older = {k: v for k, v in json.loads(raw).items() if k != "v"}
    with pytest.raises(JobError, match="schema version None"):
        parse_job(older)


@pytest.mark.parametrize("raw,expect", [
    (b"\xff\xfe", "not UTF-8"),
    ("{", "not JSON"),
    ("[]", "must be a JSON object"),
    ("42", "must be a JSON object"),
    (None, "must be a JSON object"),
    ('{"v": 1}', "job_id: Field required"),
    ('{"v": 1, "job_id": "0123456789abcdef", "request": {"prompt": "x"}, "origin": {}}', "request.seed"),
])
def test_garbage_payloads_fail_with_reason(raw, expect):
    with pytest.raises(JobError, match=expect):
        parse_job(raw)


def test_unknown_fields_rejected():
    job = json.loads(make_job(make_request(prompt="x", seed=1), _origin()).to_json())
    job["request"]["sampler"] = "ddim"
    with pytest.raises(JobError, match="request.sampler: Extra inputs are not permitted"):
        parse_job(job)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["prompt", "negative_prompt", "style", "aspect", "seed", "count", "steps",
                                        "guidance", "split", "bogus"]),
                       st.one_of(st.text(max_size=3000), st.integers(min_value=-2**70, max_value=2**70),
                                 st.floats(allow_nan=True), st.none(), st.booleans(), st.lists(st.integers()))))
def test_fuzzed_options_give_a_job_or_a_clear_error(fields):
    try:
        req = make_request(**fields)
    except JobError as err:
        assert str(err)
        return
    assert 1 <= len(req.prompt) <= 1500 and 1 <= req.count <= 4 and 0 <= req.seed <= MAX_SEED


def test_settings_errors_name_the_variable(monkeypatch):
    monkeypatch.setenv("DREAMBOT_JOB_TIMEOUT", "5")
    monkeypatch.setenv("REDIS_URL", "http://nope")
    monkeypatch.setenv("DISCORD_GUILD_IDS", "123,abc")
    with pytest.raises(SettingsError) as info:
        load_settings()
    msg = str(info.value)
    assert "DREAMBOT_JOB_TIMEOUT" in msg and "REDIS_URL" in msg and "DISCORD_GUILD_IDS" in msg


def test_settings_never_echo_the_token(monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", "x" * 3)
    monkeypatch.setenv("DREAMBOT_INSTANCE", "Bad Name!")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "DREAMBOT_INSTANCE" in str(info.value)
    assert "xxx" not in str(info.value)
