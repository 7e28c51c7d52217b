"""Every setting of dreambot, read from the environment (or a `.env` file) in this one place.

A bad value stops the process at start with a message that names the environment variable, the
allowed range and the value it got; a secret (a bot token) is never echoed.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .job import FaceChoice
from .modes import Mode, allowed
from .problems import problems
from .ranges import LIMITS

SDXL_BASE_ID = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_REFINER_ID = "stabilityai/stable-diffusion-xl-refiner-1.0"
# SDXL-Lightning's 4-step LoRA (openrail++): one file of its repo.
SDXL_LIGHTNING_4STEP = "ByteDance/SDXL-Lightning/sdxl_lightning_4step_lora.safetensors"
DISCORD_API_V10 = "https://discord.com/api/v10"


class SettingsError(ValueError):
    """A setting is missing or out of range; the message names the environment variable."""


def _env(name: str) -> dict:
    return {"validation_alias": AliasChoices(name)}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      populate_by_name=True)

    # --- Redis and the queue -------------------------------------------------------------
    redis_url: str = Field("redis://localhost:6379/0", **_env("REDIS_URL"))
    # Redis Sentinel (high availability): host:port of each sentinel; set, REDIS_URL's host is not used
    # (its database number still is not either: Sentinel deployments use database 0).
    redis_sentinels: str = Field("", **_env("REDIS_SENTINELS"))
    redis_sentinel_master: str = Field("dreambot", pattern=r"^[A-Za-z0-9._-]{1,64}$", **_env("REDIS_SENTINEL_MASTER"))
    # The Redis user this process logs in as and its password (compose: dreambot-bot for bots, dreambot-worker
    # for workers, each with only the keys its role needs: deploy/redis/users.acl). No username: the default user.
    redis_username: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$", **_env("REDIS_USERNAME"))
    redis_password: SecretStr | None = Field(None, **_env("REDIS_PASSWORD"))
    redis_sentinel_password: SecretStr | None = Field(None, **_env("REDIS_SENTINEL_PASSWORD"))
    # TLS (a rediss:// REDIS_URL, or REDIS_TLS=true with sentinels): the CA that signed the server's
    # certificate (a file; unset: the system's CAs), and a client certificate and key where the server asks.
    redis_tls: bool = Field(False, **_env("REDIS_TLS"))
    redis_tls_ca: str | None = Field(None, **_env("REDIS_TLS_CA"))
    redis_tls_cert: str | None = Field(None, **_env("REDIS_TLS_CERT"))
    redis_tls_key: str | None = Field(None, **_env("REDIS_TLS_KEY"))
    # A queued dream and a published result must reach this many replicas (WAIT) before the member hears
    # of them; unset: 1 with sentinels, 0 without. REDIS_WAIT_MS bounds the wait.
    redis_wait_replicas: int | None = Field(None, ge=0, le=10, **_env("REDIS_WAIT_REPLICAS"))
    redis_wait_ms: int = Field(500, ge=10, le=2500, **_env("REDIS_WAIT_MS"))
    job_timeout_s: int = Field(900, ge=30, le=86400, **_env("DREAMBOT_JOB_TIMEOUT"))
    result_ttl_s: int = Field(3600, ge=60, le=7 * 86400, **_env("DREAMBOT_RESULT_TTL"))
    failure_ttl_s: int = Field(86400, ge=60, le=30 * 86400, **_env("DREAMBOT_FAILURE_TTL"))
    # How often a busy worker renews its lease; a worker that stops renewing for
    # lease_s is taken as dead and its job is handed to another worker.
    heartbeat_s: int = Field(10, ge=1, le=600, **_env("DREAMBOT_HEARTBEAT"))
    lease_s: int = Field(60, ge=5, le=3600, **_env("DREAMBOT_LEASE"))
    job_retries: int = Field(2, ge=0, le=10, **_env("DREAMBOT_JOB_RETRIES"))
    # Backpressure, per server: a server whose next dream would wait past this many minutes (its place in the
    # fair queue behind its own backlog, at the measured speed) is told "busy" while the others are served.
    max_wait_min: int = Field(30, ge=1, le=1440, **_env("DREAMBOT_MAX_WAIT_MIN"))
    # Dreams in direct messages: on (each member's own limits there, the defaults') or off (refused).
    direct_messages: bool = Field(True, **_env("DREAMBOT_DIRECT_MESSAGES"))

    # --- The worker -----------------------------------------------------------------------
    base_model: str = Field(SDXL_BASE_ID, min_length=1, **_env("DREAMBOT_BASE_MODEL"))
    refiner_model: str = Field(SDXL_REFINER_ID, min_length=1, **_env("DREAMBOT_REFINER_MODEL"))
    # /dream mode:turbo's LoRA on the base (worker/adapters.py): a hub file "owner/repo/file.safetensors" (from
    # the HF cache: fetch-models gets it), a local .safetensors file or a folder holding one; off: this pool
    # runs no turbo (a turbo job fails with a message saying so).
    turbo_adapter: str = Field(SDXL_LIGHTNING_4STEP, min_length=1, **_env("DREAMBOT_TURBO_ADAPTER"))
    device: Literal["auto", "cuda", "cpu"] = Field("auto", **_env("DREAMBOT_DEVICE"))
    # The weights' dtype; auto: bf16 on GPUs of compute capability 8.0+, fp16 on older ones, fp32 on a CPU
    # (bf16 there for full-size models). worker/weights.py choose_dtype.
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", **_env("DREAMBOT_DTYPE"))
    # Where the weights live: none keeps all on the device; model is diffusers' model CPU offload (one model on
    # the device at a time, for 12-16 GB cards); auto measures the device's free memory and takes the fastest
    # that fits (worker/memory.py).
    offload: Literal["auto", "none", "model"] = Field("auto", **_env("DREAMBOT_OFFLOAD"))
    max_upload_mb: float = Field(10.0, gt=0, le=500, **_env("DREAMBOT_MAX_UPLOAD_MB"))
    output_dir: str = Field("dream-out", min_length=1, **_env("DREAMBOT_OUTPUT_DIR"))
    # Batching: a worker that takes a dream also takes waiting dreams it can denoise in the same batch
    # (same size, steps, split and guidance), up to this many images in all; 1 turns batching off.
    batch_images: int = Field(8, ge=1, le=32, **_env("DREAMBOT_BATCH_IMAGES"))
    # How many waiting jobs, from the front of the queues, a worker looks through for batch companions.
    batch_window: int = Field(32, ge=1, le=1000, **_env("DREAMBOT_BATCH_WINDOW"))
    # Speed levers (worker/speed.py). The lossless ones keep a seed's image the same within bf16 tolerance:
    fuse_qkv: bool = Field(True, **_env("DREAMBOT_FUSE_QKV"))
    channels_last: bool = Field(True, **_env("DREAMBOT_CHANNELS_LAST"))
    # torch.compile the UNets and the VAE decoder at worker start; auto: on a GPU, not on a CPU (where
    # inductor takes minutes for the tiny model). The compiled code is saved to DREAMBOT_COMPILE_CACHE and
    # loaded from there at the next start. Only the sizes in DREAMBOT_COMPILE_ASPECTS ("all": every aspect)
    # are compiled, at every batch bucket, all before the first job; other sizes run uncompiled.
    compile: Literal["auto", "on", "off"] = Field("auto", **_env("DREAMBOT_COMPILE"))
    compile_cache: str = Field("compile-cache", **_env("DREAMBOT_COMPILE_CACHE"))
    compile_aspects: str = Field("1:1", min_length=1, **_env("DREAMBOT_COMPILE_ASPECTS"))
    # The lossy levers, off by default; each one's deviation from the image without it is measured in
    # bench/gpu_sdxl.py. fp8: the UNets' transformer linears in float8 through torchao (the `fp8` extra):
    # weights (memory only; any device), or dynamic (activations too, fp8 matrix units: a GPU of compute
    # capability 8.9 or more). At load the worker logs the UNet's output error against the unquantized one.
    fp8: Literal["off", "weights", "dynamic"] = Field("off", **_env("DREAMBOT_FP8"))
    # Step caching on the base (DeepCache): a full UNet pass every N steps, the steps between reuse its deep
    # features and run only the outermost blocks. 0: off; 2 to 10.
    step_cache: int = Field(0, ge=0, le=10, **_env("DREAMBOT_STEP_CACHE"))
    # The refiner's last N steps without classifier-free guidance (one UNet pass each instead of two). 0: off.
    refiner_unguided_steps: int = Field(0, ge=0, le=100, **_env("DREAMBOT_REFINER_UNGUIDED_STEPS"))
    # The output classifier (worker/classifier.py) scores every image before it is published; each guild's
    # policy decides what a flagged one becomes (dreamcore/moderation.py). false: images are posted unscored.
    safety_check: bool = Field(True, **_env("DREAMBOT_SAFETY_CHECK"))
    # A transformers image classifier: a hub id (from the HF cache) or a local folder.
    safety_model: str = Field("Falconsai/nsfw_image_detection", min_length=1, **_env("DREAMBOT_SAFETY_MODEL"))
    # Its labels whose probability is the score, comma-separated (e.g. "porn,hentai,sexy" for other models).
    safety_labels: str = Field("nsfw", min_length=1, max_length=500, **_env("DREAMBOT_SAFETY_LABELS"))

    # --- Dream defaults -------------------------------------------------------------------
    default_steps: int = Field(40, ge=1, le=100, **_env("DREAMBOT_DEFAULT_STEPS"))
    default_guidance: float = Field(7.0, ge=0.0, le=30.0, **_env("DREAMBOT_DEFAULT_GUIDANCE"))
    default_split: float = Field(0.8, ge=0.5, le=1.0, **_env("DREAMBOT_DEFAULT_SPLIT"))

    # --- The buttons under each result (Reroll, Variations, Upscale, Delete, Info) --------
    # How long a result's parameters stay for Reroll, Info and Delete (its images stay DREAMBOT_RESULT_TTL).
    params_ttl_s: int = Field(7 * 86400, ge=3600, le=90 * 86400, **_env("DREAMBOT_PARAMS_TTL"))
    variation_strength: float = Field(0.55, ge=0.05, le=1.0, **_env("DREAMBOT_VARIATION_STRENGTH"))
    upscale_strength: float = Field(0.3, ge=0.05, le=1.0, **_env("DREAMBOT_UPSCALE_STRENGTH"))
    # Vary (Subtle) and Vary (Strong), under a one-image result: the two strengths Midjourney offers there.
    vary_subtle_strength: float = Field(0.35, ge=0.05, le=1.0, **_env("DREAMBOT_VARY_SUBTLE_STRENGTH"))
    vary_strong_strength: float = Field(0.75, ge=0.05, le=1.0, **_env("DREAMBOT_VARY_STRONG_STRENGTH"))
    # A member's picture for /dream (dreamcore/image_in.py): the largest file, checked against the size Discord
    # reports before a byte is downloaded, and the most pixels, checked before any is decoded.
    input_max_mb: float = Field(25.0, gt=0, le=100, **_env("DREAMBOT_INPUT_MAX_MB"))
    input_max_megapixels: float = Field(50.0, ge=1, le=150, **_env("DREAMBOT_INPUT_MAX_MEGAPIXELS"))
    # How long the bot waits for Discord's CDN to hand over a member's picture.
    input_download_timeout_s: float = Field(10.0, ge=1, le=60, **_env("DREAMBOT_INPUT_DOWNLOAD_TIMEOUT"))
    # The refiner upscales in tiles of at most this many pixels a side, so GPU memory stays that of one tile.
    upscale_tile: int = Field(1024, ge=256, le=2048, multiple_of=8, **_env("DREAMBOT_UPSCALE_TILE"))
    upscale_overlap: int = Field(128, ge=16, le=512, multiple_of=8, **_env("DREAMBOT_UPSCALE_OVERLAP"))

    # --- One bot instance -----------------------------------------------------------------
    discord_token: SecretStr | None = Field(None, **_env("DISCORD_TOKEN"))
    instance: str = Field("dreambot", pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", **_env("DREAMBOT_INSTANCE"))
    discord_api_base: str = Field(DISCORD_API_V10, **_env("DISCORD_API_BASE"))
    guild_ids: str = Field("", **_env("DISCORD_GUILD_IDS"))
    channel_ids: str = Field("", **_env("DREAMBOT_CHANNEL_IDS"))

    # --- Logs -----------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", **_env("DREAMBOT_LOG_LEVEL"))
    log_format: Literal["json", "text"] = Field("json", **_env("DREAMBOT_LOG_FORMAT"))

    # --- Guild limit defaults ---
    # What a guild gets until its admins change it (dreamcore/limits.py), in the ranges GuildLimits takes
    # (dreamcore/ranges.py LIMITS).
    limit_cooldown_s: int = LIMITS["cooldown_s"].field(10, **_env("DREAMBOT_LIMIT_COOLDOWN_S"))
    limit_user_max_active: int = LIMITS["user_max_active"].field(2, **_env("DREAMBOT_LIMIT_USER_MAX_ACTIVE"))
    limit_user_images_hour: int = LIMITS["user_images_hour"].field(30, **_env("DREAMBOT_LIMIT_USER_IMAGES_HOUR"))
    limit_user_images_day: int = LIMITS["user_images_day"].field(100, **_env("DREAMBOT_LIMIT_USER_IMAGES_DAY"))
    limit_guild_images_hour: int = LIMITS["guild_images_hour"].field(300, **_env("DREAMBOT_LIMIT_GUILD_IMAGES_HOUR"))
    limit_guild_images_day: int = LIMITS["guild_images_day"].field(1500, **_env("DREAMBOT_LIMIT_GUILD_IMAGES_DAY"))
    limit_max_images: int = LIMITS["max_images"].field(4, **_env("DREAMBOT_LIMIT_MAX_IMAGES"))
    limit_max_steps: int = LIMITS["max_steps"].field(60, **_env("DREAMBOT_LIMIT_MAX_STEPS"))
    limit_guild_max_queued: int = LIMITS["guild_max_queued"].field(50, **_env("DREAMBOT_LIMIT_GUILD_MAX_QUEUED"))
    # Output safety (dreamcore/moderation.py): an image scoring at least this is flagged (1: none is), and
    # what becomes of it: withhold, spoiler, or age_restricted (shown only in age-restricted channels).
    limit_nsfw_threshold: float = LIMITS["nsfw_threshold"].field(0.5, **_env("DREAMBOT_LIMIT_NSFW_THRESHOLD"))
    limit_nsfw_action: Literal["withhold", "spoiler", "age_restricted"] = Field(
        "withhold", **_env("DREAMBOT_LIMIT_NSFW_ACTION"))
    # Whether members may start a dream from their own picture: on, off, or only in age-restricted channels.
    limit_images_in: Literal["on", "off", "age_restricted"] = Field("on", **_env("DREAMBOT_LIMIT_IMAGES_IN"))
    # The face pass where a /dream leaves it out (worker/faces.py): auto, on or off.
    limit_faces: FaceChoice = Field("auto", **_env("DREAMBOT_LIMIT_FACES"))
    # The mode where a /dream leaves it out, and whether members may choose turbo and relax (dreamcore.modes).
    limit_mode: Mode = Field("quality", **_env("DREAMBOT_LIMIT_MODE"))
    limit_turbo: Literal["on", "off"] = Field("on", **_env("DREAMBOT_LIMIT_TURBO"))
    limit_relax: Literal["on", "off"] = Field("on", **_env("DREAMBOT_LIMIT_RELAX"))
    # Whether members' private results (their /settings) are private here; off: every result is posted.
    limit_private: Literal["on", "off"] = Field("on", **_env("DREAMBOT_LIMIT_PRIVATE"))
    # --- end of guild limit defaults ---

    # --- The image store (dreamcore/images.py): image bytes never pass through Redis ---
    image_store: Literal["folder", "s3"] = Field("folder", **_env("DREAMBOT_IMAGE_STORE"))
    image_dir: str = Field("dream-images", min_length=1, **_env("DREAMBOT_IMAGE_DIR"))
    image_retention_days: int = Field(30, ge=1, le=3650, **_env("DREAMBOT_IMAGE_RETENTION_DAYS"))
    s3_endpoint_url: str | None = Field(None, **_env("DREAMBOT_S3_ENDPOINT_URL"))
    s3_bucket: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", **_env("DREAMBOT_S3_BUCKET"))
    s3_prefix: str = Field("dreambot/", max_length=200, pattern=r"^([A-Za-z0-9._-]+/)*$",
                           **_env("DREAMBOT_S3_PREFIX"))
    s3_region: str | None = Field(None, **_env("DREAMBOT_S3_REGION"))
    s3_access_key_id: str | None = Field(None, **_env("DREAMBOT_S3_ACCESS_KEY_ID"))
    s3_secret_access_key: SecretStr | None = Field(None, **_env("DREAMBOT_S3_SECRET_ACCESS_KEY"))
    s3_set_lifecycle: bool = Field(False, **_env("DREAMBOT_S3_SET_LIFECYCLE"))
    # Key for hashing member ids in `dreambot export-votes --format parquet` (unset: a new one per export).
    export_salt: SecretStr | None = Field(None, **_env("DREAMBOT_EXPORT_SALT"))
    # Progress nudges go to their own lossy stream, capped at this many entries per bot instance;
    # results have a stream of their own that is never trimmed before the bot acknowledges them.
    progress_stream_len: int = Field(1000, ge=10, le=1_000_000, **_env("DREAMBOT_PROGRESS_STREAM_LEN"))

    # --- Metrics and health ---
    # One port per process for Prometheus (/metrics) and the health check (/healthz); 0 turns both off.
    metrics_port: int = Field(9100, ge=0, le=65535, **_env("DREAMBOT_METRICS_PORT"))
    # --- end of metrics and health ---

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_switch(cls, v):
        # true/false as every other switch takes them, and auto.
        if isinstance(v, bool):
            return "on" if v else "off"
        if isinstance(v, str):
            word = v.strip().lower()
            return {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}.get(word, word)
        return v

    @field_validator("compile_aspects")
    @classmethod
    def _aspects(cls, v: str) -> str:
        parse_aspects(v)
        return v

    @field_validator("step_cache")
    @classmethod
    def _step_cache_interval(cls, v: int) -> int:
        if v == 1:
            raise ValueError("1 would make every step a full pass, i.e. no caching: use 0 (off) or 2 to 10")
        return v

    @field_validator("upscale_overlap")
    @classmethod
    def _overlap_below_half_a_tile(cls, v: int, info) -> int:
        tile = info.data.get("upscale_tile")
        if tile is not None and v * 2 >= tile:
            raise ValueError(f"must be under half of DREAMBOT_UPSCALE_TILE ({tile})")
        return v

    @field_validator("s3_endpoint_url", "s3_bucket", "s3_region", "s3_access_key_id", mode="before")
    @classmethod
    def _blank_is_unset(cls, v):
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as https://<account>.r2.cloudflarestorage.com")
        return v

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self):
        if self.image_store == "s3" and not self.s3_bucket:
            raise ValueError("DREAMBOT_IMAGE_STORE=s3 needs DREAMBOT_S3_BUCKET")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError("set both DREAMBOT_S3_ACCESS_KEY_ID and DREAMBOT_S3_SECRET_ACCESS_KEY, or neither "
                             "(then boto3 finds credentials itself: AWS_* variables, an instance role)")
        return self

    @model_validator(mode="after")
    def _default_mode_on(self):
        if not allowed(self.limit_mode, self.limit_turbo, self.limit_relax):
            raise ValueError(f"DREAMBOT_LIMIT_MODE={self.limit_mode} needs DREAMBOT_LIMIT_{self.limit_mode.upper()}=on")
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("redis_username", "redis_tls_ca", "redis_tls_cert", "redis_tls_key", mode="before")
    @classmethod
    def _blank_means_unset(cls, v):
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("redis_password", "redis_sentinel_password", mode="before")
    @classmethod
    def _blank_password_is_none(cls, v):
        return None if isinstance(v, str) and not v else v

    @field_validator("redis_tls_ca", "redis_tls_cert", "redis_tls_key")
    @classmethod
    def _readable_file(cls, v: str | None) -> str | None:
        if v is not None and not os.path.isfile(v):
            raise ValueError(f"no such file: {v}")
        return v

    @model_validator(mode="after")
    def _tls_pairs(self):
        if (self.redis_tls_cert is None) != (self.redis_tls_key is None):
            raise ValueError("set both REDIS_TLS_CERT and REDIS_TLS_KEY (a client certificate and its key), or neither")
        return self

    @property
    def redis_uses_tls(self) -> bool:
        return self.redis_tls or self.redis_url.startswith("rediss://")

    @field_validator("discord_api_base")
    @classmethod
    def _api_base(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as https://discord.com/api/v10")
        return v.rstrip("/")

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, v: str) -> str:
        parse_host_ports(v)
        return v

    @field_validator("redis_wait_replicas", mode="before")
    @classmethod
    def _wait_blank(cls, v):
        return None if isinstance(v, str) and not v.strip() else v

    @property
    def sentinel_list(self) -> list[tuple[str, int]]:
        return parse_host_ports(self.redis_sentinels)

    @field_validator("guild_ids", "channel_ids")
    @classmethod
    def _id_list(cls, v: str) -> str:
        parse_id_list(v)
        return v

    @property
    def safety_label_list(self) -> list[str]:
        return [x.strip() for x in self.safety_labels.split(",") if x.strip()]

    @property
    def guild_id_list(self) -> list[int]:
        return parse_id_list(self.guild_ids)

    @property
    def channel_id_list(self) -> list[int]:
        return parse_id_list(self.channel_ids)

    @property
    def compile_aspect_list(self) -> list[str]:
        return parse_aspects(self.compile_aspects)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def input_max_bytes(self) -> int:
        return int(self.input_max_mb * 1_000_000)

    @property
    def input_max_pixels(self) -> int:
        return int(self.input_max_megapixels * 1_000_000)


def parse_host_ports(raw: str) -> list[tuple[str, int]]:
    """Comma- or space-separated host:port pairs."""
    out = []
    for part in raw.replace(",", " ").split():
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    return out


def parse_aspects(raw: str) -> list[str]:
    """DREAMBOT_COMPILE_ASPECTS: comma- or space-separated aspect names of /dream ("1:1, 7:4"), or "all"."""
    from .job import ASPECTS

    words = raw.replace(",", " ").split()
    if words == ["all"]:
        return list(ASPECTS)
    unknown = [w for w in words if w not in ASPECTS]
    if unknown or not words:
        raise ValueError(f"{', '.join(unknown) or 'nothing'} is not an aspect: name some of "
                         f"{', '.join(ASPECTS)}, or all")
    return list(dict.fromkeys(words))


def parse_id_list(raw: str) -> list[int]:
    """Comma- or space-separated Discord snowflakes."""
    out = []
    for part in raw.replace(",", " ").split():
        if not part.isdigit() or not 0 < int(part) < 2**64:
            raise ValueError(f"{part!r} is not a Discord id (a positive integer)")
        out.append(int(part))
    return out


# Never echoed in an error or a start-up log.
SECRETS = frozenset({"DISCORD_TOKEN", "DREAMBOT_S3_SECRET_ACCESS_KEY", "DREAMBOT_S3_ACCESS_KEY_ID",
                     "DREAMBOT_EXPORT_SALT", "REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD"})


def _alias_of(field: str) -> str:
    info = Settings.model_fields[field]
    return info.validation_alias.choices[0]  # type: ignore[union-attr]


def describe_errors(err: ValidationError) -> str:
    def name(loc: list[str]) -> str:
        if not loc:
            return "settings"  # a check across settings: its message names them
        return "setting " + (_alias_of(loc[0]) if loc[0] in Settings.model_fields else loc[0])

    def hidden(loc: list[str]) -> bool:
        return (_alias_of(loc[0]) if loc[0] in Settings.model_fields else loc[0]) in SECRETS

    return "; ".join(text for _, text in problems(err, Settings, name=name, hidden=hidden))


def load_settings(**overrides) -> Settings:
    """Read the settings; raises SettingsError with every bad variable named."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise SettingsError(describe_errors(err)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def env_snapshot() -> dict[str, str]:
    """The dreambot variables that are set, for start-up logs (secrets left out)."""
    keep = ("REDIS_", "DREAMBOT_", "DISCORD_API_BASE", "DISCORD_GUILD_IDS")
    return {k: _no_userinfo(v) for k, v in os.environ.items() if k.startswith(keep) and k not in SECRETS}


def _no_userinfo(value: str) -> str:
    """redis://user:password@host -> redis://user:***@host: a URL's password never reaches a log."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", value)
