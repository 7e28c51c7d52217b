"""Where finished images live: a folder (one host) or S3-compatible object storage (many hosts).

Redis carries only references (the claim-check pattern, as AI Horde does with R2): a worker writes each
image once, under a key derived from its job (`<job>/<index>.<format>`, plus `<job>/params.json`, the
record the buttons read), and the bot that posts, or a later Variations/Upscale job, reads the bytes back
from here. Images are kept DREAMBOT_IMAGE_RETENTION_DAYS: `get` answers None for anything older, whether
or not a sweep (folder) or a lifecycle rule (S3) has deleted it yet, so "no longer kept" means the same
on every store.

A store that can't be reached raises `ImageStoreError`; what the caller does with it (retry the job,
leave the delivery pending) is the caller's business. Credentials are never logged: `describe()` says
where a store points without them.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path

from .settings import Settings

log = logging.getLogger("dreambot.images")

DAY = 86400
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}){0,3}$")
CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg", "json": "application/json"}


class ImageStoreError(RuntimeError):
    """The store could not be reached or refused the operation (not "this image is not kept")."""


def image_key(job_id: str, index: int, fmt: str) -> str:
    return f"{job_id}/{int(index)}.{fmt}"


def input_key(job_id: str) -> str:
    """The member's own picture a picture job starts from (dreamcore.image_in made it; the bot stores it)."""
    return f"{job_id}/input.png"


def source_key(kind: str, source) -> str:
    """Where the image a job starts from (a dreamcore.job.JobSource) is kept: the picture a member sent, or a
    finished image."""
    if kind == "picture":
        return input_key(source.job_id)
    return image_key(source.job_id, source.index, source.format)


def params_copy_key(job_id: str) -> str:
    """The copy of a job's button record (dreamcore.params) kept beside its images."""
    return f"{job_id}/params.json"


def _check(key: str) -> str:
    if not KEY_PATTERN.match(key) or ".." in key:
        raise ValueError(f"not an image store key: {key!r}")
    return key


class ImageStore(ABC):
    def __init__(self, retention_days: int):
        self.retention_s = int(retention_days) * DAY

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` (overwriting: a retried job writes the same bytes again)."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The bytes, or None when nothing is kept under `key` (never stored, or past retention)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether `get` would return bytes, without fetching them."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Forget these objects (a member deleted their result); missing ones are no error."""

    def sweep(self) -> int:
        """Delete what retention no longer keeps; returns how many objects went. Stores whose backend
        expires objects itself (an S3 lifecycle rule) do nothing here."""
        return 0

    @abstractmethod
    def describe(self) -> str:
        """Where this store points, for logs (no credentials)."""


class FolderStore(ImageStore):
    """Files under one folder, shared by workers and bots on one host (compose mounts one volume)."""

    def __init__(self, root: str | os.PathLike, retention_days: int):
        super().__init__(retention_days)
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / _check(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write beside, then rename: a reader never sees half an image, a crash leaves no torn file.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as err:
            raise ImageStoreError(f"can't write {key} under {self.root}: {err.strerror or err}") from err

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            if time.time() - path.stat().st_mtime > self.retention_s:
                return None
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise ImageStoreError(f"can't read {key} under {self.root}: {err.strerror or err}") from err

    def exists(self, key: str) -> bool:
        try:
            return time.time() - self._path(key).stat().st_mtime <= self.retention_s
        except FileNotFoundError:
            return False
        except OSError as err:
            raise ImageStoreError(f"can't read {key} under {self.root}: {err.strerror or err}") from err

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as err:
                raise ImageStoreError(f"can't delete {key} under {self.root}: {err.strerror or err}") from err

    def sweep(self) -> int:
        if not self.root.is_dir():
            return 0
        cutoff, gone = time.time() - self.retention_s, 0
        for folder in [p for p in self.root.iterdir() if p.is_dir()]:
            try:
                for f in folder.iterdir():
                    # Leftover temp files of a crashed write go too, once they are an hour old.
                    old = f.stat().st_mtime < (time.time() - 3600 if f.name.startswith(".tmp-") else cutoff)
                    if f.is_file() and old:
                        f.unlink(missing_ok=True)
                        gone += 1
                if not any(folder.iterdir()):
                    folder.rmdir()
            except OSError as err:  # another sweeper got there first, or a permission problem: next time
                log.debug("sweep skipped a folder", extra={"folder": folder.name, "error": str(err)})
        if gone:
            log.info("image store swept", extra={"removed": gone, "store": self.describe()})
        return gone

    def describe(self) -> str:
        return f"folder {self.root}"


class S3Store(ImageStore):
    """S3-compatible object storage (AWS S3, Cloudflare R2, MinIO, Backblaze B2) through boto3."""

    def __init__(self, bucket: str, prefix: str, retention_days: int, endpoint_url: str | None = None,
                 region: str | None = None, access_key_id: str | None = None, secret_access_key: str | None = None,
                 client=None):
        super().__init__(retention_days)
        self.bucket, self.prefix, self.endpoint_url = bucket, prefix, endpoint_url
        self.retention_days = int(retention_days)
        if client is None:
            import boto3
            from botocore.config import Config

            # Explicit keys when set; otherwise boto3's own chain (AWS_* env, an instance role, ~/.aws).
            client = boto3.client(
                "s3", endpoint_url=endpoint_url or None, region_name=region or None,
                aws_access_key_id=access_key_id or None, aws_secret_access_key=secret_access_key or None,
                config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 4, "mode": "standard"}),
            )
        self.s3 = client

    def _key(self, key: str) -> str:
        return self.prefix + _check(key)

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        ext = key.rsplit(".", 1)[-1]
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                               ContentType=CONTENT_TYPES.get(ext, "application/octet-stream"))
        except (BotoCoreError, ClientError) as err:
            raise ImageStoreError(f"can't write {key} to {self.describe()}: {_why(err)}") from err

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self._key(key))
            if time.time() - obj["LastModified"].timestamp() > self.retention_s:
                obj["Body"].close()
                return None
            return obj["Body"].read()
        except (BotoCoreError, ClientError) as err:
            if _not_found(err):
                return None
            raise ImageStoreError(f"can't read {key} from {self.describe()}: {_why(err)}") from err

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as err:
            if _not_found(err):
                return False
            raise ImageStoreError(f"can't read {key} from {self.describe()}: {_why(err)}") from err
        return time.time() - head["LastModified"].timestamp() <= self.retention_s

    def delete(self, keys: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        if not keys:
            return
        try:
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(k)} for k in keys],
                                                               "Quiet": True})
        except (BotoCoreError, ClientError) as err:
            raise ImageStoreError(f"can't delete from {self.describe()}: {_why(err)}") from err

    def set_lifecycle(self) -> bool:
        """Ask the bucket to expire this prefix after the retention (needs s3:GetLifecycleConfiguration and
        s3:PutLifecycleConfiguration; without them, set the rule by hand as the README shows). The bucket's
        other rules are kept: S3 replaces a bucket's whole configuration on every put, so the rule is merged
        into what is there (ours replaced by its ID). Refused for an empty prefix, which would expire every
        object in the bucket, the operator's other data included. True when the rule is in place."""
        from botocore.exceptions import BotoCoreError, ClientError

        if not self.prefix:
            log.warning("not setting a lifecycle rule: DREAMBOT_S3_PREFIX is empty, and a rule on an empty "
                        "prefix expires every object in the bucket; give dreambot a prefix of its own or set "
                        "the rule by hand", extra={"store": self.describe()})
            return False
        rule = {"ID": f"dreambot-retention-{self.prefix}".replace("/", "-")[:255],
                "Filter": {"Prefix": self.prefix}, "Status": "Enabled",
                "Expiration": {"Days": self.retention_days}}
        try:
            try:
                rules = self.s3.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", [])
            except ClientError as err:
                if _why(err) != "NoSuchLifecycleConfiguration":
                    raise
                rules = []
            others = [r for r in rules if r.get("ID") != rule["ID"]]
            self.s3.put_bucket_lifecycle_configuration(Bucket=self.bucket,
                                                       LifecycleConfiguration={"Rules": [*others, rule]})
        except (BotoCoreError, ClientError) as err:
            log.warning("could not set the bucket's lifecycle rule; images past retention are no longer "
                        "served but stay in the bucket until a rule deletes them",
                        extra={"store": self.describe(), "error": _why(err)})
            return False
        log.info("bucket lifecycle rule set", extra={"store": self.describe(), "days": self.retention_days,
                                                     "other_rules_kept": len(others)})
        return True

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


def _not_found(err: Exception) -> bool:
    return _why(err) in ("NoSuchKey", "404", "NotFound")


def _why(err: Exception) -> str:
    code = getattr(err, "response", {}).get("Error", {}).get("Code") if hasattr(err, "response") else None
    return code or type(err).__name__


def open_store(settings: Settings) -> ImageStore:
    """The store the settings name (DREAMBOT_IMAGE_STORE)."""
    if settings.image_store == "s3":
        secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
        store: ImageStore = S3Store(settings.s3_bucket or "", settings.s3_prefix, settings.image_retention_days,
                                    endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                                    access_key_id=settings.s3_access_key_id, secret_access_key=secret)
    else:
        store = FolderStore(settings.image_dir, settings.image_retention_days)
    return store
