"""What a guild does with an image the output classifier flagged (the worker scores, worker/classifier.py; the
bot applies this when it posts, so an admin's change applies to the next post).

Per guild (`/dreamadmin set`, stored with the limits): `nsfw_threshold` (an image whose score is at least
this is flagged; 1 flags nothing) and `nsfw_action`:

* `withhold` (default): a flagged image is not posted; the member is told privately that it was held back.
* `spoiler`: it is posted behind Discord's spoiler cover with a content note.
* `age_restricted`: it is posted as is in channels Discord marks age-restricted (`nsfw`); elsewhere it is
  withheld, the stricter action.

A variation or upscale of an image carries its source's score (JobSource.nsfw_score): what it makes is
judged by the higher of the two, so a button never shows a flagged image unmarked.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import redis

from . import keys

Action = Literal["withhold", "spoiler", "age_restricted"]
ACTIONS: tuple[str, ...] = ("withhold", "spoiler", "age_restricted")
Verdict = Literal["show", "spoiler", "withhold"]
# How a verdict is counted, in /dreamadmin usage and the metrics.
COUNTED = {"spoiler": "spoilered", "withhold": "withheld", "flagged_shown": "shown_age_restricted"}


def effective_score(score: float | None, source_score: float | None = None) -> float | None:
    """An image's own score, or its source's when that is higher (a variation of a flagged image)."""
    given = [s for s in (score, source_score) if s is not None]
    return max(given) if given else None


def is_flagged(score: float | None, threshold: float) -> bool:
    """Unscored images (the classifier off, an older worker) are not flagged; a threshold of 1 flags none."""
    return score is not None and threshold < 1.0 and score >= threshold


def verdict(score: float | None, threshold: float, action: str, channel_nsfw: bool) -> Verdict:
    if not is_flagged(score, threshold):
        return "show"
    if action == "spoiler":
        return "spoiler"
    if action == "age_restricted" and channel_nsfw:
        return "show"
    return "withhold"


@dataclass(frozen=True)
class Moderated:
    """The verdict on each image of one result, and what the post says about it."""

    verdicts: list[Verdict]
    scores: list[float | None]
    flagged: list[bool]
    threshold: float
    action: str
    source_score: float | None = None  # of the image it started from (a variation's, a member's picture)

    @property
    def shown(self) -> list[int]:
        return [i for i, v in enumerate(self.verdicts) if v != "withhold"]

    @property
    def withheld(self) -> list[int]:
        return [i for i, v in enumerate(self.verdicts) if v == "withhold"]

    @property
    def spoilered(self) -> list[int]:
        return [i for i, v in enumerate(self.verdicts) if v == "spoiler"]

    def counts(self) -> dict[str, int]:
        """Flagged images by what became of them (COUNTED's names); unflagged images are not counted."""
        out: dict[str, int] = {}
        for v, f in zip(self.verdicts, self.flagged, strict=True):
            if not f:
                continue
            name = COUNTED["flagged_shown"] if v == "show" else COUNTED[v]
            out[name] = out.get(name, 0) + 1
        return out

    def public_note(self, job_id: str | None = None) -> str | None:
        """The line under the post (seen by everyone): neutral, no scores. With everything held back the
        post has no image to say whose it is, so the note names the job (its Delete button checks that)."""
        lines = []
        if self.spoilered:
            which = _which(self.spoilered, len(self.verdicts))
            lines.append(f"-# ⚠️ Content note: {which} behind a spoiler: this server's content filter marked "
                         f"{'it' if len(self.spoilered) == 1 else 'them'} as possibly sensitive.")
        if self.withheld:
            total = len(self.verdicts)
            if not self.shown:
                what = "The image was" if total == 1 else f"All {total} images were"
            else:
                what = f"{len(self.withheld)} of {total} images {'was' if len(self.withheld) == 1 else 'were'}"
            mark = f" {withheld_marker(job_id)}" if job_id and not self.shown else ""
            lines.append(f"-# 🛡️ {what} held back by this server's content filter{mark}.")
        return "\n".join(lines) or None

    def private_note(self, job_id: str) -> str | None:
        """What only the member reads when an image was held back."""
        if not self.withheld:
            return None
        where = (" Here they are shown in age-restricted channels only." if self.action == "age_restricted"
                 else "")
        if is_flagged(self.source_score, self.threshold):
            return (f"🛡️ The image your dream `{job_id}` started from scores {self.source_score:.2f} on this server's "
                    f"content filter, which flags images scoring {self.threshold:.2f} or more, so what was made "
                    f"from it was held back.{where} Try another picture.")
        parts = ", ".join(f"image {i + 1} (score {self.scores[i]:.2f})" for i in self.withheld)
        return (f"🛡️ From your dream `{job_id}`, {parts} {'was' if len(self.withheld) == 1 else 'were'} held back: "
                f"this server's content filter flags images scoring {self.threshold:.2f} or more.{where} "
                f"Try another seed or a different prompt.")


def withheld_marker(job_id: str) -> str:
    return f"(job `{job_id}`)"


def _which(indexes: list[int], total: int) -> str:
    if total == 1:
        return "the image is"
    if len(indexes) == total:
        return "all images are"
    names = ", ".join(str(i + 1) for i in indexes)
    return f"image{'s' * (len(indexes) > 1)} {names} {'are' if len(indexes) > 1 else 'is'}"


def moderate(scores: Iterable[float | None], source_score: float | None, threshold: float, action: str,
             channel_nsfw: bool) -> Moderated:
    eff = [effective_score(s, source_score) for s in scores]
    return Moderated(verdicts=[verdict(s, threshold, action, channel_nsfw) for s in eff], scores=eff,
                     flagged=[is_flagged(s, threshold) for s in eff], threshold=threshold, action=action,
                     source_score=source_score)


# --- Flag counts per guild -------------------------------------------------------------------------


def _day(now: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(now))


def record(conn: redis.Redis, guild_id: int | None, counts: dict[str, int], now: float | None = None) -> None:
    """Add one post's flagged images to its guild's count for the day (UTC)."""
    if not counts or guild_id is None:
        return
    key = keys.safety_flags(guild_id, _day(time.time() if now is None else now))
    with conn.pipeline(transaction=True) as pipe:
        for name, n in counts.items():
            pipe.hincrby(key, name, n)
        pipe.expire(key, keys.SAFETY_FLAGS_TTL_S)
        pipe.execute()


def flag_counts(conn: redis.Redis, guild_id: int | None, days: int = 7, now: float | None = None) -> dict:
    """{"today": {...}, "week": {...}}: flagged images by what became of them, today (UTC) and the last
    `days` days including today."""
    now = time.time() if now is None else now
    stamps = [_day(now - d * 86400) for d in range(days)]
    with conn.pipeline(transaction=False) as pipe:
        for s in stamps:
            pipe.hgetall(keys.safety_flags(guild_id, s))
        raw = pipe.execute()
    days_counts = [{(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in h.items()} for h in raw]
    total: dict[str, int] = {}
    for day in days_counts:
        for name, n in day.items():
            total[name] = total.get(name, 0) + n
    return {"today": days_counts[0], "week": total}
