"""/dreamhelp and the style autocomplete, through a real bot process on the Discord stand-in."""

from __future__ import annotations

import pytest

from dreamcore.limits.stored import LimitStore
from tests.support.fleet import Fleet
from tests.support.standin import DiscordStandIn

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def one_bot(redis_server, tiny_model_dir, tmp_path_factory):
    standin = DiscordStandIn().start()
    fleet = Fleet(standin, redis_server.url, tiny_model_dir, tmp_path_factory.mktemp("help"))
    fleet.setup(1)
    fleet.start_bot(fleet.bots[0])
    fleet.wait_bots_ready()
    yield fleet
    fleet.stop()
    standin.stop()


def test_dreamhelp_shows_options_limits_and_what_is_left(one_bot, rconn):
    f, bot = one_bot, one_bot.bots[0]
    LimitStore(rconn).set(f.guild_id, "user_images_hour", "12", actor_id=1)
    f.dream(bot, count=3, steps=40, aspect="1:1").wait_ack(5)  # 3 standard images: 3 units (dreamcore.cost)
    inter = f.standin.send_slash(bot.app.id, f.guild_id, bot.channel_id, f.user_id, "dreamhelp", {})
    body = inter.wait_ack(5)
    text = body["data"]["content"]
    assert body["data"]["flags"] & 64
    assert "`prompt`" in text and "Cinematic" in text and "Square 1:1 (1024x1024)" in text
    assert "`image` a picture of yours" in text and "`faces` small faces redrawn close up" in text
    # The server's limits and the member's own come in a second private message (Discord's 2,000 characters).
    second = f.standin.wait_for_message(lambda m: m.interaction_id == inter.id and m.ephemeral
                                        and "**This server's limits**" in m.content, timeout=10).content
    assert "12 standard images an hour" in second
    assert "9 standard images left this hour" in second
    assert "**Your settings** (`/settings show`)\n- none yet: the server's defaults apply" in second
    LimitStore(rconn).set(f.guild_id, "faces", "off", actor_id=1)
    text = f.standin.send_slash(bot.app.id, f.guild_id, bot.channel_id, f.user_id, "dreamhelp", {}).wait_ack(5)
    assert "(this server's default: off)" in text["data"]["content"]


def test_style_autocomplete_matches_names_and_templates(one_bot):
    f, bot = one_bot, one_bot.bots[0]
    inter = f.standin.send_autocomplete(bot.app.id, f.guild_id, bot.channel_id, f.user_id, "dream",
                                        {"prompt": "a cat", "style": "film"}, focused="style")
    inter.wait_ack(5)
    names = [c["value"] for c in inter.autocomplete_choices]
    assert "analog-film" in names and "cinematic" in names  # "film" is in the cinematic template too
    assert "pixel-art" not in names
    everything = f.standin.send_autocomplete(bot.app.id, f.guild_id, bot.channel_id, f.user_id, "dream",
                                             {"prompt": "a cat", "style": ""}, focused="style")
    everything.wait_ack(5)
    assert len(everything.autocomplete_choices) == 15


def test_unknown_style_typed_by_hand_is_refused_clearly(one_bot):
    f, bot = one_bot, one_bot.bots[0]
    body = f.dream(bot, style="vaporwave").wait_ack(5)
    assert body["data"]["flags"] & 64 and "style: unknown style; one of none" in body["data"]["content"]
