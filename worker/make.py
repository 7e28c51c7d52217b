"""A job's images from the models this process holds: a dream from its request, a variation or an upscale
from its source image, read back from the image store."""

from __future__ import annotations

import io

from dreamcore import results
from dreamcore.images import ImageStoreError
from dreamcore.job import DreamJob

from . import img2img
from .errors import SourceGone
from .pipeline import Generation
from .runtime import Runtime
from .steps import StepHook


def make_images(rt: Runtime, job: DreamJob) -> Generation:
    """Dispatch on the job's kind; every kind runs on the models this process already holds."""
    hook = StepHook(rt, [job])
    if job.kind == "dream":
        return rt.pipeline.generate(job.request, on_step=hook)
    src = job.source
    try:
        data = results.load_image(rt.store, src.job_id, src.index, src.format)
    except ImageStoreError as err:
        raise SourceGone(f"the image it starts from can't be read from the image store just now ({err}); "
                         "try again in a minute") from None
    if data is None:
        raise SourceGone(f"that image is no longer kept (job {src.job_id}, image {src.index + 1}): images are kept "
                         f"{_human_s(rt.settings.image_retention_days * 86400)}. Try Reroll instead")
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise SourceGone(f"the image it starts from can't be read ({type(err).__name__})") from None
    if job.kind == "variation":
        return img2img.vary(rt.pipeline, job.request, image, src.strength, on_step=hook)
    from dreamcore.params import MAX_UPSCALED_SIDE

    if max(image.size) * 2 > MAX_UPSCALED_SIDE:
        raise SourceGone(f"that image is {image.width}x{image.height} already; upscales stop at "
                         f"{MAX_UPSCALED_SIDE} pixels a side")
    return img2img.upscale(rt.pipeline, job.request, image, src.strength, on_step=hook,
                           tile=rt.settings.upscale_tile, overlap=rt.settings.upscale_overlap)


def _human_s(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day{'s' * (seconds > 86400)}"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hour{'s' * (seconds > 3600)}"
    return f"{seconds // 60} minutes"
