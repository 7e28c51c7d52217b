"""`dreambot bot`: run one bot instance (one Discord application, one token)."""

from __future__ import annotations

import logging

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
    log.info("starting bot instance", extra={"instance": settings.instance, "api_base": settings.discord_api_base})
    client.run(token, log_handler=None)
    return 0
