"""Structured logs (one JSON object a line) that never carry a token.

Redaction sits in the handler, so it covers third-party loggers too (discord.py logs webhook URLs,
which embed interaction tokens): every registered secret and every token-shaped string is masked.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_SECRETS: set[str] = set()
# Discord bot tokens: base64 user id . timestamp . hmac.
_BOT_TOKEN = re.compile(r"[MNO][A-Za-z\d_-]{20,30}\.[A-Za-z\d_-]{4,8}\.[A-Za-z\d_-]{20,}")
# Interaction / webhook tokens inside URLs.
_WEBHOOK = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_.\-]{20,}")
_AUTH = re.compile(r"(Bot|Bearer)\s+[A-Za-z0-9_.\-]{10,}")
# Payload dumps (discord.py's DEBUG gateway log): any "token" field, and interaction tokens by their
# prefix, which is base64 for "interaction:".
_TOKEN_FIELD = re.compile(r"""((?:\\?['"])token(?:\\?['"])\s*:\s*(?:\\?['"]))[^'"\\]+""")
_INTERACTION = re.compile(r"aW50ZXJhY3Rpb246[A-Za-z0-9_\-]+")

_STD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def register_secret(secret: str | None) -> None:
    if secret and len(secret) >= 6:
        _SECRETS.add(secret)


def redact(text: str) -> str:
    for s in _SECRETS:
        if s in text:
            text = text.replace(s, "[redacted]")
    text = _BOT_TOKEN.sub("[redacted-token]", text)
    text = _WEBHOOK.sub(r"\1[redacted]", text)
    text = _TOKEN_FIELD.sub(r"\1[redacted]", text)
    text = _INTERACTION.sub("[redacted-interaction-token]", text)
    return _AUTH.sub(r"\1 [redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v if isinstance(v, (int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}
        line = super().format(record)
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return redact(line)


def setup_logging(level: str = "INFO", fmt: str = "json", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # RQ's own loggers add their own handlers; route them through ours.
    for name in ("rq", "rq.worker", "discord"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
