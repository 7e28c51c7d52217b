"""What the operator grants or caps per server, above anything a server's own admins set.

A fleet serves many servers; priority between them is the operator's to grant, never a server's own: an
admin's priority and exempt roles act inside their server only (dreamcore.limits.limiter). Per server the
operator may set:

    priority      high / default / low: the queue its dreams wait in (high is served first; default for all)
    max_queued    a ceiling on its dreams queued or running, over its admins' guild_max_queued
    units_hour    a ceiling on its hourly quota (units of dreamcore.cost), over guild_images_hour
    units_day     a ceiling on its daily quota, over guild_images_day

set with `dreambot server <guild id> --priority high --max-queued 40` (dreambot/cli.py) and kept in Redis
(`dream:operator:{<guild>}`, a hash of what was set, no TTL: configuration) so every bot instance applies it
at once, with no restart. A value that can't be read is logged and ignored, never fatal.
"""

from __future__ import annotations

import logging
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from .keys import operator_key
from .ranges import LIMITS

log = logging.getLogger("dreamcore.servers")

Priority = Literal["high", "default", "low"]  # an operator's grant; relax (dreamcore.modes) is a member's choice


class ServerPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: Priority = "default"
    max_queued: int | None = LIMITS["guild_max_queued"].field(None)
    units_hour: int | None = LIMITS["guild_images_hour"].field(None)
    units_day: int | None = LIMITS["guild_images_day"].field(None)


FIELDS = tuple(ServerPolicy.model_fields)


def get(conn: redis.Redis, guild_id: int | None) -> ServerPolicy:
    """The operator's policy for a server (the default policy for direct messages and unknown servers)."""
    raw = {k.decode(): v.decode() for k, v in conn.hgetall(operator_key(guild_id)).items()}
    good = {}
    for name, value in raw.items():
        try:
            good |= ServerPolicy(**{name: None if value == "" else value}).model_dump(include={name})
        except (ValidationError, TypeError) as err:
            log.warning("operator's server setting unreadable; ignored",
                        extra={"guild_id": guild_id, "setting": name, "value": value[:100],
                               "error": str(err).splitlines()[0] if str(err) else ""})
    return ServerPolicy(**good)


def change(conn: redis.Redis, guild_id: int, **values) -> ServerPolicy:
    """Set (a value) or clear (None) each named setting; raises ValueError naming a bad one, changing nothing."""
    current = get(conn, guild_id).model_dump()
    try:
        updated = ServerPolicy(**(current | values))
    except ValidationError as err:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())) from None
    key = operator_key(guild_id)
    with conn.pipeline() as pipe:
        for name in values:
            value = getattr(updated, name)
            if value is None or (name == "priority" and value == "default"):
                pipe.hdel(key, name)
            else:
                pipe.hset(key, name, str(value))
        pipe.execute()
    log.info("operator changed a server's policy", extra={"guild_id": guild_id, **{k: str(v) for k, v in values.items()}})
    return updated


def clear(conn: redis.Redis, guild_id: int) -> None:
    conn.delete(operator_key(guild_id))
