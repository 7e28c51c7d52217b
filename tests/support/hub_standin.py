"""`HubStandIn`: a local Hugging Face Hub (the read-only HTTP API) for tests, on 127.0.0.1 and a free port.

Each folder ``root/<org>/<name>`` is one model repo whose files are served as-is, so the unmodified
``huggingface_hub.snapshot_download`` / ``hf_hub_download`` (checked against huggingface_hub 2.4) can download from
it with no network:

    hub = HubStandIn(tmp_path / "hub").start()
    path = snapshot_download("org/name", endpoint=hub.url, cache_dir=tmp_path / "cache", allow_patterns=["*.json"])
    hub.stop()

What the client needs, and so what is implemented (anything else gets a plain 404):

* ``GET /api/models/<org>/<name>[/revision/<rev>]``: repo info; the client only reads ``sha`` from it.
* ``GET /api/models/<org>/<name>/tree/<rev>[/<path>]?recursive=&expand=``: the file listing, paginated like the
  Hub with a ``Link: <...&cursor=N>; rel="next"`` header (see ``tree_page_size``).
* ``HEAD|GET /<org>/<name>/resolve/<rev>/<path>``: the file. The HEAD answer is where the client takes the commit
  (``X-Repo-Commit``), the cache key (``ETag``) and the expected size (``Content-Length``) from; GET honours ``Range``.

Every file is served the way the Hub serves a small, non-LFS file: ``ETag`` is the quoted git blob sha1, with no
redirect and no ``X-Linked-*`` headers. No ``X-Xet-*`` header or ``xetHash`` field is ever sent, because their
presence is what switches the client (``hf_xet`` is installed) to Xet storage instead of plain HTTP with ``Range``.

Errors carry the Hub's ``X-Error-Code`` header, which is what ``hf_raise_for_status`` maps to exception classes:
``RepoNotFound`` -> ``RepositoryNotFoundError``, ``RevisionNotFound`` -> ``RevisionNotFoundError``, ``EntryNotFound``
-> ``RemoteEntryNotFoundError`` (an ``EntryNotFoundError``), ``GatedRepo`` -> ``GatedRepoError``.

Revisions: ``main`` and the repo's current commit sha. The sha is a digest of the file names, sizes and mtimes, so
changing a file makes a new commit and an older sha becomes a missing revision.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

__all__ = ["HubStandIn", "allow_hub_client"]

# Headers worth asserting on in tests; recording everything would mostly be httpx boilerplate.
_RECORDED_HEADERS = ("Authorization", "Range", "User-Agent")
_SEND_CHUNK = 1 << 20


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: HubStandIn


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so httpx keeps connections alive across HEAD and GET, as it does with the real Hub.
    protocol_version = "HTTP/1.1"
    server_version = "HubStandIn/1.0"
    # Bounds how long a handler thread waits on an idle keep-alive connection.
    timeout = 30
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.standin._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the client dropped the connection first; nothing is left to flush
        finally:
            self.server.standin._track(self.connection, add=False)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        try:
            self.server.standin._handle(self, method)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HubStandIn:
    #: Entries per tree page; the Hub uses 1000. Lower it in a test to make the client follow ``Link`` headers.
    tree_page_size: int = 1000

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        #: When set, a request without ``Authorization: Bearer <token>`` gets 401 (GatedRepo when the header is
        #: missing, "Invalid credentials" when it is wrong), as the Hub answers for a gated repo.
        self.require_token: str | None = None
        #: ``(method, unquoted path without query, {header: value})`` for every request, in arrival order.
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.url = ""
        self._lock = threading.Lock()
        self._cuts: list[list[Any]] = []  # [suffix, nbytes, times_left], consumed in the order they were added
        self._oids: dict[tuple[str, int, int], str] = {}
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> HubStandIn:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.standin = self
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        # A short poll interval because stop() waits for serve_forever to notice the shutdown request.
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hub-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        # huggingface_hub keeps one process-wide httpx client whose pooled keep-alive connections would otherwise
        # hold handler threads (and sockets) open after the test that started this stand-in is over.
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- test controls -------------------------------------------------------------------------------------

    def cut_after(self, filename_suffix: str, nbytes: int, times: int = 1) -> None:
        """The next `times` GETs of a file whose path (`org/name/path/in/repo`) ends with `filename_suffix`, so
        either a file name or one repo's file, send the headers (with the
        full Content-Length) and `nbytes` of body, then drop the connection. `nbytes` counts from the start of
        that response's body, so it applies to ranged retries too; with `nbytes=0` a retry makes no progress."""
        with self._lock:
            self._cuts.append([filename_suffix, nbytes, times])

    # ---- request handling ----------------------------------------------------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _handle(self, h: _Handler, method: str) -> None:
        split = urlsplit(h.path)
        recorded = {k: v for k in _RECORDED_HEADERS if (v := h.headers.get(k)) is not None}
        with self._lock:
            self.requests.append((method, unquote(split.path), recorded))

        if self.require_token is not None:
            auth = h.headers.get("Authorization")
            if auth is None:
                self._error(h, method, 401, "GatedRepo",
                            "Access to this repo is restricted. You must be authenticated to access it.")
                return
            if auth != f"Bearer {self.require_token}":
                # The Hub's wording: hf_raise_for_status special-cases it (plain HfHubHTTPError, not RepoNotFound).
                self._error(h, method, 401, None, "Invalid credentials in Authorization header")
                return

        # Split before unquoting: the client quotes a revision with safe="" (refs/pr/1 -> refs%2Fpr%2F1) but a
        # file path with its slashes kept.
        parts = [unquote(p) for p in split.path.split("/")[1:]]
        if len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
            org, name, rest = parts[2], parts[3], parts[4:]
            if method == "GET" and not rest:
                self._repo_info(h, org, name, "main", parse_qs(split.query))
                return
            if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                self._repo_info(h, org, name, rest[1], parse_qs(split.query))
                return
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                self._tree(h, org, name, rest[1], "/".join(rest[2:]), parse_qs(split.query))
                return
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(h, method, parts[0], parts[1], parts[3], "/".join(parts[4:]))
            return
        self._error(h, method, 404, None, "Not Found")

    def _repo(self, h: _Handler, method: str, org: str, name: str,
              revision: str) -> tuple[str, dict[str, Path]] | None:
        """(commit sha, {repo path: file}) of an existing repo at a served revision, or None once a 404 is sent."""
        repo_dir = self.root / org / name
        if not _safe_segment(org) or not _safe_segment(name) or not repo_dir.is_dir():
            self._error(h, method, 404, "RepoNotFound", "Repository not found")
            return None
        files = {p.relative_to(repo_dir).as_posix(): p for p in sorted(repo_dir.rglob("*")) if p.is_file()}
        digest = hashlib.sha1(b"hub-standin commit\n")
        for rel, p in files.items():
            st = p.stat()
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        sha = digest.hexdigest()
        if revision not in ("main", sha):
            self._error(h, method, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return sha, files

    def _repo_info(self, h: _Handler, org: str, name: str, revision: str, query: dict[str, list[str]]) -> None:
        repo = self._repo(h, "GET", org, name, revision)
        if repo is None:
            return
        sha, files = repo
        repo_id = f"{org}/{name}"
        mtime = max((p.stat().st_mtime for p in files.values()), default=time.time())
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(mtime))
        with_blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for rel, p in files.items():
            sibling: dict[str, Any] = {"rfilename": rel}
            if with_blobs:
                sibling.update(size=p.stat().st_size, blobId=self._oid(p))
            siblings.append(sibling)
        self._json(h, {
            "_id": sha[:24], "id": repo_id, "modelId": repo_id, "author": org, "sha": sha,
            "lastModified": stamp, "createdAt": stamp, "private": False, "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "usedStorage": sum(p.stat().st_size for p in files.values()),
        })

    def _tree(self, h: _Handler, org: str, name: str, revision: str, sub: str,
              query: dict[str, list[str]]) -> None:
        repo = self._repo(h, "GET", org, name, revision)
        if repo is None:
            return
        sha, files = repo
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{sub}/" if sub else ""
        under = {rel: p for rel, p in files.items() if rel.startswith(prefix)}
        if sub and not under:
            self._error(h, "GET", 404, "EntryNotFound", f"{sub} does not exist on {revision}", commit=sha)
            return
        entries: dict[str, dict[str, Any]] = {}
        for rel, p in under.items():
            tail = rel[len(prefix):].split("/")
            # Every folder between `sub` and the file is an entry of its own, as on the Hub.
            for depth in range(1, len(tail)):
                folder = prefix + "/".join(tail[:depth])
                if folder not in entries and (recursive or depth == 1):
                    entries[folder] = {"type": "directory", "oid": _folder_oid(folder, files), "size": 0,
                                       "path": folder}
            if recursive or len(tail) == 1:
                entries[rel] = {"type": "file", "oid": self._oid(p), "size": p.stat().st_size, "path": rel}
        listing = [entries[k] for k in sorted(entries)]

        start = int(query.get("cursor", ["0"])[0] or 0)
        page = listing[start:start + self.tree_page_size]
        extra = {}
        end = start + len(page)
        if end < len(listing):
            # The client follows this absolute URL as-is, so it is built from the Host the client used.
            next_query = {k: v[0] for k, v in query.items() if k != "cursor"} | {"cursor": str(end)}
            base = f"http://{h.headers.get('Host') or self.url.removeprefix('http://')}"
            next_url = f"{base}{quote(urlsplit(h.path).path)}?{urlencode(next_query)}"
            extra["Link"] = f'<{next_url}>; rel="next"'
        self._json(h, page, extra)

    def _resolve(self, h: _Handler, method: str, org: str, name: str, revision: str, rel: str) -> None:
        repo = self._repo(h, method, org, name, revision)
        if repo is None:
            return
        sha, files = repo
        path = files.get(rel)
        if path is None:
            # X-Repo-Commit on the 404 is what lets the client cache the miss under .no_exist/<sha>/.
            self._error(h, method, 404, "EntryNotFound", f"{rel} does not exist on {revision}", commit=sha)
            return
        size = path.stat().st_size
        span = range(0, size)
        status = 200
        if (header := h.headers.get("Range")) is not None and (asked := _parse_range(header, size)) is not None:
            if not asked:
                self._error(h, method, 416, None, "Requested Range Not Satisfiable",
                            extra={"Content-Range": f"bytes */{size}"})
                return
            span, status = asked, 206
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(span)))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{self._oid(path)}"')
        h.send_header("X-Repo-Commit", sha)
        h.send_header("Content-Disposition", f"inline; filename*=UTF-8''{quote(rel.rsplit('/', 1)[-1])}")
        if status == 206:
            h.send_header("Content-Range", f"bytes {span.start}-{span.stop - 1}/{size}")
        h.end_headers()
        if method == "HEAD":
            return

        cut = self._take_cut(f"{org}/{name}/{rel}")
        remaining = len(span) if cut is None else min(cut, len(span))
        with open(path, "rb") as f:
            f.seek(span.start)
            while remaining > 0:
                chunk = f.read(min(_SEND_CHUNK, remaining))
                if not chunk:
                    break
                h.wfile.write(chunk)
                remaining -= len(chunk)
        if cut is not None:
            # Closing with the promised Content-Length unmet is what httpx reports as RemoteProtocolError,
            # the error huggingface_hub's http_get answers with a ranged retry.
            h.wfile.flush()
            h.close_connection = True

    def _take_cut(self, rel: str) -> int | None:
        with self._lock:
            for rule in self._cuts:
                if rule[2] > 0 and rel.endswith(rule[0]):
                    rule[2] -= 1
                    return int(rule[1])
        return None

    def _oid(self, path: Path) -> str:
        """Git blob sha1, the Hub's ETag and tree ``oid`` for a non-LFS file; cached while the file is unchanged."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._oids:
                return self._oids[key]
        digest = hashlib.sha1(f"blob {st.st_size}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(_SEND_CHUNK):
                digest.update(chunk)
        oid = digest.hexdigest()
        with self._lock:
            self._oids[key] = oid
        return oid

    # ---- responses -----------------------------------------------------------------------------------------

    def _json(self, h: _Handler, body: Any, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _error(self, h: _Handler, method: str, status: int, code: str | None, message: str, *,
               commit: str | None = None, extra: dict[str, str] | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        if code is not None:
            h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        if commit is not None:
            h.send_header("X-Repo-Commit", commit)
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(data)


def _safe_segment(segment: str) -> bool:
    return bool(segment) and segment not in (".", "..") and "/" not in segment and os.sep not in segment


def _folder_oid(folder: str, files: dict[str, Path]) -> str:
    # Only needs to be stable and distinct per folder: the client keeps folders out of what it downloads.
    return hashlib.sha1(f"tree {folder}\0{sorted(r for r in files if r.startswith(folder + '/'))}".encode()).hexdigest()


def _parse_range(value: str, size: int) -> range | None:
    """The byte span a single-range ``Range`` header asks for; an empty range when it cannot be satisfied, None
    when the header is malformed or multi-range (a server may then ignore it and send the whole file)."""
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first.strip():
            suffix = int(last)
            return range(max(size - suffix, 0), size) if suffix > 0 else range(0)
        start = int(first)
        stop = min(int(last) + 1, size) if last.strip() else size
    except ValueError:
        return None
    return range(start, stop) if start < stop else range(0)


def allow_hub_client(monkeypatch: Any) -> None:
    """Let huggingface_hub in this process reach a stand-in, whatever the environment says.

    huggingface_hub reads HF_HUB_OFFLINE, HF_HUB_DISABLE_TELEMETRY and the token file path once, at import, into
    `huggingface_hub.constants` (and `is_offline_mode()` returns that copy), so unsetting the variables is not
    enough once it is imported: the module attributes are patched too. Telemetry must be off because with it on,
    building the User-Agent looks up an "AI agent" registry at the real huggingface.co. Tokens from the
    environment and from ~/.cache/huggingface are hidden so a test sends exactly the token it passes.
    """
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", os.path.join(os.sep, "nonexistent-hub-standin", "token"))
