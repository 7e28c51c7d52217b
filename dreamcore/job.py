"""The dream job: one typed, versioned model shared by the bots (which write it) and the workers (which read it).

It travels through Redis as JSON, never pickle, so a bot host needs no torch. Every field is bounded, and
every bad value raises JobError naming the field and what it allows. A payload written by another schema
version, or garbage, is refused with a reason instead of crashing whoever reads it.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import unicodedata
import uuid
from typing import Any, Literal, NamedTuple, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from . import ranges
from .i18n import _
from .modes import TURBO, TURBO_KINDS, Mode
from .problems import problems
from .ranges import MAX_PROMPT_CHARS, MAX_SEED
from .styles import load_styles

# Compatibility: a job carries the oldest schema version that can express it (goes when every worker reads
# version 5: then every job is written as SCHEMA_VERSION). A plain dream is still version 1, which workers of
# the previous release run; variations and upscales (a `source` image) are version 2, a dream
# from a member's own picture version 3; a Fix faces job, or any job that sets its face pass on or off,
# version 4; a turbo or relax dream (dreamcore.modes) version 5. An older worker refuses a version it doesn't
# read with "written with schema version N" (its member is told) instead of misreading.
SCHEMA_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
Kind = Literal["dream", "variation", "upscale", "picture", "edit", "faces"]
KINDS: tuple[str, ...] = get_args(Kind)
VERSION_OF_KIND = {"dream": 1, "variation": 2, "upscale": 2, "picture": 3, "edit": 3, "faces": 4}
FACES_VERSION = 4  # a request whose face pass is not "auto" (the worker that runs it must know the choice)
MODES_VERSION = 5  # a request whose mode is not "quality"
# A picture job's strength ("how much to change it") when the member gives none.
PICTURE_STRENGTH = 0.6
# How far the face pass pushes each face crop back into noise (worker/faces.py): ADetailer's default, enough
# to redraw eyes and mouth, little enough to keep the face's pose, light and likeness.
FACE_STRENGTH = 0.4
# The kinds whose images take the face pass (a Fix faces job is nothing else). Not an upscale: its faces are
# twice the size they were, and its refiner redraws every tile at the upscale's own strength.
FACE_PASS_KINDS = ("dream", "variation", "picture", "edit")
# The face pass a request asks for (DreamRequest.faces), which a server's default (GuildLimits.faces) and the
# operator's (DREAMBOT_LIMIT_FACES) also take.
FaceChoice = Literal["auto", "on", "off"]
FACE_LABELS = {"auto": "Auto: the small faces it finds", "on": "On: every face it finds", "off": "Off"}

# The SDXL-native sizes (about one megapixel each), keyed by what /dream offers.
ASPECTS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "9:7": (1152, 896),
    "7:9": (896, 1152),
    "19:13": (1216, 832),
    "13:19": (832, 1216),
    "7:4": (1344, 768),
    "4:7": (768, 1344),
    "12:5": (1536, 640),
    "5:12": (640, 1536),
}
ASPECT_LABELS: dict[str, str] = {
    "1:1": "Square 1:1 (1024x1024)",
    "9:7": "Landscape 9:7 (1152x896)",
    "7:9": "Portrait 7:9 (896x1152)",
    "19:13": "Landscape 3:2 (1216x832)",
    "13:19": "Portrait 2:3 (832x1216)",
    "7:4": "Wide 16:9 (1344x768)",
    "4:7": "Tall 9:16 (768x1344)",
    "12:5": "Cinema 21:9 (1536x640)",
    "5:12": "Banner 9:21 (640x1536)",
}

# Zero-width and bidi-control characters: invisible, and a way to hide words from the blocked-words list.
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\u00ad]")


class FacePass(NamedTuple):
    mode: Literal["auto", "on"]  # auto: only the small faces it finds; on: every face it finds
    strength: float


class JobError(ValueError):
    """A dream request or job payload that can't be run; `str()` is fit to show the member."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def clean_text(text: str) -> str:
    """NFC-normalise, drop invisible characters, turn control characters into spaces, squeeze spaces."""
    # Invisible characters go before normalising: dropped after, one between a letter and its accent would
    # leave text that is not NFC, so cleaning it again (the worker re-reads what the bot cleaned) changed it.
    text = _INVISIBLE.sub("", text)
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") else c for c in text)
    return " ".join(text.split())


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class DreamRequest(_Strict):
    """What the member asked for."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    style: str = "none"
    aspect: str = "1:1"
    seed: int = ranges.SEED.field()
    count: int = ranges.IMAGES.field(1)
    steps: int = ranges.STEPS.field(40)
    guidance: float = ranges.GUIDANCE.field(7.0)
    # Fraction of the steps the base model runs; the refiner does the rest. 1.0 = base only (ranges.SPLIT).
    split: float = ranges.SPLIT.field(0.8)
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024 * 1024, le=500 * 1024 * 1024)
    # The face pass (worker/faces.py): auto redraws the small faces it finds, on every face it finds, off none.
    faces: FaceChoice = "auto"
    # How the dream spends GPU time (dreamcore.modes): a turbo request carries the turbo recipe's fixed
    # steps, guidance and split (make_request sets them), so what it runs, costs and batches with is read
    # from the same fields as for any dream.
    mode: Mode = "quality"

    @model_serializer(mode="wrap")
    def _without_defaults_of_new_fields(self, handler):
        # Compatibility: "auto" faces and "quality" mode are what a request of the releases before them meant,
        # and those releases forbid unknown keys: left out, a job, result or record that doesn't set them still
        # reads there; goes when no bot or worker of a release before faces and modes runs.
        out = handler(self)
        if isinstance(out, dict):
            if out.get("faces") == "auto":
                out.pop("faces")
            if out.get("mode") == "quality":
                out.pop("mode")
        return out

    @model_validator(mode="after")
    def _turbo_runs_its_recipe(self) -> DreamRequest:
        if self.mode == "turbo" and (self.steps, self.guidance, self.split) != (TURBO.steps, TURBO.guidance,
                                                                                TURBO.split):
            raise ValueError(_(
                "a turbo dream runs {steps} steps at guidance {guidance} on the base alone (steps {steps}, guidance "
                "{guidance}, split {split}); this one says steps {got_steps}, guidance {got_guidance}, split "
                "{got_split}").format(steps=TURBO.steps, guidance=f"{TURBO.guidance:g}", split=f"{TURBO.split:g}",
                                      got_steps=self.steps, got_guidance=f"{self.guidance:g}",
                                      got_split=f"{self.split:g}"))
        return self

    @field_validator("prompt", "negative_prompt", mode="before")
    @classmethod
    def _clean(cls, v: Any) -> Any:
        return clean_text(v) if isinstance(v, str) else v

    @field_validator("style")
    @classmethod
    def _known_style(cls, v: str) -> str:
        styles = load_styles()
        if v not in styles:
            raise ValueError(_("unknown style; one of {styles}").format(styles=", ".join(styles)))
        return v

    @field_validator("aspect")
    @classmethod
    def _known_aspect(cls, v: str) -> str:
        if v not in ASPECTS:
            raise ValueError(_("unknown aspect; one of {aspects}").format(aspects=", ".join(ASPECTS)))
        return v

    @property
    def size(self) -> tuple[int, int]:
        return ASPECTS[self.aspect]

    @property
    def seeds(self) -> list[int]:
        """One seed per image: seed, seed+1, ... so any single image can be made again alone."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.count)]

    @property
    def base_steps(self) -> int:
        return round(self.steps * self.split)

    @property
    def adapter(self) -> str:
        """The LoRA adapter the base runs with (worker/adapters.py): the turbo recipe's, or "" for none."""
        return TURBO.adapter if self.mode == "turbo" else ""

    @property
    def batch_geometry(self) -> tuple:
        """What every request in one denoising call must share (the batching rule, here alone): one size,
        one step count, one base/refiner cut, one guidance scale, one adapter (with it, its scheduler);
        prompts, styles, seeds and counts may differ."""
        return (self.size, self.steps, self.base_steps, float(self.guidance), self.adapter)


def geometry_text(geometry: tuple) -> str:
    """A batch_geometry as a batch key (and the pipeline's error) writes it: 1024x1024/40/32/7, "/turbo" after
    it for an adapter's."""
    (w, h), steps, base_steps, guidance, adapter = geometry
    return f"{w}x{h}/{steps}/{base_steps}/{guidance:g}" + (f"/{adapter}" if adapter else "")


# A Discord locale code: en-US, ja, es-419.
LOCALE_PATTERN = r"^[a-z]{2,3}(-[A-Za-z0-9]{2,4})?$"
# What a worker never gets of an origin: the bot's own business (see Origin).
BOT_ONLY = {"locale", "guild_locale", "private"}


class Origin(_Strict):
    """Where the request came from, so the result goes back there under the same bot."""

    instance: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    guild_id: int | None = Field(None, ge=1, le=2**64 - 1)
    channel_id: int = Field(ge=1, le=2**64 - 1)
    user_id: int = Field(ge=1, le=2**64 - 1)
    application_id: int | None = Field(None, ge=1, le=2**64 - 1)
    interaction_id: int | None = Field(None, ge=1, le=2**64 - 1)
    # The interaction token lets the result edit the member's deferred reply for 15 minutes. It is
    # not a bot token: it is scoped to this one interaction and expires on its own.
    interaction_token: str | None = Field(None, max_length=600, pattern=r"^[A-Za-z0-9_.\-]+$")
    created_at: float = Field(ge=1.5e9, le=5e9)
    # Discord marks the channel age-restricted (its `nsfw` flag), as the bot saw it when the dream came in.
    channel_nsfw: bool = False
    # For the bot alone (kept in its record, never sent to a worker, like the token): the language the
    # member reads (dreamcore.i18n: their /settings override, else their Discord client's), the server's, in
    # which the bot posts to the channel on its own, and whether the result is the member's alone (private:
    # delivered in their ephemeral reply, or by direct message once that has expired).
    locale: str | None = Field(None, pattern=LOCALE_PATTERN)
    guild_locale: str | None = Field(None, pattern=LOCALE_PATTERN)
    private: bool = False


class Edit(_Strict):
    """What an edit does to the image it starts from (dreamcore.canvas lays out its canvas and mask): zoom out
    by `zoom`, pan one way, make it square, or redraw a region (`cells`, a 6x6 grid's bits, row-major)."""

    op: Literal["zoom", "pan", "square", "region"]
    zoom: float | None = Field(None, ge=1.1, le=2.0)
    direction: Literal["left", "right", "up", "down"] | None = None
    cells: int | None = Field(None, ge=1, le=2**36 - 1)

    @model_validator(mode="after")
    def _fields_match_op(self) -> Edit:
        wanted = {"zoom": "zoom", "pan": "direction", "region": "cells", "square": None}[self.op]
        for name in ("zoom", "direction", "cells"):
            if (getattr(self, name) is not None) != (name == wanted):
                raise ValueError(f"a {self.op} edit " + (f"needs {name}" if name == wanted else f"takes no {name}"))
        return self


class JobSource(_Strict):
    """The image a job starts from: image `index` of job `job_id` for a variation or an upscale; for a
    picture job, the picture a member sent with job `job_id` (dreamcore.images.source_key says where)."""

    job_id: str = Field(pattern=r"^[a-f0-9]{16}$")
    index: int = Field(ge=0, le=3)
    # How far the image is pushed back into noise: 0.55 for a variation, about 0.3 for an upscale.
    strength: float = ranges.STRENGTH.field()
    # How the source was encoded: with the job and index, its key in the image store.
    format: Literal["png", "webp", "jpeg"] = "png"
    # The output classifier's score of the source image: what is made from it is judged by the higher of
    # this and its own score, so a button never shows a flagged image unmarked (dreamcore.moderation).
    nsfw_score: float | None = Field(None, ge=0.0, le=1.0)
    # An edit's (kind "edit"): what it does to the image. Compatibility: left out when None, as the release
    # before edits writes and reads a source; goes when no bot or worker of that release runs.
    edit: Edit | None = None

    @model_serializer(mode="wrap")
    def _without_none_edit(self, handler):
        out = handler(self)
        if isinstance(out, dict) and out.get("edit", 0) is None:
            out.pop("edit")
        return out


def job_version(kind: str, request: DreamRequest | None) -> int:
    """The oldest schema version that can express a job of `kind` with `request` (see SCHEMA_VERSION)."""
    version = VERSION_OF_KIND.get(kind, SCHEMA_VERSION)
    if request is not None and request.faces != "auto":
        version = max(version, FACES_VERSION)
    if request is not None and request.mode != "quality":
        version = max(version, MODES_VERSION)
    return version


class DreamJob(_Strict):
    v: Literal[1, 2, 3, 4, 5] = 1
    job_id: str = Field(pattern=r"^[a-f0-9]{16}$")
    request: DreamRequest
    origin: Origin
    # The queue it waits in: the operator's grant to its server, or "relax" for a relax dream (dreamcore.modes).
    priority: Literal["high", "default", "low", "relax"] = "default"
    kind: Kind = Field("dream", validate_default=True)
    source: JobSource | None = Field(None, validate_default=True)

    @field_validator("kind")
    @classmethod
    def _kind_matches_version(cls, v: str, info: ValidationInfo) -> str:
        request = info.data.get("request")
        if request is None:  # the request failed its own checks, which say why: its version can't be told
            return v
        version, wanted = info.data.get("v"), job_version(v, request)
        if version is not None and wanted != version:
            set_ = [name for name, on in (("face pass", request.faces != "auto"), ("mode", request.mode != "quality"))
                    if on and wanted > VERSION_OF_KIND[v]]
            what = f"a {v} job" + (f" with its {' and '.join(set_)} set" if set_ else "")
            raise ValueError(f"{what} is written as schema version {wanted}, this one says {version}")
        return v

    @field_validator("source")
    @classmethod
    def _source_matches_kind(cls, v: JobSource | None, info: ValidationInfo) -> JobSource | None:
        kind = info.data.get("kind")
        if kind == "dream" and v is not None:
            raise ValueError("a dream job has no source image")
        if kind in ("variation", "upscale", "picture", "edit", "faces") and v is None:
            raise ValueError(f"a {kind} job needs its source (job_id, index, strength)")
        if v is not None and (v.edit is not None) != (kind == "edit"):
            raise ValueError("an edit job's source says what the edit does (edit)" if kind == "edit"
                             else f"a {kind} job's source has no edit")
        if kind == "picture" and (v.index != 0 or v.format != "png"):
            raise ValueError("a picture job's source is the member's picture (index 0, png)")
        return v

    @property
    def face_pass(self) -> FacePass | None:
        """The face pass over this job's images (worker/faces.py), None where it runs none. A variation or a
        picture job never changes a face more than its own strength changes the picture around it."""
        if self.kind == "faces":
            return FacePass("on", self.source.strength)
        # Not on a turbo dream: four steps are what it is for, and the pass would cost it half again.
        if self.kind not in FACE_PASS_KINDS or self.request.faces == "off" or self.request.mode == "turbo":
            return None
        return FacePass(self.request.faces, min(FACE_STRENGTH, self.source.strength) if self.source else FACE_STRENGTH)

    @property
    def batch_key(self) -> str | None:
        """Dreams with equal keys can share one denoising batch: the pipeline call takes one size, one step
        count, one base/refiner cut and one guidance scale; prompts, styles, seeds and counts may differ.
        None for the kinds that start from an image of their own (variations, upscales, pictures)."""
        if self.kind != "dream":
            return None
        return geometry_text(self.request.batch_geometry)

    def without_token(self) -> DreamJob:
        """The job as a worker gets it: the interaction token stays with the bot (dreamcore.delivery)."""
        if self.origin.interaction_token is None:
            return self
        return self.model_copy(update={"origin": self.origin.model_copy(update={"interaction_token": None})})

    def _dump_exclude(self) -> dict:
        # Compatibility: jobs go out exactly as the previous release wrote them (it forbids unknown keys): no
        # source for a version 1 job, and the content filter's fields only when they say something; goes with
        # the schema versions (SCHEMA_VERSION).
        out: dict = {}
        if self.source is None:
            out["source"] = True
        elif self.source.nsfw_score is None:
            out["source"] = {"nsfw_score"}
        out["origin"] = BOT_ONLY | ({"channel_nsfw"} if not self.origin.channel_nsfw else set())
        return out

    def to_json(self) -> str:
        return self.model_dump_json(exclude=self._dump_exclude())

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude=self._dump_exclude())


def describe_validation(err: ValidationError, model: type[BaseModel]) -> JobError:
    """Pydantic's errors as one message that names each field and its allowed range (dreamcore.problems);
    a token is never echoed into a message or a log."""
    found = problems(err, model, name=lambda loc: ".".join(loc) or "job",
                     hidden=lambda loc: "token" in loc[-1])
    return JobError("; ".join(text for _field, text in found), field=next((f for f, _text in found if f), "job"))


def make_request(**fields: Any) -> DreamRequest:
    """Build a request from loose input (a slash command's options); missing seed means a random one. A turbo
    request takes the turbo recipe's steps, guidance and split whatever was given (members set none of them)."""
    fields = {k: v for k, v in fields.items() if v is not None}
    fields.setdefault("seed", random_seed())
    if fields.get("mode") == "turbo":
        fields |= {"steps": TURBO.steps, "guidance": TURBO.guidance, "split": TURBO.split}
    try:
        return DreamRequest(**fields)
    except ValidationError as err:
        raise describe_validation(err, DreamRequest) from None
    except TypeError as err:  # e.g. an option name that is not a field
        raise JobError(str(err)) from None


def make_job(request: DreamRequest, origin: Origin, priority: str = "default", job_id: str | None = None,
             kind: str = "dream", source: JobSource | dict | None = None) -> DreamJob:
    """The job of `kind` for `request`. A turbo request for a kind with no turbo path (dreamcore.modes) runs in
    quality mode, at the quality defaults of the settings turbo fixed."""
    if request.mode == "turbo" and kind not in TURBO_KINDS:
        request = quality_of(request)
    try:
        return DreamJob(v=job_version(kind, request), job_id=job_id or new_job_id(),
                        request=request, origin=origin, priority=priority, kind=kind, source=source)
    except ValidationError as err:
        raise describe_validation(err, DreamJob) from None


def make_origin(**fields: Any) -> Origin:
    fields.setdefault("created_at", time.time())
    try:
        return Origin(**fields)
    except ValidationError as err:
        raise describe_validation(err, Origin) from None


def parse_job(raw: Any) -> DreamJob:
    """Read a job payload from the queue; any problem becomes one JobError with the reason."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise JobError("job payload is not UTF-8 text") from None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise JobError(f"job payload is not JSON ({err.msg} at {err.pos})") from None
        except (ValueError, RecursionError):  # a number past 4300 digits, or nesting past the recursion limit
            raise JobError("job payload is not JSON this worker reads (a huge number or too deep nesting)") from None
    if not isinstance(raw, dict):
        raise JobError(f"job payload must be a JSON object, got {type(raw).__name__}")
    version = raw.get("v")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise JobError(
            f"job was written with schema version {version!r}; this worker reads versions"
            f" {', '.join(map(str, READABLE_VERSIONS[:-1]))} and {READABLE_VERSIONS[-1]} (a bot and worker of different"
            " releases share the queue)",
            field="v",
        )
    try:
        return DreamJob.model_validate(raw)
    except ValidationError as err:
        raise describe_validation(err, DreamJob) from None


def origin_of(raw: Any) -> Origin | None:
    """Best effort: where a broken payload came from, so its member can still be told."""
    try:
        if isinstance(raw, (bytes, str)):
            raw = json.loads(raw)
        return Origin.model_validate(raw["origin"])
    except Exception:
        return None


def quality_of(request: DreamRequest) -> DreamRequest:
    """A turbo request as a quality one: the settings turbo fixed go back to /dream's defaults (the operator's
    DREAMBOT_DEFAULT_STEPS, _GUIDANCE and _SPLIT, as /dream itself fills them in)."""
    from .settings import get_settings  # settings reads this module's types: imported when first needed

    s = get_settings()
    return DreamRequest.model_validate({**request.model_dump(), "mode": "quality", "steps": s.default_steps,
                                        "guidance": s.default_guidance, "split": s.default_split})
