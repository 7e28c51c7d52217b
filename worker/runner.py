"""`dreambot worker`: load SDXL base + refiner once, then serve the dream queues until told to stop.

RQ's default Worker forks a child per job, which would reload ~7 GB of weights for every job, so this
worker runs jobs in-process (SimpleWorker). SimpleWorker sends no heartbeat while a job runs, so a thread
renews the job's lease every `heartbeat_s`; a worker that dies stops renewing, and after `lease_s` its job
counts as abandoned and RQ hands it to another worker (retries permitting).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid

import redis
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker, WorkerStatus

from dreamcore import metrics
from dreamcore.logs import setup_logging
from dreamcore.queue import FairQueue, queue_names
from dreamcore.settings import Settings

from . import tasks
from .pipeline import DreamPipeline, ModelLoadError

log = logging.getLogger("dreambot.worker")


class DreamWorker(SimpleWorker):
    queue_class = FairQueue

    def __init__(self, *args, heartbeat_s: int = 10, lease_s: int = 60, **kwargs):
        kwargs.setdefault("serializer", JSONSerializer)
        # Clean registries (and so re-queue abandoned jobs) about once a lease, not every 10 min.
        kwargs.setdefault("maintenance_interval", lease_s)
        kwargs.setdefault("job_monitoring_interval", heartbeat_s)
        # An idle worker blocks in BLPOP for worker_ttl - 15 s; keep that near a lease so idle workers
        # wake up to run maintenance and pick up abandoned jobs promptly.
        kwargs.setdefault("worker_ttl", lease_s + 15)
        super().__init__(*args, **kwargs)
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        return self.lease_s

    def bootstrap(self, *args, **kwargs):
        super().bootstrap(*args, **kwargs)
        # RQ installs its own plain-text handlers; ours are structured and redacting.
        for name in ("rq.worker", "rq.job"):
            logging.getLogger(name).handlers[:] = []

    def execute_job(self, job, queue):
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._renew_lease, args=(job, execution, stop), daemon=True,
                                name="lease")
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _renew_lease(self, job, execution, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                self.maintain_heartbeats(job, execution)
            except redis.RedisError as err:  # Redis away for a moment: try again next beat
                log.warning("lease renewal failed", extra={"job_id": job.id, "error": str(err)})


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


def quiet_model_libraries() -> None:
    """diffusers/transformers print progress bars and advice to stderr; the worker logs its own timings."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()


def load_pipeline(settings: Settings) -> DreamPipeline:
    quiet_model_libraries()
    t0 = time.perf_counter()
    pipe = DreamPipeline.load(settings.base_model, settings.refiner_model, settings.device)
    log.info("models loaded", extra={"seconds": round(time.perf_counter() - t0, 2),
                                     "base": settings.base_model, "refiner": settings.refiner_model})
    return pipe


def make_worker(settings: Settings, conn: redis.Redis, pipeline: DreamPipeline, name: str | None = None) -> DreamWorker:
    name = name or worker_name()
    tasks.install(tasks.Runtime(settings=settings, conn=conn, pipeline=pipeline, name=name))
    queues = [FairQueue(n, connection=conn, serializer=JSONSerializer) for n in queue_names()]
    return DreamWorker(queues, connection=conn, name=name, heartbeat_s=settings.heartbeat_s,
                       lease_s=settings.lease_s, exception_handlers=[tasks.on_abandoned])


class _Stop:
    """SIGTERM/SIGINT while no RQ work loop is running (waiting for Redis): exit at once, nothing is held."""

    requested = False

    def __call__(self, signum, frame):
        self.requested = True


def _wait_for_redis(conn: redis.Redis, stop: _Stop) -> bool:
    """Back off until Redis answers; False when asked to stop meanwhile."""
    delay = 0.5
    while not stop.requested:
        try:
            conn.ping()
            return True
        except redis.RedisError as err:
            log.warning("redis unreachable, retrying", extra={"error": type(err).__name__, "in_s": delay})
            time.sleep(delay)
            delay = min(delay * 2, 30)
    return False


def run(settings: Settings, burst: bool = False, max_jobs: int | None = None) -> int:
    """Entry point of `dreambot worker`. Returns the process exit code.

    The models load once; RQ's work loop ends when Redis goes away (it quits on connection errors), so
    this loop waits for Redis and starts a fresh work loop (a new worker registration) on the same models.
    SIGTERM drains: RQ finishes the job in hand, takes no new one, and the loop exits.
    """
    setup_logging(settings.log_level, settings.log_format)
    # Up before the models load: /healthz says 503 "models loaded" meanwhile, and /metrics already answers.
    models_loaded = metrics.start_worker_metrics(settings.metrics_port, settings.redis_url)
    try:
        pipeline = load_pipeline(settings)
    except ModelLoadError as err:
        log.error("cannot start: %s", err)
        print(f"dreambot worker: {err}", flush=True)
        return 2
    models_loaded.set()
    conn = redis.Redis.from_url(settings.redis_url, health_check_interval=30, socket_connect_timeout=5,
                                socket_keepalive=True)
    stop = _Stop()
    while True:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if not _wait_for_redis(conn, stop):
            return 0
        worker = make_worker(settings, conn, pipeline)
        try:
            worker.work(burst=burst, max_jobs=max_jobs, logging_level=settings.log_level)
        except redis.RedisError as err:  # lost Redis while registering or tearing down
            log.warning("work loop lost redis", extra={"error": type(err).__name__})
        # An idle RQ worker told to stop raises StopRequested without setting _stop_requested (RQ 3):
        # its shutdown date is the sign that the loop ended on a signal, not on a lost Redis.
        shutdown = getattr(worker, "_shutdown_requested_date", None) is not None
        if burst or max_jobs is not None or worker._stop_requested or shutdown or stop.requested:
            log.info("worker stopped", extra={"worker": worker.name})
            return 0
        log.warning("work loop ended without a stop request; reconnecting", extra={"worker": worker.name})
