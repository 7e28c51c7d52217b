"""The real huggingface_hub client against `HubStandIn` (tests/support/hub_standin.py): downloads, dry runs, an interrupted
download, tokens and the Hub's error mapping, all on loopback."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
from huggingface_hub import file_download, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    DryRunError,
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.support.hub_standin import HubStandIn, allow_hub_client

REPO_ID = "acme/tiny-sdxl"
MIB = 1024 * 1024
# http_get buffers the body into chunks of this size before writing any of it (httpx iter_bytes(chunk_size)),
# so only a cut past this many bytes leaves something to resume from.
CLIENT_CHUNK = file_download.constants.DOWNLOAD_CHUNK_SIZE

ALLOWED = ["model_index.json", "unet/*"]
REPO_FILES = {
    "model_index.json": b'{"_class_name": "StableDiffusionXLPipeline"}\n',
    "README.md": b"# tiny\n",
    "unet/config.json": b'{"sample_size": 8}\n',
    "unet/diffusion_pytorch_model.safetensors": os.urandom(3 * MIB + 123),
    "text_encoder/model.safetensors": os.urandom(4096),
}
ALLOWED_FILES = {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "hub" / REPO_ID
    for rel, data in REPO_FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)
    return repo


@pytest.fixture
def hub(repo: Path, monkeypatch: pytest.MonkeyPatch):
    allow_hub_client(monkeypatch)
    standin = HubStandIn(repo.parent.parent).start()
    yield standin
    standin.stop()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def blobs_dir(cache: Path) -> Path:
    return cache / f"models--{REPO_ID.replace('/', '--')}" / "blobs"


def file_gets(hub: HubStandIn, suffix: str) -> list[dict[str, str]]:
    return [h for m, p, h in hub.requests if m == "GET" and "/resolve/" in p and p.endswith(suffix)]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_snapshot_download_with_allow_patterns(hub, cache):
    snap = Path(snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache, allow_patterns=ALLOWED))

    got = {p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()}
    assert got == ALLOWED_FILES
    for rel in ALLOWED_FILES:
        assert (snap / rel).read_bytes() == REPO_FILES[rel]
    # Blobs named by the git sha1 ETag show the plain HTTP path ran; a Xet download would not use the ETag served.
    assert {p.name for p in blobs_dir(cache).iterdir()} == {git_blob_sha1(REPO_FILES[r]) for r in ALLOWED_FILES}
    paths = [p for _, p, _ in hub.requests]
    assert f"/api/models/{REPO_ID}/revision/main" in paths
    assert any(p.startswith(f"/api/models/{REPO_ID}/tree/") for p in paths)
    assert not any("xet" in p.lower() for p in paths)


def test_dry_run_lists_allowed_files_then_reports_them_cached(hub, cache):
    before = snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache, allow_patterns=ALLOWED, dry_run=True)
    assert {i.filename: i.file_size for i in before} == {r: len(REPO_FILES[r]) for r in ALLOWED_FILES}
    assert all(i.will_download and not i.is_cached for i in before)
    assert not blobs_dir(cache).exists()

    snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache, allow_patterns=ALLOWED)

    after = snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache, allow_patterns=ALLOWED, dry_run=True)
    assert {i.filename: i.file_size for i in after} == {r: len(REPO_FILES[r]) for r in ALLOWED_FILES}
    assert all(i.is_cached and not i.will_download for i in after)
    assert len({i.commit_hash for i in before + after}) == 1


def test_cut_download_resumes_with_a_range_request(hub, repo, cache):
    big = os.urandom(CLIENT_CHUNK + 2 * MIB)
    (repo / "big.bin").write_bytes(big)
    hub.cut_after("big.bin", CLIENT_CHUNK + MIB)

    snap = Path(snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache, allow_patterns=["big.bin"]))

    assert (snap / "big.bin").read_bytes() == big
    gets = file_gets(hub, "big.bin")
    assert [g.get("Range") for g in gets] == [None, f"bytes={CLIENT_CHUNK}-"]


def test_cut_inside_the_first_client_chunk_restarts_from_zero(hub, cache):
    # The 3 MiB file fits in one client chunk, so nothing reached the disk and the retry asks for the whole file.
    rel = "unet/diffusion_pytorch_model.safetensors"
    hub.cut_after(rel, 2 * MIB)

    snap = Path(snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache, allow_patterns=[rel]))

    assert (snap / rel).read_bytes() == REPO_FILES[rel]
    assert [g.get("Range") for g in file_gets(hub, rel)] == [None, None]


def test_cut_until_retries_run_out_raises_and_the_next_call_starts_over(hub, repo, cache, monkeypatch):
    # http_get sleeps 1 s before each retry; only the wait goes, the retry logic is the client's own.
    monkeypatch.setattr(file_download, "time", SimpleNamespace(sleep=lambda _s: None))
    big = os.urandom(CLIENT_CHUNK + 2 * MIB)
    (repo / "big.bin").write_bytes(big)
    hub.cut_after("big.bin", CLIENT_CHUNK + MIB)
    # http_get gives up after 5 retries in a row that receive nothing.
    hub.cut_after("big.bin", 0, times=5)

    with pytest.raises(httpx2.RemoteProtocolError):
        snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache, allow_patterns=["big.bin"])

    assert [g.get("Range") for g in file_gets(hub, "big.bin")] == [None] + [f"bytes={CLIENT_CHUNK}-"] * 5
    # huggingface_hub 2.4 downloads into a per-call <etag>.<random>.incomplete file and deletes it when the call
    # fails, so nothing is kept for a later call to resume from.
    assert list(blobs_dir(cache).iterdir()) == []

    snap = Path(snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache, allow_patterns=["big.bin"]))

    assert (snap / "big.bin").read_bytes() == big
    assert file_gets(hub, "big.bin")[-1].get("Range") is None
    assert [p.name for p in blobs_dir(cache).iterdir()] == [git_blob_sha1(big)]


def test_require_token(hub, cache, monkeypatch):
    hub.require_token = "hf_standin_token"

    with pytest.raises(GatedRepoError) as missing:
        snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache, allow_patterns=ALLOWED)
    assert missing.value.response.status_code == 401
    with pytest.raises(DryRunError):
        snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache, allow_patterns=ALLOWED, dry_run=True)
    with pytest.raises(HfHubHTTPError) as wrong:
        snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache, allow_patterns=ALLOWED, token="hf_wrong")
    assert wrong.value.response.status_code == 401
    assert not isinstance(wrong.value, RepositoryNotFoundError)
    assert all("Authorization" not in h for _, _, h in hub.requests[:2])

    del hub.requests[:]
    snap = Path(snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache, allow_patterns=ALLOWED,
                                  token="hf_standin_token"))
    assert (snap / "unet/config.json").read_bytes() == REPO_FILES["unet/config.json"]
    assert hub.requests and all(h.get("Authorization") == "Bearer hf_standin_token" for _, _, h in hub.requests)

    # HF_TOKEN is read at call time, unlike most huggingface_hub settings.
    monkeypatch.setenv("HF_TOKEN", "hf_standin_token")
    path = hf_hub_download(REPO_ID, "README.md", endpoint=hub.url, cache_dir=cache)
    assert Path(path).read_bytes() == REPO_FILES["README.md"]
    assert hub.requests[-1][2].get("Authorization") == "Bearer hf_standin_token"


def test_hf_hub_download_and_hub_errors(hub, cache):
    path = hf_hub_download(REPO_ID, "config.json", subfolder="unet", endpoint=hub.url, cache_dir=cache)
    assert Path(path).read_bytes() == REPO_FILES["unet/config.json"]

    with pytest.raises(RemoteEntryNotFoundError) as entry:
        hf_hub_download(REPO_ID, "unet/missing.bin", endpoint=hub.url, cache_dir=cache)
    assert isinstance(entry.value, EntryNotFoundError)
    # The commit on the 404 lets the client remember the miss.
    assert list((cache / f"models--{REPO_ID.replace('/', '--')}" / ".no_exist").rglob("missing.bin"))
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/nope", "model_index.json", endpoint=hub.url, cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO_ID, "model_index.json", revision="v9", endpoint=hub.url, cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("acme/nope", endpoint=hub.url, cache_dir=cache)


def test_tree_pagination_is_followed(hub, cache):
    hub.tree_page_size = 2

    snap = Path(snapshot_download(REPO_ID, endpoint=hub.url, cache_dir=cache))

    assert {p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()} == set(REPO_FILES)
    # 5 files and 2 folders in pages of 2.
    assert len([p for m, p, _ in hub.requests if "/tree/" in p]) == 4


def test_range_answers(hub):
    url = f"{hub.url}/{REPO_ID}/resolve/main/README.md"
    data = REPO_FILES["README.md"]

    def get(range_header: str) -> tuple[int, bytes, str | None]:
        req = urllib.request.Request(url, headers={"Range": range_header})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read(), r.headers.get("Content-Range")
        except urllib.error.HTTPError as e:
            return e.code, b"", e.headers.get("Content-Range")

    assert get("bytes=2-4") == (206, data[2:5], f"bytes 2-4/{len(data)}")
    assert get("bytes=3-") == (206, data[3:], f"bytes 3-{len(data) - 1}/{len(data)}")
    assert get("bytes=-2") == (206, data[-2:], f"bytes {len(data) - 2}-{len(data) - 1}/{len(data)}")
    assert get(f"bytes={len(data)}-") == (416, b"", f"bytes */{len(data)}")
    assert get("bytes=0-1,3-4") == (200, data, None)
