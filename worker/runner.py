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
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import redis
from rq.exceptions import StopRequested
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from dreamcore import keys, metrics, redisconn
from dreamcore.images import ImageStoreError, S3Store, open_store
from dreamcore.logs import setup_logging
from dreamcore.modes import RELAX_QUEUE
from dreamcore.queue import fair_order, rq_private
from dreamcore.queue.rq_queues import FairQueue, claim_companions, queue_name, queue_names
from dreamcore.settings import Settings

from . import batch, memory, speed, tasks
from .classifier import load_checker
from .pipeline import DreamPipeline
from .runtime import LOAD, Runtime, install, runtime
from .weights import ModelLoadError, dtype_for, resolve_device

log = logging.getLogger("dreambot.worker")


class DreamWorker(SimpleWorker):
    queue_class = FairQueue

    def __init__(self, *args, heartbeat_s: int = 10, lease_s: int = 60, batch_images: int = 1,
                 batch_window: int = 32, **kwargs):
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
        self.batch_images = batch_images
        self.batch_window = batch_window
        self._pending: _Pending | None = None
        self._finisher: ThreadPoolExecutor | None = None

    def run_maintenance_tasks(self):
        super().run_maintenance_tasks()
        # The fair queue's counters are kept in step by its scripts; this repairs any that drifted (a hand
        # edit, an older release's leftovers). One worker at a time does it (a lock), in short steps.
        try:
            fair_order.reconcile(self.connection, queue_names())
        except redis.RedisError as err:
            log.warning("fair-queue reconcile failed", extra={"error": type(err).__name__})
        self.sweep_images()

    def sweep_images(self) -> int:
        """Delete images past retention, at most once an hour across the whole pool (a lock in Redis): a
        folder store walks every kept job's folder, which is too much to do on every maintenance round."""
        try:
            if not self.connection.set(keys.IMAGE_SWEEP_LOCK, self.name, nx=True, ex=keys.IMAGE_SWEEP_EVERY_S):
                return 0
            return runtime().store.sweep()
        except (redis.RedisError, ImageStoreError) as err:
            log.warning("image store sweep failed", extra={"error": str(err)})
            return 0

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        return self.lease_s

    def bootstrap(self, *args, **kwargs):
        super().bootstrap(*args, **kwargs)
        # RQ installs its own plain-text handlers; ours are structured and redacting.
        for name in ("rq.worker", "rq.job"):
            logging.getLogger(name).handlers[:] = []

    def execute_job(self, job, queue):
        """Denoise `job` (with the companions it can batch) here, then hand encoding and publishing to the
        finisher thread and return, so the GPU starts on the next job while this one's PNGs are written.
        RQ's bookkeeping for the job stays on this thread: it is settled before the next job's is, or
        before the worker blocks waiting for work, or stops; until then the lease thread keeps it alive."""
        members = [(job, queue, self.prepare_execution(job))]
        members += self._claim_companions(job)
        log.info("claimed", extra={"jobs": [m[0].id for m in members],
                                   "images": sum(int(m[0].meta.get("images") or 1) for m in members)})
        lease = _Lease(self, members)
        try:
            outcomes, made = self._denoise(members)
        except BaseException:
            lease.stop()
            raise
        self._settle_pending()  # the previous job's images are out by now, or nearly
        if made:
            if self._finisher is None:
                # One thread: a job's images never overtake the previous job's, and memory holds at most
                # two jobs' images.
                self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finisher")
            future = self._finisher.submit(batch.finish, made, outcomes)
        else:
            future = Future()
            future.set_result(batch.finish([], outcomes))
        self._pending = _Pending(members, future, lease)
        self.set_state(WorkerStatus.IDLE)

    def _denoise(self, members):
        """RQ's perform_job up to the job function, for one job or a batch: each job marked started (one that
        RQ can't even read fails alone, as in perform_job), then batch.denoise under one time limit."""
        outcomes: list = [None] * len(members)
        ready = []
        for i, (job, _queue, _execution) in enumerate(members):
            try:
                # Every claim (claim_next.lua and claim_batch.lua) parks the id in RQ's intermediate list.
                self.prepare_job_execution(job, remove_from_intermediate_queue=True)
                job.started_at = now()
                ready.append(i)
            except Exception:
                outcomes[i] = batch.Ended(exc_info=sys.exc_info())
        if not ready:
            return outcomes, []
        jobs = [members[i][0] for i in ready]
        images = sum(int(job.meta.get("images") or 1) for job in jobs)
        timeout = batch.batch_timeout([job.timeout or self.queue_class.DEFAULT_TIMEOUT for job in jobs], images)
        claimed = [batch.Claimed(job.id, _payload_of(job), job) for job in jobs]
        try:
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=jobs[0].id):
                got, made = batch.denoise(claimed)
        except Exception:  # denoise settles every job itself; this is a last resort so RQ still records them
            got, made = [batch.Ended(exc_info=sys.exc_info())] * len(ready), []
        for k, i in enumerate(ready):
            outcomes[i] = got[k]
        for m in made:
            m.index = ready[m.index]
        return outcomes, made

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        if self._pending is not None and not self._pending.future.done():
            # Images still encoding: take a waiting job at once if there is one (no blocking wait)...
            got = super().dequeue_job_and_maintain_ttl(None)
            if got is not None:
                return got
        self._settle_pending()  # ... else finish the last job's bookkeeping before waiting for work
        if rq_private.stop_was_requested(self):  # asked while that bookkeeping ran: don't wait for work
            raise StopRequested
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def unsubscribe(self):
        rq_private.unsubscribe(self)

    def teardown(self):
        self._settle_pending()  # a stop request or a burst's end: publish and record the last job first
        if self._finisher is not None:
            self._finisher.shutdown(wait=True)
            self._finisher = None
        super().teardown()

    def _settle_pending(self) -> None:
        if self._pending is None:
            return
        # RQ stops an idle worker by raising StopRequested from the signal handler, wherever the main thread
        # is: busy, a stop request waits until this job is recorded, and dequeue then honours it.
        self._mark(WorkerStatus.BUSY)
        pending, self._pending = self._pending, None
        try:
            outcomes = pending.future.result()
        except Exception:  # finish settles every job itself; this is a last resort so RQ still records them
            outcomes = [batch.Ended(exc_info=sys.exc_info())] * len(pending.members)
        try:
            for (job, queue, execution), outcome in zip(pending.members, outcomes, strict=True):
                try:
                    if outcome.failed:
                        rq_private.finalize_failure(self, job, queue, execution, outcome.exc_info)
                    else:
                        rq_private.finalize_success(self, job, queue, execution, outcome.value)
                except redis.RedisError as err:  # RQ's own records; the member already has the result
                    log.warning("job bookkeeping failed", extra={"job_id": job.id, "error": type(err).__name__})
        finally:
            pending.lease.stop()
            self._mark(WorkerStatus.IDLE)

    def _mark(self, state: str) -> None:
        """set_state, where Redis being away can't stop the job's own bookkeeping (its calls say so): RQ
        keeps the state its signal handler reads before writing it to Redis."""
        try:
            self.set_state(state)
        except redis.RedisError:
            pass

    def _claim_companions(self, job) -> list[tuple[Job, FairQueue, object]]:
        """Waiting dreams that can share this job's denoising batch, taken off their queues and registered as
        started here, exactly as RQ registers the job it dequeued itself (see dreamcore/queue/claim_batch.lua)."""
        key = job.meta.get("batch") if isinstance(job.meta, dict) else None
        budget = self.batch_images - int(job.meta.get("images") or 1) if key else 0
        if not key or budget < 1 or _is_retry(job):
            return []  # a retried job runs alone: if it kills workers, it kills no batch
        try:
            claimed = claim_companions(self.connection, key, budget, self.batch_window,
                                       relax=job.origin == queue_name(RELAX_QUEUE))
        except redis.RedisError as err:  # no companions this time; the job itself runs
            log.warning("batch claim failed", extra={"job_id": job.id, "error": type(err).__name__})
            return []
        queues = {q.name: q for q in self.queues}
        members = []
        for qname, job_id in claimed:
            queue = queues.get(qname) or FairQueue(qname, connection=self.connection, serializer=self.serializer)
            try:
                companion = Job.fetch(job_id, connection=self.connection, serializer=self.serializer)
            except Exception as err:  # deleted meanwhile, or a hash RQ can't read: nothing here can run it
                log.warning("claimed job unreadable", extra={"job_id": job_id, "error": type(err).__name__})
                self.connection.lrem(queue.intermediate_queue_key, 1, job_id)
                continue
            members.append((companion, queue, self.prepare_execution(companion)))
        return members


class _Lease:
    """Renews the leases of jobs this worker holds (RQ's SimpleWorker sends no heartbeat while it works)."""

    def __init__(self, worker: DreamWorker, members):
        self.worker, self.members = worker, members
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lease")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.worker.heartbeat_s):
            for job, _queue, execution in self.members:
                try:
                    self.worker.maintain_heartbeats(job, execution)
                except redis.RedisError as err:  # Redis away for a moment: try again next beat
                    log.warning("lease renewal failed", extra={"job_id": job.id, "error": str(err)})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _Pending:
    """A job (or batch) whose images are being encoded and published while the GPU moves on."""

    members: list
    future: Future
    lease: _Lease


def _is_retry(job: Job) -> bool:
    """A job run again because a worker died while running it (RQ counts its retries down)."""
    tries = job.meta.get("tries")
    return job.retries_left is not None and isinstance(tries, int) and job.retries_left < tries - 1


def _payload_of(job: Job):
    try:
        return job.args[0]
    except Exception:  # undecodable or missing arguments: the job is admitted as unreadable, its member told
        return None


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
    dev = resolve_device(settings.device)
    dtype, why = dtype_for(settings.dtype, dev, settings.base_model)
    levers = speed.Levers.from_settings(settings, dev)
    pipe = DreamPipeline.load(settings.base_model, settings.refiner_model, settings.device, levers=levers,
                              dtype=dtype, offload=settings.offload, batch_images=settings.batch_images,
                              turbo_adapter=settings.turbo_adapter)
    plan = pipe.memory
    done = pipe.speed
    log.info("models loaded", extra={"seconds": round(time.perf_counter() - t0, 2),
                                     "dtype": str(dtype).removeprefix("torch."), "why": why,
                                     "offload": plan.offload, "offload_why": plan.why,
                                     "device_memory_gib": round(plan.resident_bytes / memory.GIB, 2),
                                     "base": settings.base_model, "refiner": settings.refiner_model,
                                     "turbo_adapter": settings.turbo_adapter,
                                     "levers": {k: v for k, v in asdict(levers).items() if k != "compile_buckets"},
                                     "lossy_levers": levers.lossy,
                                     "freed_gib": round(done.freed_bytes / memory.GIB, 2),
                                     "compile_s": None if done.compile_s is None else round(done.compile_s, 1),
                                     "compile_cache": done.compile_cache})
    return pipe


def describe_models(pipe: DreamPipeline) -> dict[str, str]:
    """What /healthz shows under its verdict: the device, the weights' dtype and the memory tier with why."""
    dtype = str(next(pipe.base.unet.parameters()).dtype).removeprefix("torch.")
    return {"device": str(pipe.device), "dtype": dtype, "memory": pipe.memory.describe(),
            "levers": speed.describe(pipe),
            "adapters": "; ".join(a.describe() for a in pipe.adapters.values()) or "none (no turbo)"}


def make_worker(settings: Settings, conn: redis.Redis, pipeline: DreamPipeline, name: str | None = None,
                checker=LOAD) -> DreamWorker:
    name = name or worker_name()
    store = open_store(settings)
    log.info("image store", extra={"store": store.describe(), "retention_days": settings.image_retention_days})
    if isinstance(store, S3Store) and settings.s3_set_lifecycle:
        store.set_lifecycle()
    install(Runtime(settings=settings, conn=conn, pipeline=pipeline, name=name, store=store,
                                checker=checker))
    queues = [FairQueue(n, connection=conn, serializer=JSONSerializer) for n in queue_names()]
    # A device with less room than the setting's batches asks for takes smaller ones (memory.plan).
    plan = getattr(pipeline, "memory", None)  # the benches' no-op pipelines have none
    batch_images = min(settings.batch_images, plan.batch_images) if plan else settings.batch_images
    return DreamWorker(queues, connection=conn, name=name, heartbeat_s=settings.heartbeat_s,
                       lease_s=settings.lease_s, batch_images=batch_images,
                       batch_window=settings.batch_window, exception_handlers=[tasks.on_abandoned])


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
    models_loaded, health_details = metrics.start_worker_metrics(settings.metrics_port, settings)
    try:
        pipeline = load_pipeline(settings)
        health_details.update(describe_models(pipeline))
        checker = load_checker(settings, pipeline.device)  # once: a Redis reconnect below reuses it
    except ModelLoadError as err:
        log.error("cannot start: %s", err)
        print(f"dreambot worker: {err}", flush=True)
        return 2
    models_loaded.set()
    conn = redisconn.connect(settings, connect_timeout_s=5, health_check_interval=30, socket_keepalive=True)
    stop = _Stop()
    while True:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if not _wait_for_redis(conn, stop):
            return 0
        worker = make_worker(settings, conn, pipeline, checker=checker)
        try:
            worker.work(burst=burst, max_jobs=max_jobs, logging_level=settings.log_level)
        except redis.RedisError as err:  # lost Redis while registering or tearing down
            log.warning("work loop lost redis", extra={"error": type(err).__name__})
        if burst or max_jobs is not None or rq_private.stop_was_requested(worker) or stop.requested:
            log.info("worker stopped", extra={"worker": worker.name})
            return 0
        log.warning("work loop ended without a stop request; reconnecting", extra={"worker": worker.name})
