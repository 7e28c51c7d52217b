"""One way for every process to reach Redis: a plain REDIS_URL, or Redis Sentinel.

With REDIS_SENTINELS (host:port,host:port) the client asks the sentinels which server is the primary of
REDIS_SENTINEL_MASTER and asks again whenever its connection breaks or the server it reaches turns out
to be a replica (redis-py's SentinelConnectionPool), so bots and workers follow a failover without a
restart; the reconnect backoff each caller already has stays as it is.

Acknowledged means replicated: Redis replicates asynchronously, so with a replica a write acknowledged
a moment before the primary dies can vanish. `transaction` makes the write a member is told about (the
enqueue, the published result), then a marker, and WAITs for the marker. Since the replication stream is one
ordered log, a replica that has the marker has every write made before it on any connection (the limit
acquire before the enqueue, the transaction itself).
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from . import keys
from .settings import Settings

# A bot's reads and writes give up after this long: the member's 3-second window matters more than one slow
# Redis call (a command defers past toolkit.ACK_BUDGET_S and is answered once this gives up).
BOT_READ_TIMEOUT_S = 2.0


class NotReplicated(redis.RedisError):
    """A write reached the primary but no replica within REDIS_WAIT_MS: it could still be lost."""


def connect(settings: Settings, *, timeout_s: float | None = None, connect_timeout_s: float | None = None,
            fail_fast: bool = False, **extra) -> redis.Redis:
    """A client for the primary. `fail_fast`: no retries (a scrape or a probe must never hang)."""
    kw: dict = {"socket_timeout": timeout_s, "socket_connect_timeout": connect_timeout_s, **extra}
    if fail_fast:
        kw |= {"retry": Retry(NoBackoff(), 0), "retry_on_timeout": False}
    if settings.redis_username is not None:
        kw["username"] = settings.redis_username
    if settings.redis_password is not None:
        kw["password"] = settings.redis_password.get_secret_value()
    tls = tls_options(settings)
    if not settings.sentinel_list:
        if tls and not settings.redis_url.startswith("rediss://"):
            kw["connection_class"] = redis.SSLConnection  # REDIS_TLS=true on a redis:// URL
        return redis.Redis.from_url(settings.redis_url, **kw, **tls)
    tls = {"ssl": True, **tls} if tls else {}
    kw |= tls
    sentinel_kw = {"socket_timeout": timeout_s or 2.0, "socket_connect_timeout": connect_timeout_s or 2.0, **tls}
    if settings.redis_sentinel_password is not None:
        sentinel_kw["password"] = settings.redis_sentinel_password.get_secret_value()
    sentinel = Sentinel(settings.sentinel_list, sentinel_kwargs=sentinel_kw, **kw)
    return sentinel.master_for(settings.redis_sentinel_master, **kw)


def tls_options(settings: Settings) -> dict:
    """redis-py's TLS arguments: the server's certificate checked against REDIS_TLS_CA (or the system's
    CAs) and its host name, and a client certificate where one is set. Empty without TLS."""
    if not settings.redis_uses_tls:
        return {}
    out: dict = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis_tls_ca:
        out["ssl_ca_certs"] = settings.redis_tls_ca
    if settings.redis_tls_cert:
        out |= {"ssl_certfile": settings.redis_tls_cert, "ssl_keyfile": settings.redis_tls_key}
    return out


def replicas_to_wait(settings: Settings) -> int:
    """How many replicas a member-facing write must reach: REDIS_WAIT_REPLICAS, by default 1 with
    sentinels (there is a replica to lose it to) and 0 without."""
    if settings.redis_wait_replicas is not None:
        return settings.redis_wait_replicas
    return 1 if settings.sentinel_list else 0


def transaction(conn: redis.Redis, settings: Settings, fn) -> list:
    """Run `fn(pipe)`'s commands as one MULTI/EXEC transaction and, with replicas to wait for, make sure a
    replica has it before returning. Returns EXEC's replies; raises NotReplicated when too few replicas
    acknowledged within REDIS_WAIT_MS.

    WAIT counts the writes of the connection it is sent on, and inside MULTI it returns at once, so it
    can't ride in the transaction. Nor can it follow EXEC in the same pipeline: callers such as RQ's
    enqueue_job call `pipe.multi()` themselves, which refuses commands queued before it. So after the
    transaction one pipeline, on one connection, writes a small marker and WAITs for it: the replication
    stream is one ordered log, so a replica that has the marker has the transaction before it."""
    with conn.pipeline(transaction=True) as pipe:
        fn(pipe)
        replies = pipe.execute()
    n = replicas_to_wait(settings)
    if n > 0:
        with conn.pipeline(transaction=False) as pipe:
            pipe.set(keys.REPLICATED_MARK, "1", ex=keys.REPLICATED_MARK_TTL_S)
            pipe.execute_command("WAIT", n, settings.redis_wait_ms)
            reached = int(pipe.execute()[-1])
        if reached < n:
            raise NotReplicated(f"the write reached {reached} of {n} replicas within {settings.redis_wait_ms} ms")
    return replies
