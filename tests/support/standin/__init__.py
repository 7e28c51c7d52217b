"""A local Discord stand-in (REST + gateway, API v10) that the unmodified discord.py client talks to."""

from .rest import RequestRecord
from .server import DiscordStandIn
from .store import App, Attachment, Interaction, Message

__all__ = ["DiscordStandIn", "App", "Attachment", "Interaction", "Message", "RequestRecord"]
