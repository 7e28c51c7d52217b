"""Every member in their own language, with their own defaults: a real bot (real discord.py) and worker on
the Discord stand-in. What a zh-CN member reads is Chinese, an en-US member's in the same server English;
the commands are registered with their localizations; /settings changes the next /dream and survives a bot
restart; a private result reaches only its member."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from dreamcore import i18n
from tests.support.fleet import one_bot, result_message, send, wait_until

pytestmark = pytest.mark.timeout(600)

HAN = re.compile(r"[\u4e00-\u9fff]")
# Three English words in a row outside a code span, a bold prompt or an id: what a Chinese text must not hold.
ENGLISH_RUN = re.compile(r"\b[A-Za-z]{3,}\s+[A-Za-z]{2,}\s+[A-Za-z]{2,}\b")


def zh(text: str) -> str:
    with i18n.speaking("zh-CN"):
        return i18n._(text)


def english_runs(text: str, prompt: str) -> list[str]:
    """English left in `text` once the member's own prompt, code spans and style names are taken out."""
    text = text.replace(prompt, "")
    text = re.sub(r"`[^`]*`", "", text)
    return ENGLISH_RUN.findall(text)


@pytest.fixture(scope="module")
def e(redis_server, tiny_model_dir, tmp_path_factory):
    with one_bot(redis_server, tiny_model_dir, tmp_path_factory.mktemp("languages")) as e:
        e.li = e.standin.add_member(e.fleet.guild_id, "li")
        yield e


def test_the_commands_are_registered_with_their_localizations(e):
    cmds = {c["name"]: c for c in e.standin.commands(e.bot.app.id, e.fleet.guild_id)}
    dream = cmds["dream"]
    assert dream["description_localizations"]["zh-CN"] == zh(dream["description"])
    assert HAN.search(dream["description_localizations"]["zh-CN"])
    assert set(dream["description_localizations"]) >= set(i18n.LANGUAGES)
    prompt = next(o for o in dream["options"] if o["name"] == "prompt")
    assert HAN.search(prompt["description_localizations"]["zh-CN"])
    mode = next(o for o in dream["options"] if o["name"] == "mode")
    assert all(HAN.search(c["name_localizations"]["zh-CN"]) for c in mode["choices"])
    assert "settings" in cmds and cmds["settings"]["description_localizations"]["ja"]


def test_a_chinese_member_reads_chinese_and_an_english_member_english_in_the_same_server(e):
    prompt = "a lighthouse at dusk"
    inter, text, ephemeral = send(e, {"prompt": prompt, "seed": 7}, user=e.li, locale="zh-CN")
    assert not ephemeral and zh("Queued:") in text and HAN.search(text), text
    assert not english_runs(text, prompt), text
    msg = result_message(e, inter)
    caption = msg.content
    assert HAN.search(caption) and not english_runs(caption, prompt), caption
    # The progress lines the reply showed on its way (each content it held) were Chinese too.
    shown = [c for c in msg.contents if c and prompt in c]
    assert len(shown) >= 2 and all(HAN.search(c) for c in shown), shown

    inter, text, _e = send(e, {"prompt": prompt, "seed": 7}, locale="en-US")
    assert text.startswith("Queued: job") and not HAN.search(text), text
    assert not HAN.search(result_message(e, inter).content)


def test_a_refusal_and_dreamhelp_are_in_the_members_language(e):
    _i, text, ephemeral = send(e, {"prompt": "a cat", "change": 0.5}, user=e.li, locale="zh-CN")
    assert ephemeral and text == zh("`change` says how much to change a picture of yours: add one with "
                                    "`image`, or leave `change` out.") and HAN.search(text)
    inter, text, ephemeral = send(e, {}, user=e.li, command="dreamhelp", locale="zh-CN")
    assert ephemeral and HAN.search(text) and not english_runs(text, "")
    second = _second_message(e, inter)
    assert second.startswith(zh("**This server's limits**")) and HAN.search(second)
    inter, text, _e = send(e, {}, user=e.li, command="dreamhelp", locale="en-US")
    assert not HAN.search(text) and _second_message(e, inter).startswith("**This server's limits**")


def _second_message(e, inter) -> str:
    return wait_until(lambda: next((m.content for m in e.standin.messages(e.bot.channel_id)
                                    if m.interaction_id == inter.id and m.ephemeral
                                    and m.id != min(x.id for x in e.standin.messages(e.bot.channel_id)
                                                    if x.interaction_id == inter.id)), None),
                      10, "no second message")


def _panel(e, inter):
    return wait_until(lambda: next((m for m in e.standin.messages(e.bot.channel_id)
                                    if m.interaction_id == inter.id and m.components), None), 10, "no panel")


def _size_and_count(e, inter) -> tuple[int, tuple[int, int]]:
    msg = result_message(e, inter)
    images = [a for a in msg.attachments if a.filename.startswith("dream-")]
    return len(images), Image.open(io.BytesIO(images[0].data)).size


def test_settings_change_the_next_dream_and_survive_a_bot_restart(e):
    user = e.standin.add_member(e.fleet.guild_id, "sam")
    inter, text, ephemeral = send(e, {"count": 2, "language": "ja"}, user=user, command="settings",
                                  subcommand="show", locale="en-US")
    assert ephemeral and "日本語" in text
    with i18n.speaking("ja"):
        assert i18n._("**Your settings** (only you see this; they apply in every server, and a server's limits "
                      "still win)") in text
    panel = _panel(e, inter)
    click = e.standin.send_component(e.bot.app.id, e.fleet.guild_id, e.bot.channel_id, user, panel.id,
                                     "settings:aspect", component_type=3, values=["7:9"])
    click.wait_ack(5)
    wait_until(lambda: e.r.get(f"dream:member:{user}") and b"7:9" in e.r.get(f"dream:member:{user}"), 10,
               "the aspect never saved")

    inter, text, _e = send(e, {"prompt": "a red fox", "seed": 3}, user=user, locale="en-US")
    with i18n.speaking("ja"):
        assert i18n._("Queued:") in text and "Queued" not in text, text  # their override, not their client's
    assert _size_and_count(e, inter) == (2, (896, 1152))

    e.fleet.stop_bot(e.bot)
    e.fleet.start_bot(e.bot)
    e.fleet.wait_bots_ready()
    inter, _t, _e = send(e, {"prompt": "a red fox", "seed": 4}, user=user, locale="en-US")
    assert _size_and_count(e, inter) == (2, (896, 1152))
    inter, _t, _e = send(e, {"prompt": "a red fox", "seed": 5, "count": 1}, user=user, locale="en-US")
    assert _size_and_count(e, inter)[0] == 1  # an option typed wins over a default

    _i, text, _e = send(e, {}, user=user, command="settings", subcommand="reset", locale="en-US")
    assert e.r.get(f"dream:member:{user}") is None
    inter, text, _e = send(e, {"prompt": "a red fox", "seed": 6}, user=user, locale="en-US")
    assert text.startswith("Queued: job") and _size_and_count(e, inter) == (1, (1024, 1024))


def test_a_default_the_server_does_not_allow_is_lowered_and_the_member_told(e):
    user = e.standin.add_member(e.fleet.guild_id, "kim")
    send(e, {"count": 4}, user=user, command="settings", subcommand="show")
    e.standin.send_slash(e.bot.app.id, e.fleet.guild_id, e.bot.channel_id, e.admin, "dreamadmin",
                         {"key": "max_images", "value": "2"}, subcommand="set").wait_ack(5)
    try:
        inter, text, _e = send(e, {"prompt": "a blue bird", "seed": 8}, user=user)
        assert "Your default of 4 images was lowered to this server's limit of 2." in text, text
        assert _size_and_count(e, inter)[0] == 2
    finally:
        e.standin.send_slash(e.bot.app.id, e.fleet.guild_id, e.bot.channel_id, e.admin, "dreamadmin",
                             {"key": "max_images", "value": "default"}, subcommand="set").wait_ack(5)


def test_a_private_result_reaches_only_its_member(e):
    user = e.standin.add_member(e.fleet.guild_id, "pat")
    send(e, {"private": True}, user=user, command="settings", subcommand="show")
    before = {m.id for m in e.standin.messages(e.bot.channel_id)}
    inter, text, ephemeral = send(e, {"prompt": "a secret garden", "seed": 9}, user=user)
    assert ephemeral and text.startswith("Queued: job"), text
    msg = result_message(e, inter)
    assert msg.ephemeral and msg.attachments
    public = [m for m in e.standin.messages(e.bot.channel_id) if m.id not in before and not m.ephemeral]
    assert not public, [m.content for m in public]


def test_a_private_result_past_its_interaction_goes_by_direct_message_in_the_members_language(e):
    user = e.standin.add_member(e.fleet.guild_id, "noor")
    send(e, {"private": True, "language": "de"}, user=user, command="settings", subcommand="show")
    before = {m.id for m in e.standin.messages(e.bot.channel_id)}
    # The reply is the interaction's answer (no token needed); by the time the images come, its token is dead.
    e.standin.token_lifetime_s = 0.0
    try:
        inter, text, ephemeral = send(e, {"prompt": "a quiet harbour", "seed": 11}, user=user)
        assert ephemeral
        dm = wait_until(lambda: next((m for m in e.standin.direct_messages(user) if m.attachments), None), 120,
                        "no direct message")
    finally:
        e.standin.token_lifetime_s = 900
    assert dm.components == []  # no buttons in a direct message: they act in a server
    assert Image.open(io.BytesIO(dm.attachments[0].data)).size == (1024, 1024)
    with i18n.speaking("de"):
        german = i18n._("no style")
    assert german != "no style" and german in dm.content, dm.content
    public = [m for m in e.standin.messages(e.bot.channel_id) if m.id not in before and not m.ephemeral]
    assert not public, [m.content for m in public]


def test_a_server_that_keeps_no_result_private_posts_it_and_says_so(e):
    user = e.standin.add_member(e.fleet.guild_id, "ola")
    send(e, {"private": True}, user=user, command="settings", subcommand="show")
    e.standin.send_slash(e.bot.app.id, e.fleet.guild_id, e.bot.channel_id, e.admin, "dreamadmin",
                         {"key": "private", "value": "off"}, subcommand="set").wait_ack(5)
    try:
        inter, text, ephemeral = send(e, {"prompt": "a lantern", "seed": 12}, user=user)
        assert not ephemeral and "This server posts every result in its channel, so this one isn't private." in text
        assert not result_message(e, inter).ephemeral
    finally:
        e.standin.send_slash(e.bot.app.id, e.fleet.guild_id, e.bot.channel_id, e.admin, "dreamadmin",
                             {"key": "private", "value": "default"}, subcommand="set").wait_ack(5)
