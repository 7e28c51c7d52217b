"""Logs are JSON lines, and no token survives into them."""

from __future__ import annotations

import io
import json
import logging

from dreamcore.logs import redact, register_secret, setup_logging

FAKE_BOT_TOKEN = "MTAxMjM0NTY3ODkwMTIzNDU2.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"


def test_json_lines_with_extra_fields_and_no_tokens():
    buf = io.StringIO()
    setup_logging("INFO", "json", stream=buf)
    register_secret("s3cret-value-123")
    log = logging.getLogger("dreambot.test")
    log.info("posting to /webhooks/123456/aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDpzZWNyZXQ with s3cret-value-123",
             extra={"job_id": "abc", "auth": f"Bot {FAKE_BOT_TOKEN}"})
    line = json.loads(buf.getvalue().strip())
    assert line["job_id"] == "abc" and line["level"] == "INFO"
    text = buf.getvalue()
    assert "s3cret-value-123" not in text
    assert "aW50ZXJhY3Rpb246" not in text
    assert FAKE_BOT_TOKEN not in text


def test_redact_patterns():
    assert FAKE_BOT_TOKEN not in redact(f"token={FAKE_BOT_TOKEN}")
    assert redact("/interactions/99/tok_abcdefghijklmnopqrstuvwxyz/callback") == "/interactions/99/[redacted]/callback"


def test_payload_dumps_lose_their_tokens():
    dumped = "{'type': 2, 'token': 'aW50ZXJhY3Rpb246MTIzOmFiY2RlZmdo', 'version': 1}"
    out = redact(dumped)
    assert "aW50ZXJhY3Rpb246" not in out and "'version': 1" in out
    assert "aW50ZXJh" not in redact("see aW50ZXJhY3Rpb246MTIzOmFiY2RlZmdo here")
