"""Prometheus metrics and the health endpoint of bots and workers (no torch, no discord.py).

Each process serves both on one port (DREAMBOT_METRICS_PORT, 0 = off): `/healthz` answers 200 "ok" or
503 naming the failing checks, and every other path answers prometheus_client's own exposition
(`make_wsgi_app`: text or OpenMetrics, gzip, `name[]=` filters). One small WSGI dispatcher rather than
prometheus_client's `start_http_server`, because that server has no hook for a second route, and a
second port per process would be one more setting, one more thing to publish and scrape.

Series (one registry, the default one, so process_* and python_* come along):

- dreambot_ack_seconds                      histogram: /dream arriving -> Discord's first answer (bot)
- dreambot_queue_depth{queue}               gauge: LLEN of each RQ queue, read at scrape time (any process)
- dreambot_redis_up                         gauge: 1 when that scrape-time read reached Redis
- dreambot_stage_seconds{stage}             histogram, once per image: encode, base, refiner, decode, faces, png, total
- dreambot_batch_images                     histogram: images per denoising batch of several jobs (worker)
- dreambot_batch_jobs                       histogram: jobs per such batch (worker)
- dreambot_jobs_total{outcome}              done, failed, cancelled (worker)
- dreambot_jobs_failed_total{reason}        FAIL_REASONS below; cancelled jobs included (worker)
- dreambot_deliveries_total{where}          interaction, interaction-ephemeral, channel, undeliverable,
                                            gave_up, expired (bot)
- dreambot_delivery_retries_total           posts tried again after a 5xx, a network error or a failure (bot)
- dreambot_limits_refused_total{kind}       the limit kind (dreamcore/limits.py Kind), busy, unavailable (bot)

Label values are always from small fixed sets: anything else is folded into "internal" / "other".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import REGISTRY, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from .queue import fair_order
from .queue.rq_queues import queue_names

log = logging.getLogger("dreambot.metrics")

# ----------------------------------------------------------------------------------------------------
# The series

ACK_SECONDS = Histogram(
    "dreambot_ack_seconds",
    "Seconds from a /dream interaction reaching the bot to its first answer (reply or defer); Discord allows 3",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0),
)
STAGES = ("encode", "base", "refiner", "decode", "faces", "safety", "png", "total")
STAGE_SECONDS = Histogram(
    "dreambot_stage_seconds",
    "Seconds per image spent in each stage of a dream job (the job's stage time over its image count)",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640),
)
BATCH_IMAGES = Histogram("dreambot_batch_images", "Images in one denoising batch of several dream jobs",
                         buckets=(2, 3, 4, 6, 8, 12, 16, 24, 32))
BATCH_JOBS = Histogram("dreambot_batch_jobs", "Dream jobs sharing one denoising batch",
                       buckets=(2, 3, 4, 6, 8, 12, 16, 24, 32))
ADAPTER_SWITCHES = Counter("dreambot_adapter_switches_total",
                           "Times a worker turned a LoRA adapter on or off on its base UNet (worker/adapters.py: "
                           "two per turbo call)", ["adapter"])
OUTCOMES = ("done", "failed", "cancelled")
JOBS = Counter("dreambot_jobs_total", "Dream jobs a worker finished, by outcome", ["outcome"])
FAIL_REASONS = ("bad_input", "prompt_too_long", "nan", "oom", "timeout", "cancelled", "crashed",
                "channel_gone", "store", "safety", "internal")
JOBS_FAILED = Counter("dreambot_jobs_failed_total", "Dream jobs that ended without images, by reason", ["reason"])
DELIVERY_WHERE = ("interaction", "interaction-ephemeral", "channel", "undeliverable", "gave_up", "expired",
                  "forged")
DELIVERIES = Counter("dreambot_deliveries_total", "Results a bot finished with, by where they went", ["where"])
DELIVERY_RETRIES = Counter("dreambot_delivery_retries_total", "Result posts tried again after a failure")
LIMITS_REFUSED = Counter("dreambot_limits_refused_total", "/dream requests refused, by the limit that refused",
                         ["kind"])
IMAGES_FLAGGED = Counter("dreambot_images_flagged_total",
                         "Images the output classifier flagged, by guild and what became of them "
                         "(withheld, spoilered, shown_age_restricted)", ["guild", "action"])
REFUSAL_KINDS = ("paused", "channel", "blocked_word", "adult_word", "max_images", "max_steps", "cooldown", "user_active",
                 "user_hour", "user_day", "guild_hour", "guild_day", "guild_queued", "busy", "unavailable",
                 "unconfirmed", "dm")


def image_flagged(guild_id: int | None, action: str, n: int = 1) -> None:
    IMAGES_FLAGGED.labels(str(guild_id or "dm"), action).inc(n)


def observe_ack(seconds: float) -> None:
    ACK_SECONDS.observe(seconds)


def observe_stages(timings: Mapping[str, float], images: int, refiner_ran: bool = True) -> None:
    """One observation per image of each stage's time per image (`timings` as the worker keeps them:
    encode_s, base_s, ...), so sum/count is seconds per image and count is images made."""
    n = max(1, images)
    for stage in STAGES:
        seconds = timings.get(f"{stage}_s")
        if seconds is None or (stage == "refiner" and not refiner_ran):
            continue
        child = STAGE_SECONDS.labels(stage)
        for _ in range(n):
            child.observe(seconds / n)


def batch_ran(jobs: int, images: int) -> None:
    BATCH_JOBS.observe(jobs)
    BATCH_IMAGES.observe(images)


def job_done() -> None:
    JOBS.labels("done").inc()


def job_failed(reason: str) -> None:
    reason = reason if reason in FAIL_REASONS else "internal"
    JOBS.labels("cancelled" if reason == "cancelled" else "failed").inc()
    JOBS_FAILED.labels(reason).inc()


def delivered(where: str) -> None:
    if where.startswith("undeliverable"):
        where = "undeliverable"
    elif where.startswith("gave up"):
        where = "gave_up"
    DELIVERIES.labels(where if where in DELIVERY_WHERE else "other").inc()


def delivery_retry() -> None:
    DELIVERY_RETRIES.inc()


def refused(kind: str | None) -> None:
    LIMITS_REFUSED.labels(kind if kind in REFUSAL_KINDS else "other").inc()


def _preset(role: str) -> None:
    """Create each known label at 0, so rates and alerts see the series before the first event."""
    if role == "worker":
        for o in OUTCOMES:
            JOBS.labels(o)
        for r in FAIL_REASONS:
            JOBS_FAILED.labels(r)
    elif role == "bot":
        for w in DELIVERY_WHERE:
            DELIVERIES.labels(w)
        for k in REFUSAL_KINDS:
            LIMITS_REFUSED.labels(k)


# ----------------------------------------------------------------------------------------------------
# Queue depth, read at scrape time


def _quick_redis(target, timeout_s: float) -> redis.Redis:
    """A client that fails fast: no retries, short timeouts (a scrape or a probe must never hang).
    `target`: a redis:// URL, or the settings (then Sentinel too, through dreamcore.redisconn)."""
    if isinstance(target, str):
        return redis.Redis.from_url(target, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                    retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
    from .redisconn import connect

    return connect(target, timeout_s=timeout_s, connect_timeout_s=timeout_s, fail_fast=True)


class QueueDepthCollector(Collector):
    """dreambot_queue_depth{queue} from one pipelined LLEN per RQ queue, so every process that is scraped
    shows the live depth. With Redis away the scrape still answers, quickly: dreambot_redis_up 0 and no
    depth (a stale number would look like a real one)."""

    def __init__(self, redis_url, timeout_s: float = 0.5):
        self.conn = _quick_redis(redis_url, timeout_s)
        self.queues = queue_names()

    def describe(self) -> Iterable[GaugeMetricFamily]:  # names only: registering must not touch Redis
        yield GaugeMetricFamily("dreambot_queue_depth", "", labels=["queue"])
        yield GaugeMetricFamily("dreambot_redis_up", "")

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = GaugeMetricFamily("dreambot_redis_up", "1 when this process reached Redis while being scraped")
        try:
            per_queue = fair_order.totals(self.conn, self.queues).per_queue
            lengths = [per_queue[n] for n in self.queues]
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("dreambot_queue_depth", "Jobs waiting in each queue at scrape time",
                                  labels=["queue"])
        for name, n in zip(self.queues, lengths, strict=True):
            depth.add_metric([name], int(n))
        yield depth


_collector: QueueDepthCollector | None = None
_collector_lock = threading.Lock()


def register_queue_depth(redis_url) -> None:
    global _collector
    with _collector_lock:
        if _collector is None:
            _collector = QueueDepthCollector(redis_url)
            REGISTRY.register(_collector)


# ----------------------------------------------------------------------------------------------------
# Health


class Health:
    """Named checks; healthy when every one of them returns True (one that raises counts as False)."""

    def __init__(self, checks: Mapping[str, Callable[[], bool]] | None = None):
        self.checks: dict[str, Callable[[], bool]] = dict(checks or {})
        # "name: value" lines /healthz adds under its verdict (the worker's dtype and memory tier, once chosen).
        self.details: dict[str, str] = {}

    def failing(self) -> list[str]:
        out = []
        for name, check in self.checks.items():
            try:
                ok = bool(check())
            except Exception:
                ok = False
            if not ok:
                out.append(name)
        return out


# A worker counts as healthy while Redis answered one of its probes within this many seconds: a short
# blip (a Redis restart reloading its AOF) is not an outage; compose's retries add their own patience.
REDIS_FRESH_S = 10.0


class RedisProbe:
    """Pings Redis every `every_s` from a daemon thread and remembers when it last answered, so /healthz
    reads a timestamp instead of waiting on the network."""

    def __init__(self, redis_url, every_s: float = 2.0, timeout_s: float = 1.0):
        self.conn = _quick_redis(redis_url, timeout_s)
        self.every_s = every_s
        self.last_ok: float | None = None
        self._stop = threading.Event()

    def start(self) -> RedisProbe:
        threading.Thread(target=self._loop, daemon=True, name="redis-probe").start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.conn.ping()
                self.last_ok = time.monotonic()
            except redis.RedisError:
                pass
            self._stop.wait(self.every_s)

    def fresh(self, within_s: float = REDIS_FRESH_S) -> bool:
        return self.last_ok is not None and time.monotonic() - self.last_ok <= within_s


# ----------------------------------------------------------------------------------------------------
# The server


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # a scrape every 15 s is not worth a log line
        pass


def make_app(health: Health | None, registry=REGISTRY) -> Callable:
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO", "").rstrip("/") in ("/healthz", "/health"):
            failing = health.failing() if health is not None else []
            text = "ok\n" if not failing else "unhealthy: " + ", ".join(failing) + "\n"
            if health is not None:
                text += "".join(f"{k}: {v}\n" for k, v in health.details.items())
            body = text.encode()
            status = "200 OK" if not failing else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                    ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
            return [body]
        return metrics_app(environ, start_response)

    return app


def start_metrics_server(port: int, health: Health | None = None, redis_url=None,
                         role: str = "", addr: str = "0.0.0.0") -> WSGIServer | None:
    """Serve /metrics (any path) and /healthz on addr:port from a daemon thread; port 0: nothing.

    A port already taken is logged and skipped: metrics are not worth stopping a bot or a worker for.
    Returns the server (`.shutdown()` stops it) or None."""
    if not port:
        return None
    _preset(role)
    if redis_url:
        register_queue_depth(redis_url)
    try:
        server = make_server(addr, port, make_app(health), server_class=_Server, handler_class=_QuietHandler)
    except OSError as err:
        log.warning("metrics port unavailable: no /metrics or /healthz in this process",
                    extra={"port": port, "error": str(err)})
        return None
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    log.info("metrics and health endpoint up", extra={"port": port, "role": role})
    return server


def start_worker_metrics(port: int, redis_url) -> tuple[threading.Event, dict[str, str]]:
    """The worker's endpoint, started before the models load. Healthy once the returned event is set
    (models loaded) and while Redis answers the probe; what the worker puts in the returned dict (its dtype,
    its memory tier) is shown under the verdict."""
    loaded = threading.Event()
    details: dict[str, str] = {}
    if port:
        probe = RedisProbe(redis_url).start()
        health = Health({"models loaded": loaded.is_set, "redis reachable": probe.fresh})
        health.details = details
        start_metrics_server(port, health, redis_url, role="worker")
    return loaded, details
