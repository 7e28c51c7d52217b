"""`dreambot demo`: the whole dream path on one machine, with no Discord and no GPU needed.

It queues the job as a bot's submit ends (the queue's `enqueue`, with the bot's own record of the job), but
without a bot's limits (the demo has no server and no members); then it runs a worker on the queue and takes
the result from the outbox a bot reads, checked as a bot checks it, writing files where a bot would post.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import redis

from dreamcore import delivery, redisconn, results
from dreamcore.images import open_store
from dreamcore.job import JobError, make_job, make_origin, make_request
from dreamcore.localredis import LocalRedis
from dreamcore.logs import setup_logging
from dreamcore.moderation import is_flagged
from dreamcore.present import result_text
from dreamcore.queue.rq_queues import DreamQueue
from dreamcore.settings import Settings

from .classifier import load_checker
from .runner import load_pipeline, make_worker
from .weights import ModelLoadError

DEMO_INSTANCE = "demo"


def default_tiny_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dreambot" / "tiny-sdxl"


def _tiny(settings: Settings, where: str) -> Settings:
    from .runner import quiet_model_libraries
    from .tiny import make_tiny_model

    quiet_model_libraries()
    folder = Path(where) if where else default_tiny_dir()
    parts = ("base/model_index.json", "refiner/model_index.json", "safety/config.json", "turbo")
    if not all((folder / part).exists() for part in parts):  # built by hand, cut short, or by an older release
        t0 = time.perf_counter()
        make_tiny_model(folder)
        print(f"built the tiny test model in {folder} ({time.perf_counter() - t0:.1f}s)")
    return settings.model_copy(update={"base_model": str(folder / "base"), "refiner_model": str(folder / "refiner"),
                                       "safety_model": str(folder / "safety"), "turbo_adapter": str(folder / "turbo"),
                                       "device": "cpu"})


def run_demo(settings: Settings, args) -> int:
    setup_logging("WARNING", settings.log_format)
    if args.tiny:
        settings = _tiny(settings, args.tiny_dir or "")
    out = Path(args.out or settings.output_dir)
    try:
        request = make_request(
            prompt=args.prompt, negative_prompt=args.negative, style=args.style, aspect=args.aspect,
            seed=args.seed, count=args.count, steps=args.steps or settings.default_steps,
            guidance=args.guidance if args.guidance is not None else settings.default_guidance,
            split=args.split if args.split is not None else settings.default_split,
            faces=args.faces or settings.limit_faces, max_upload_bytes=settings.max_upload_bytes,
            mode=getattr(args, "mode", None),
        )
    except JobError as err:
        print(f"dreambot demo: {err}")
        return 2

    private = None
    if "REDIS_URL" in os.environ or settings.sentinel_list:
        conn = redisconn.connect(settings)
    else:
        private = LocalRedis(appendonly=False).start()
        conn = redis.Redis.from_url(private.url)
        print(f"started a private redis-server on {private.url}")
    try:
        return _run(settings, conn, request, out)
    finally:
        if private:
            private.close()


def _run(settings: Settings, conn: redis.Redis, request, out: Path) -> int:
    try:
        pipeline = load_pipeline(settings)
        checker = load_checker(settings, pipeline.device)
    except ModelLoadError as err:
        print(f"dreambot demo: {err}")
        return 2
    origin = make_origin(instance=DEMO_INSTANCE, channel_id=1, user_id=1)
    job = make_job(request, origin)
    queued = DreamQueue(conn, settings).enqueue(job)
    print(f"queued job {job.job_id} at position {queued.position + 1}")

    store = open_store(settings)
    outbox = results.Outbox(conn, DEMO_INSTANCE, consumer="demo")
    outbox.ensure_group()
    worker = make_worker(settings, conn, pipeline, checker=checker)
    worker.work(burst=True, logging_level="WARNING")

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for entry in outbox.read(block_ms=500):
            outbox.ack(entry)
            if entry.job_id != job.job_id:
                continue
            # What a bot would post: the result checked against the demo's own record of the job.
            got = delivery.for_delivery(conn, store, entry.job_id, DEMO_INSTANCE)
            if got is not None:
                return _write(got.result, got.images, out, settings)
    print(f"dreambot demo: no result for job {job.job_id} (see the worker log above)")
    return 1


def _write(result, images: list[bytes], out: Path, settings: Settings) -> int:
    print(result_text(result))
    if result.status != "done":
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for info, data in zip(result.images, images, strict=True):
        path = out / info.filename
        path.write_bytes(data)
        if info.nsfw_score is None:
            verdict = "not checked: DREAMBOT_SAFETY_CHECK=false"
        else:
            flagged = is_flagged(info.nsfw_score, settings.limit_nsfw_threshold)
            verdict = (f"content filter {info.nsfw_score:.2f}"
                       + (f", FLAGGED (a guild on the defaults would {settings.limit_nsfw_action.replace('_', ' ')} it)"
                          if flagged else ""))
        print(f"wrote {path} ({info.width}x{info.height} {info.format}, seed {info.seed}, {len(data) // 1024} KiB, "
              f"{verdict})")
    meta = out / f"dream-{result.job_id}.json"
    meta.write_text(json.dumps(result.model_dump(mode="json"), indent=2))
    per_image = result.timings.get("total_s", 0) / max(1, len(images))
    print(f"wrote {meta}; {per_image:.2f}s per image")
    return 0
