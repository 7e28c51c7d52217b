"""What a bot instance asks of Redis when a member types /dream: limits, then the queue.

Plain synchronous redis-py and RQ, called from the bot's event loop through a thread, so the bot and the
tests and the demo share one implementation of "submit a job".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from dreamcore.job import DreamJob
from dreamcore.queue import DreamQueue
from dreamcore.settings import Settings

log = logging.getLogger("dreambot.bot")

UNAVAILABLE = "I can't queue dreams right now (the queue is unreachable). Please try again in a minute."


@dataclass
class Outcome:
    ok: bool
    message: str = ""
    job_id: str | None = None
    position: int | None = None
    kind: str | None = None  # which limit refused it, or "unavailable"


class Backend:
    def __init__(self, settings: Settings, conn: redis.Redis | None = None):
        self.settings = settings
        # Short timeouts: the member's 3-second window matters more than one slow Redis call.
        self.conn = conn or redis.Redis.from_url(
            settings.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0, health_check_interval=15,
            retry_on_timeout=False,
        )
        self.queue = DreamQueue(self.conn, settings)

    def submit(self, job: DreamJob) -> Outcome:
        try:
            queued = self.queue.enqueue(job)
        except redis.RedisError as err:
            log.warning("enqueue failed", extra={"job_id": job.job_id, "error": type(err).__name__})
            return Outcome(False, UNAVAILABLE, kind="unavailable")
        log.info("job queued", extra={"job_id": job.job_id, "position": queued.position,
                                      "guild_id": job.origin.guild_id, "user_id": job.origin.user_id})
        return Outcome(True, job_id=job.job_id, position=queued.position)
