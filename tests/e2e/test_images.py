"""The image store: a folder and real S3 (moto's standalone server over HTTP, spoken to by boto3), retention,
and a store that goes away mid-job: the job fails alone, its member is told, nothing is posted half."""

from __future__ import annotations

import io
import os
import time

import boto3
import pytest
from PIL import Image

from dreamcore import images as images_mod
from dreamcore import keys, results
from dreamcore.images import FolderStore, ImageStoreError, S3Store, open_store
from dreamcore.job import make_job, make_origin, make_request
from dreamcore.localredis import free_port
from dreamcore.queue.rq_queues import DreamQueue
from dreamcore.settings import SettingsError, get_settings, load_settings

BUCKET = "dreams"


def _raw_s3(url):
    """boto3 itself, beside the store: to make buckets and read what the store left."""
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                        aws_secret_access_key="test-secret")


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    _raw_s3(url).create_bucket(Bucket=BUCKET)
    yield server, url
    server.stop()


def _s3(url, **kw) -> S3Store:
    return S3Store(BUCKET, "t/", kw.pop("retention_days", 30), endpoint_url=url, region="us-east-1",
                   access_key_id="test", secret_access_key="test-secret", **kw)


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path):
    if request.param == "folder":
        return FolderStore(tmp_path / "images", 30)
    _, url = request.getfixturevalue("s3_server")
    return _s3(url)


def test_put_get_exists_delete(store):
    key = images_mod.image_key("00112233445566ff", 1, "png")
    assert key == "00112233445566ff/1.png"
    assert store.get(key) is None and not store.exists(key)
    store.put(key, b"\x89PNG fake")
    store.put(key, b"\x89PNG same job, retried")  # a retried job writes again: the last write wins
    assert store.get(key) == b"\x89PNG same job, retried" and store.exists(key)
    store.delete([key, "00112233445566ff/9.png"])  # a missing one is no error
    assert store.get(key) is None


@pytest.mark.parametrize("bad", ["../etc/passwd", "/abs", "a/../../b", "", "a b", "x/" * 6 + "y"])
def test_keys_that_could_escape_are_refused(store, bad):
    with pytest.raises(ValueError, match="not an image store key"):
        store.put(bad, b"x")


def test_past_retention_is_not_kept_even_before_a_sweep(store, monkeypatch):
    key = "aaaaaaaaaaaaaaaa/0.webp"
    store.put(key, b"RIFF")
    later = time.time() + store.retention_s + 60
    monkeypatch.setattr(images_mod.time, "time", lambda: later)
    assert store.get(key) is None and not store.exists(key)


def test_folder_sweep_deletes_only_what_retention_no_longer_keeps(tmp_path):
    store = FolderStore(tmp_path, 2)
    store.put("0000000000000001/0.png", b"old")
    store.put("0000000000000001/params.json", b"{}")
    store.put("0000000000000002/0.png", b"new")
    then = time.time() - 3 * 86400
    for f in (tmp_path / "0000000000000001").iterdir():
        os.utime(f, (then, then))
    (tmp_path / "0000000000000002" / ".tmp-crashed").write_bytes(b"half")
    os.utime(tmp_path / "0000000000000002" / ".tmp-crashed", (time.time() - 7200,) * 2)
    assert store.sweep() == 3
    assert not (tmp_path / "0000000000000001").exists()
    assert store.get("0000000000000002/0.png") == b"new"


def test_folder_store_that_cannot_write_says_where(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    store = FolderStore(tmp_path / "file", 30)  # a file where the folder should be
    with pytest.raises(ImageStoreError, match="can't write 0000000000000001/0.png under"):
        store.put("0000000000000001/0.png", b"x")


def test_s3_lifecycle_rule_is_merged_into_the_buckets_own_rules(s3_server):
    _, url = s3_server
    raw = _raw_s3(url)
    theirs = {"ID": "operators-logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 3}}
    raw.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [theirs]})
    for days in (9, 12):  # set twice: ours is replaced by its ID, never doubled
        assert _s3(url, retention_days=days).set_lifecycle()
    rules = raw.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert sorted((r["Filter"]["Prefix"], r["Expiration"]["Days"]) for r in rules) == [("logs/", 3), ("t/", 12)]


def test_s3_lifecycle_rule_is_refused_for_an_empty_prefix(s3_server, caplog):
    _, url = s3_server
    raw = _raw_s3(url)
    raw.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [
        {"ID": "operators-logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 3}}]})
    store = _s3(url, retention_days=9)
    store.prefix = ""
    assert not store.set_lifecycle()
    assert "expires every object" in caplog.text
    rules = raw.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert [r["ID"] for r in rules] == ["operators-logs"]  # untouched


def test_s3_settings_are_checked_and_secrets_never_echoed(monkeypatch):
    with pytest.raises(SettingsError, match="DREAMBOT_IMAGE_STORE=s3 needs DREAMBOT_S3_BUCKET"):
        load_settings(DREAMBOT_IMAGE_STORE="s3")
    with pytest.raises(SettingsError, match="DREAMBOT_S3_ENDPOINT_URL: .*http"):
        load_settings(DREAMBOT_IMAGE_STORE="s3", DREAMBOT_S3_BUCKET="dreams", DREAMBOT_S3_ENDPOINT_URL="minio:9000")
    with pytest.raises(SettingsError) as info:
        load_settings(DREAMBOT_S3_SECRET_ACCESS_KEY=["not", "a", "string", "hunter2"])
    assert "hunter2" not in str(info.value)
    with pytest.raises(SettingsError, match="set both DREAMBOT_S3_ACCESS_KEY_ID and DREAMBOT_S3_SECRET_ACCESS_KEY"):
        load_settings(DREAMBOT_S3_SECRET_ACCESS_KEY="hunter2")
    s = load_settings(DREAMBOT_IMAGE_STORE="s3", DREAMBOT_S3_BUCKET="dreams", DREAMBOT_S3_ENDPOINT_URL="http://m:9000",
                      DREAMBOT_S3_ACCESS_KEY_ID="id", DREAMBOT_S3_SECRET_ACCESS_KEY="hunter2")
    store = open_store(s)
    assert store.describe() == "s3://dreams/dreambot/ at http://m:9000" and "hunter2" not in repr(vars(s))


# --- a store that goes away mid-job -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    from worker.pipeline import DreamPipeline

    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu")


def _job(user):
    origin = make_origin(instance="bot1", guild_id=1, channel_id=2, user_id=user)
    return make_job(make_request(prompt="a kite", aspect="1:1", steps=2, seed=3, count=2), origin)


def test_s3_store_gone_mid_job_fails_that_job_alone_and_tells_its_member(tiny_env, rconn, pipeline, monkeypatch):
    """Generation runs, then the store is unreachable when the images are written: the member gets a clear
    failure, nothing half-published (no result with images, no image in the store); with the store back, the next job goes through S3 and reads back whole."""
    from moto.server import ThreadedMotoServer

    from worker import publish as tasks
    from worker.runner import make_worker

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {"DREAMBOT_IMAGE_STORE": "s3", "DREAMBOT_S3_BUCKET": BUCKET, "DREAMBOT_S3_ENDPOINT_URL": url,
           "DREAMBOT_S3_REGION": "us-east-1", "DREAMBOT_S3_ACCESS_KEY_ID": "test",
           "DREAMBOT_S3_SECRET_ACCESS_KEY": "test-secret", "DREAMBOT_S3_SET_LIFECYCLE": "on"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    settings = get_settings()
    monkeypatch.setattr(tasks, "STORE_PATIENCE_S", 1.0)
    _raw_s3(url).create_bucket(Bucket=BUCKET)
    store = open_store(settings)
    box = results.Outbox(rconn, "bot1", "test")
    box.ensure_group()
    queue = DreamQueue(rconn, settings)
    worker = make_worker(settings, rconn, pipeline, name="test-worker")  # sets the lifecycle rule

    lost = _job(user=5)
    queue.enqueue(lost)
    original_put = tasks.results.store_images

    def store_goes_away(*args):
        server.stop()  # after generation, before the first image is written
        return original_put(*args)

    monkeypatch.setattr(tasks.results, "store_images", store_goes_away)
    worker.work(burst=True, logging_level="WARNING")
    entries = [e for e in box.read(block_ms=100, count=50) if e.status != "progress"]
    assert [e.job_id for e in entries] == [lost.job_id]
    failed = results.load_meta(rconn, lost.job_id)
    assert failed.status == "failed" and failed.images == []
    assert failed.error == "the image store could not be reached, so nothing was posted; please try again in a minute"
    box.ack(entries[0])

    monkeypatch.setattr(tasks.results, "store_images", original_put)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        _raw_s3(url).create_bucket(Bucket=BUCKET)
        assert store.get(f"{lost.job_id}/0.png") is None and store.get(f"{lost.job_id}/1.png") is None
        ok = _job(user=6)
        queue.enqueue(ok)
        worker.work(burst=True, logging_level="WARNING")
        [entry] = [e for e in box.read(block_ms=100, count=50) if e.status != "progress"]
        result, data = results.load(rconn, store, entry.job_id)
        assert result.status == "done" and [i.key for i in result.images] == [f"{ok.job_id}/0.png",
                                                                               f"{ok.job_id}/1.png"]
        assert [Image.open(io.BytesIO(d)).size for d in data] == [(1024, 1024)] * 2
        assert rconn.hkeys(keys.result_key(ok.job_id)) == [b"meta"]  # no image byte in Redis
        assert store.get(images_mod.params_copy_key(ok.job_id)) is not None  # the buttons' record, beside them
    finally:
        server.stop()
        get_settings.cache_clear()
