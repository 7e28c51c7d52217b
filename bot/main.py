"""`dreambot bot`: run one bot instance (one Discord application, one token)."""

from __future__ import annotations

import logging

from dreamcore import metrics
from dreamcore.logs import register_secret, setup_logging
from dreamcore.settings import Settings

log = logging.getLogger("dreambot.bot")


def run(settings: Settings) -> int:
    setup_logging(settings.log_level, settings.log_format)
    if settings.discord_token is None or not settings.discord_token.get_secret_value().strip():
        print("dreambot bot: setting DISCORD_TOKEN is empty: put this instance's bot token in the environment or .env")
        return 2
    token = settings.discord_token.get_secret_value().strip()
    register_secret(token)

    from .client import DreamClient

    client = DreamClient(settings)
    metrics.start_metrics_server(settings.metrics_port, bot_health(client), settings, role="bot")
    log.info("starting bot instance", extra={"instance": settings.instance, "api_base": settings.discord_api_base})
    client.run(token, log_handler=None)
    return 0


def bot_health(client) -> metrics.Health:
    """/healthz of a bot: 200 while its gateway websocket is open (after READY) and its relay task runs.
    Read from the metrics thread: plain attribute reads, nothing that touches the event loop."""

    def gateway_connected() -> bool:
        ws = client.ws
        return client.is_ready() and not client.is_closed() and ws is not None and ws.open

    def relay_running() -> bool:
        return any(t.get_name() == "relay" and not t.done() for t in client._tasks)

    return metrics.Health({"gateway connected": gateway_connected, "relay running": relay_running})
