"""The member's reply keeps itself current: position while waiting, progress bar and preview while
denoising, never more than one edit per message every two seconds."""

from __future__ import annotations

import io
import re
import time

import pytest
from PIL import Image

from tests.support.fleet import image_messages

pytestmark = pytest.mark.timeout(240)


def _reply(fleet, bot, inter):
    return next(m for m in fleet.standin.messages(bot.channel_id) if m.interaction_id == inter.id)


def test_progress_edits_climb_with_a_preview_and_respect_the_interval(fleet):
    bot = fleet.bots[0]
    fleet.start_bot(bot, DREAMBOT_LIMIT_MAX_STEPS="100")
    fleet.wait_bots_ready()
    fleet.start_worker(DREAMBOT_LIMIT_MAX_STEPS="100")
    inter = fleet.dream(bot, aspect="12:5", steps=100)  # over 4.5 s even on a fast CPU: two nudges
    inter.wait_ack(5)
    seen: list[tuple[int, bool]] = []
    # A guard, not a measure (the loop ends when the image is posted): 100 steps took 109 s here once, with a
    # heavy test on the other core (45 s in the run before).
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        msg = _reply(fleet, bot, inter)
        m = re.search(r"(\d+)% \(step", msg.content or "")
        if m and (not seen or seen[-1][0] != int(m.group(1))):
            preview = [a for a in msg.attachments if a[0] == "preview.jpg"]
            if preview:
                img = Image.open(io.BytesIO(preview[0][1]))
                img.load()
                assert max(img.size) <= 256
            seen.append((int(m.group(1)), bool(preview)))
        if image_messages(fleet.standin, bot.channel_id) and any(
                a[0] != "preview.jpg" for a in _reply(fleet, bot, inter).attachments):
            break
        time.sleep(0.05)
    print(f"\nprogress seen: {seen}")
    assert len(seen) >= 2, seen
    assert [p for p, _ in seen] == sorted(p for p, _ in seen) and all(has for _, has in seen)
    final = _reply(fleet, bot, inter)
    assert [a[0] for a in final.attachments] != ["preview.jpg"] and "seed" in final.content
    gaps = [b - a for a, b in zip(final.edit_times, final.edit_times[1:], strict=False)]
    # Every edit but the last (the result, which goes out at once) is at least two seconds after the one before.
    assert all(g >= 1.9 for g in gaps[:-1]), gaps


def test_queue_position_is_kept_current_while_waiting(fleet):
    bot = fleet.bots[0]
    fleet.start_bot(bot)
    fleet.wait_bots_ready()
    first = fleet.dream(bot, aspect="12:5", prompt="first")
    first.wait_ack(5)
    second = fleet.dream(bot, aspect="12:5", prompt="second")
    second.wait_ack(5)
    assert "position 2 in the queue" in _reply(fleet, bot, second).content
    job = _reply(fleet, bot, first).content.split("`")[1]
    cancel = fleet.standin.send_slash(bot.app.id, fleet.guild_id, bot.channel_id, fleet.user_id, "cancel",
                                      {"job": job})
    assert "cancelled" in cancel.wait_ack(5)["data"]["content"]
    deadline = time.monotonic() + 15
    while "next in line" not in (_reply(fleet, bot, second).content or "") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "next in line" in _reply(fleet, bot, second).content
