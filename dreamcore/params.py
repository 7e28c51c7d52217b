"""What the buttons under a result need to know about its job.

The record holds the request, where it came from (guild, channel, member; never a token), what made it
(kind and source) and what came out (image sizes, formats and seeds, steps, timings). It is kept twice:
the worker writes it to the image store beside the images (`<job>/params.json`, kept as long as they are,
DREAMBOT_IMAGE_RETENTION_DAYS), and the relay writes it to Redis right before it posts the message with
the buttons (DREAMBOT_PARAMS_TTL, the quick path for recent results). `load` reads Redis first, then the
store, so Reroll, Variations, Upscale, Info and Delete work for as long as the images are kept.
"""

from __future__ import annotations

import logging
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import images
from .images import ImageStore
from .job import DreamRequest, JobSource, Kind
from .keys import params_key
from .results import DreamResult

log = logging.getLogger("dreambot.params")

# An upscale doubles the source; past this many pixels a side the Upscale button is not offered.
MAX_UPSCALED_SIDE = 4096


class ImageParams(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    width: int = Field(ge=1, le=16384)
    height: int = Field(ge=1, le=16384)
    seed: int = Field(ge=0, le=2**32 - 1)
    format: str = Field(max_length=8)
    nsfw_score: float | None = Field(None, ge=0.0, le=1.0)  # the output classifier's (dreamcore.moderation)


class JobParams(BaseModel):
    # Unknown keys are ignored: a record written by a newer release still reads here.
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: Literal[1] = 1
    job_id: str = Field(pattern=r"^[a-f0-9]{16}$")
    kind: Kind = "dream"
    source: JobSource | None = None
    request: DreamRequest
    instance: str = Field(max_length=32)
    guild_id: int | None = Field(None, ge=1, le=2**64 - 1)
    channel_id: int = Field(ge=1, le=2**64 - 1)
    user_id: int = Field(ge=1, le=2**64 - 1)
    images: list[ImageParams] = Field(default_factory=list, max_length=4)
    timings: dict[str, float] = Field(default_factory=dict, max_length=32)
    base_steps: int = Field(0, ge=0, le=1000)
    refiner_steps: int = Field(0, ge=0, le=1000)
    prompt_note: str | None = Field(None, max_length=300)
    worker: str = Field("", max_length=200)
    finished_at: float = 0.0

    def source_score(self, index: int) -> float | None:
        """What a variation or upscale of image `index` carries as its source's score: the image's own, or
        its own source's when higher (a variation of a variation of a flagged image stays flagged)."""
        from .moderation import effective_score

        return effective_score(self.images[index].nsfw_score, self.source.nsfw_score if self.source else None)

    def can_upscale(self, index: int) -> bool:
        if not 0 <= index < len(self.images):
            return False
        img = self.images[index]
        return max(img.width, img.height) * 2 <= MAX_UPSCALED_SIDE


def from_result(result: DreamResult) -> JobParams:
    """The record for a finished result (which must have its origin and request)."""
    o = result.origin
    return JobParams(
        job_id=result.job_id, kind=result.kind, source=result.source, request=result.request,
        instance=o.instance, guild_id=o.guild_id, channel_id=o.channel_id, user_id=o.user_id,
        images=[ImageParams(width=i.width, height=i.height, seed=i.seed, format=i.format, nsfw_score=i.nsfw_score)
                for i in result.images],
        timings=dict(list(result.timings.items())[:32]), base_steps=result.base_steps,
        refiner_steps=result.refiner_steps, prompt_note=(result.prompt_note or None) and result.prompt_note[:300],
        worker=result.worker[:200], finished_at=result.finished_at,
    )


def save(conn: redis.Redis, params: JobParams, ttl_s: int) -> None:
    conn.set(params_key(params.job_id), params.model_dump_json(), ex=ttl_s)


def save_to_store(store: ImageStore, params: JobParams) -> None:
    """The same record beside the job's images, kept as long as they are (DREAMBOT_IMAGE_RETENTION_DAYS),
    so the buttons outlive the Redis copy and any Redis restart or loss."""
    store.put(images.params_copy_key(params.job_id), params.model_dump_json().encode())


def _parse(raw: bytes, job_id: str, where: str) -> JobParams | None:
    try:
        return JobParams.model_validate_json(raw)
    except ValidationError as err:
        log.warning("unreadable params record", extra={"job_id": job_id, "where": where, "error": str(err)[:300]})
        return None


def load(conn: redis.Redis, job_id: str, store: ImageStore | None = None) -> JobParams | None:
    """The record (Redis first, then the image store); None when it never existed, is no longer kept, or
    can't be read (logged). Raises ImageStoreError when Redis has none and the store can't be reached."""
    raw = conn.get(params_key(job_id))
    if raw is not None:
        return _parse(raw, job_id, "redis")
    if store is None:
        return None
    raw = store.get(images.params_copy_key(job_id))
    return None if raw is None else _parse(raw, job_id, "store")
