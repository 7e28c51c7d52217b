"""Point discord.py (2.4 .. 2.7) at one configurable API base: Discord itself, a proxy, or the test stand-in.

How discord.py 2.7.1 picks its addresses, and what this module changes:

* REST. Every route, bot-token and webhook alike, is built from ``discord.http.Route.BASE`` (a class
  attribute read when a ``Route`` is constructed; ``discord/webhook/async_.py`` imports that same ``Route``
  class from ``discord.http``).  ``use_api_base`` sets it, process-wide, so call it before ``login()``:
  ``login`` already does ``GET /users/@me`` and ``GET /oauth2/applications/@me``.  (``Webhook.url`` and
  jump URLs are display strings hard-coded to discord.com; they carry no traffic.)

* Gateway. A plain ``discord.Client`` never asks the API where the gateway is: it connects to the class
  attribute ``DiscordWebSocket.DEFAULT_GATEWAY`` (``wss://gateway.discord.gg/``).  Only
  ``AutoShardedClient`` without a fixed shard_count calls ``GET /gateway/bot``.  After READY the client
  resumes on READY's ``resume_gateway_url``.  (After an INVALID_SESSION the websocket resets its
  ``gateway`` to ``DEFAULT_GATEWAY``, but ``Client.connect`` copies that into its parameters only when
  resuming, so the fresh IDENTIFY goes to the gateway it last used, possibly the resume URL; Discord and the
  stand-in accept IDENTIFY on either.)  So ``discover_gateway`` asks ``GET {api_base}/gateway/bot`` (a proxy
  or the stand-in answers with its own websocket URL) and stores the answer in
  ``DiscordWebSocket.DEFAULT_GATEWAY``, the one attribute behind the first connect, the sharded clients with
  a fixed shard_count and every fallback to the default.  It needs the HTTP session that ``login`` opens, so call it from
  ``setup_hook`` (which runs after login, before connect) or between ``login()`` and ``connect()``.
  ``prepare_client`` does both steps.

* discord.py asks for ``?v=10&encoding=json&compress=zlib-stream`` (``zstd-stream`` when the ``zstandard``
  package, or Python 3.14's ``compression.zstd``, is importable); a server must send binary frames from one
  shared zlib stream, each ending in a Z_SYNC_FLUSH, or plain text frames (the client only inflates bytes).

* What a server in between must answer for discord.py to behave: JSON bodies with a Content-Type of exactly
  ``application/json`` (``; charset=utf-8`` makes discord.py treat the body as text); 429s with a ``Via``
  header and a JSON ``retry_after`` (else discord.py assumes a Cloudflare ban and raises at once instead of
  retrying), ideally with ``X-RateLimit-*`` and ``Retry-After`` headers too.  Bot-token routes retry
  500/502/504/524 (not 503) up to 5 tries; webhook/interaction routes retry every 5xx, also 5 tries.

With the default base nothing is patched beyond restoring the defaults, so production behaves exactly like
stock discord.py.
"""

from __future__ import annotations

import logging

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

log = logging.getLogger("dreambot.discord_api")

DEFAULT_API_BASE = "https://discord.com/api/v10"
DEFAULT_GATEWAY = yarl.URL("wss://gateway.discord.gg/")


def _normalise(api_base: str) -> str:
    base = (api_base or DEFAULT_API_BASE).strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"API base must be an http(s) URL such as {DEFAULT_API_BASE}, got {api_base!r}")
    return base


def use_api_base(api_base: str) -> None:
    """Send all discord.py REST traffic (bot routes, interaction callbacks, webhooks) to `api_base`.

    Process-wide. The default base also restores the default gateway, so switching back is complete."""
    base = _normalise(api_base)
    Route.BASE = base
    if base == DEFAULT_API_BASE:
        DiscordWebSocket.DEFAULT_GATEWAY = DEFAULT_GATEWAY
    log.debug("discord api base set", extra={"api_base": base})


def current_api_base() -> str:
    return Route.BASE


def is_default_api_base() -> bool:
    return Route.BASE == DEFAULT_API_BASE


async def discover_gateway(client: discord.Client) -> yarl.URL:
    """Ask ``GET /gateway/bot`` of the current API base where the gateway is and make discord.py connect
    there (``DiscordWebSocket.DEFAULT_GATEWAY``). Needs a logged-in client (setup_hook is the place)."""
    _shards, url, _limits = await client.http.get_bot_gateway()
    gateway = yarl.URL(url)
    DiscordWebSocket.DEFAULT_GATEWAY = gateway
    log.debug("gateway discovered", extra={"gateway": str(gateway)})
    return gateway


async def prepare_client(client: discord.Client, api_base: str | None = None) -> None:
    """Make `client` use `api_base` (or whatever ``use_api_base`` set) for REST and the gateway.

    Call it in ``setup_hook``. With a non-default base the gateway is discovered from that base; with the
    default base nothing is asked (stock discord.py connects to Discord's gateway anyway). Passing an
    `api_base` here that differs from the current one switches REST from now on, but ``login`` has already
    gone to the old base: call ``use_api_base`` before ``client.start``/``run`` to cover login too."""
    if api_base is not None:
        base = _normalise(api_base)
        if base != Route.BASE:
            log.warning("API base switched after login; call use_api_base() before start()",
                        extra={"old": Route.BASE, "new": base})
            use_api_base(base)
    if is_default_api_base():
        DiscordWebSocket.DEFAULT_GATEWAY = DEFAULT_GATEWAY
        return
    await discover_gateway(client)
