"""A job's images from the models this process holds: a dream from its request; a variation, an upscale or
a picture job from its source image (a finished image, or the member's own picture), read back from the
image store."""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable

from dreamcore.canvas import variation_size
from dreamcore.images import ImageStoreError, source_key
from dreamcore.job import DreamJob, DreamRequest
from dreamcore.ranges import MAX_SEED

from . import faces, img2img, inpaint
from .classifier import checked_scores
from .errors import SourceGone
from .pipeline import Generation, StepEvent
from .runtime import Runtime
from .steps import StepHook

log = logging.getLogger("dreambot.worker")


def make_images(rt: Runtime, job: DreamJob) -> Generation:
    """The job's images, its face pass included; every kind runs on the models this process already holds."""
    hook = StepHook(rt, [job])
    gen = _made(rt, job, hook)
    (gen,) = with_faces(rt, [job], [gen], hook)
    if job.kind == "faces" and not gen.timings.get("faces_redrawn"):
        src = job.source
        raise faces.NoFaces(f"I found no face in image {src.index + 1} of `{src.job_id}`, so there was nothing to "
                            "redraw (I look for faces turned towards the camera, at least 30 pixels wide).")
    return gen


def with_faces(rt: Runtime, jobs: list[DreamJob], gens: list[Generation], hook: StepHook) -> list[Generation]:
    """Each job's images after its face pass (worker/faces.py), the same Generation where it takes none: all
    the jobs' faces in as few calls as fit. `hook` is the step hook of the call that made them (job k of
    `jobs` is its job k); a job cancelled by then is left as it is."""
    targets = [faces.Target(k, job.request, image, seed, job.face_pass)
               for k, (job, gen) in enumerate(zip(jobs, gens, strict=True))
               if job.face_pass is not None and job.job_id not in hook.cancelled
               for image, seed in zip(gen.images, gen.seeds, strict=True)]
    if not targets:
        return gens
    redrawn, seconds = faces.redraw(rt.pipeline, targets, hook, call_images(rt.pipeline))
    out = []
    for k, gen in enumerate(gens):
        mine = [r for t, r in zip(targets, redrawn, strict=True) if t.owner == k]
        if not mine:
            out.append(gen)
            continue
        timings = faces.redrawn_timings(gen.timings, seconds, sum(r.found for r in mine),
                                        sum(r.redrawn for r in mine))
        out.append(dataclasses.replace(gen, images=[r.image for r in mine], timings=timings))
    log.info("face pass", extra={"jobs": [j.job_id for j in jobs], "images": len(targets),
                                 "found": sum(r.found for r in redrawn), "redrawn": sum(r.redrawn for r in redrawn),
                                 "seconds": round(seconds, 3)})
    return out


def _made(rt: Runtime, job: DreamJob, hook: StepHook) -> Generation:
    if job.kind == "dream":
        return in_parts(rt, job, lambda req, on_step: rt.pipeline.generate(req, on_step=on_step), hook)
    src = job.source
    try:
        data = rt.store.get(source_key(job.kind, src))
    except ImageStoreError as err:
        raise SourceGone(f"the image it starts from can't be read from the image store just now ({err}); "
                         "try again in a minute") from None
    if data is None and job.kind == "picture":
        raise SourceGone("the picture you sent is no longer kept; send it again with /dream")
    if data is None:
        days = rt.settings.image_retention_days
        raise SourceGone(f"that image is no longer kept (job {src.job_id}, image {src.index + 1}): images are kept "
                         f"{days} day{'s' * (days != 1)}. Try Reroll instead")
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise SourceGone(f"the image it starts from can't be read ({type(err).__name__})") from None
    if job.kind == "variation":
        size = variation_size(job.request.size, *image.size)
        return in_parts(rt, job, lambda req, on_step: img2img.vary(rt.pipeline, req, image, src.strength,
                                                                   on_step=on_step, size=size), hook)
    if job.kind == "edit":
        return in_parts(rt, job, lambda req, on_step: inpaint.edit(rt.pipeline, req, image, src.edit,
                                                                   on_step=on_step), hook)
    if job.kind == "picture":
        # The member's picture is scored before it is used: what comes of a flagged one is judged by its
        # score (the server's policy, applied by the bot), previews included.
        hook.source_score = checked_scores(rt.checker, [image])[0][0] if rt.checker is not None else None
        gen = in_parts(rt, job, lambda req, on_step: img2img.from_picture(rt.pipeline, req, image, src.strength,
                                                                          on_step=on_step), hook)
        return dataclasses.replace(gen, source_score=hook.source_score)
    if job.kind == "faces":  # the image as it is: the face pass is all this job does
        image = image.convert("RGB")
        return Generation(images=[image], seeds=[job.request.seed], width=image.width, height=image.height,
                          base_steps=0, refiner_steps=0, timings={"total_s": 0.0})
    from dreamcore.params import MAX_UPSCALED_SIDE

    if max(image.size) * 2 > MAX_UPSCALED_SIDE:
        raise SourceGone(f"that image is {image.width}x{image.height} already; upscales stop at "
                         f"{MAX_UPSCALED_SIDE} pixels a side")
    return img2img.upscale(rt.pipeline, job.request, image, src.strength, on_step=hook,
                           tile=rt.settings.upscale_tile, overlap=rt.settings.upscale_overlap)


def call_images(pipeline) -> int | None:
    """The most images one call fits on this process's device (memory.plan); None: no device limit."""
    plan = getattr(pipeline, "memory", None)  # the benches' no-op pipelines have none
    return getattr(plan, "call_images", None)


def split_request(req: DreamRequest, most: int) -> list[DreamRequest]:
    """`req` as consecutive requests of at most `most` images. Part k starts at the seed of its first image,
    so its images are the ones those seeds give alone: the parts together are the dream."""
    if req.count <= most:
        return [req]
    return [req.model_copy(update={"seed": (req.seed + lo) % (MAX_SEED + 1), "count": min(most, req.count - lo)})
            for lo in range(0, req.count, most)]


def in_parts(rt: Runtime, job: DreamJob, run: Callable[[DreamRequest, Callable], Generation],
             hook: Callable[[StepEvent], None]) -> Generation:
    """`run` the job's request in one call, or, on a device that fits fewer images in one call than the
    dream asks for, in parts one after another, joined into one Generation. The parts' steps reach `hook`
    counted across all of them, so the member's progress runs once from 0 to the end."""
    most = call_images(rt.pipeline)
    parts = split_request(job.request, most) if most else [job.request]
    if len(parts) == 1:
        return run(job.request, hook)
    log.info("dream made in parts", extra={"job_id": job.job_id, "images": job.request.count,
                                           "parts": len(parts), "call_images": most})
    gens = []
    for k, part in enumerate(parts):
        def on_step(ev: StepEvent, k: int = k) -> None:
            hook(dataclasses.replace(ev, done=k * ev.total + ev.done, total=len(parts) * ev.total,
                                     part=k + 1, parts=len(parts)))
        gens.append(run(part, on_step))
    first = gens[0]
    timings: dict[str, float] = {}
    for gen in gens:
        for key, value in gen.timings.items():
            timings[key] = timings.get(key, 0.0) + value
    timings["parts"] = len(parts)
    return dataclasses.replace(first, images=[im for g in gens for im in g.images], seeds=job.request.seeds,
                               timings=timings, nan_detected=any(g.nan_detected for g in gens))
