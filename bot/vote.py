"""Pairwise vote mode: /dreamvote turns it on for a channel; /dream there makes two candidates that
differ in one setting, posted together with "A is better" / "B is better" buttons; /dreamstats shows
win rates. Votes are one per member and changeable.
"""

from __future__ import annotations

import asyncio
import logging
import re

import discord
import redis
from discord import app_commands

from dreamcore import votes
from dreamcore.i18n import N_, _, ngettext
from dreamcore.present import shown
from dreamcore.results import DreamResult

from . import members, toolkit
from .toolkit import STORE_DOWN, admin_only, answer_privately

log = logging.getLogger("dreambot.vote")
STATS_COOLDOWN_S = 10  # per member and server: the counters change with votes, not by the second
NO_PERMISSION = N_("You need the Manage Server permission to change vote mode.")


class VoteButton(discord.ui.DynamicItem[discord.ui.Button], template=r"vote:(?P<round>[0-9a-f]{16}):(?P<side>[ab])"):
    """Custom id "vote:<round>:<a|b>": any process of the instance can count a click, after any restart."""

    def __init__(self, round_id: str, side: str):
        label = _("A is better") if side == "a" else _("B is better")
        super().__init__(discord.ui.Button(label=label, style=discord.ButtonStyle.primary,
                                           custom_id=f"vote:{round_id}:{side}"))
        self.round_id, self.side = round_id, side

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str], /):
        await members.meet(interaction, interaction.client.backend.conn)
        return cls(match["round"], match["side"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            t = await toolkit.in_time(self._cast, interaction.client.backend.conn, interaction.guild_id,
                                    interaction.user.id)
            if t is None:
                text = _("That vote round is unknown here.")
            else:
                text = _("Your vote for **{side}** is counted (A {a} · B {b}). Click the other button to change "
                         "it.").format(side=self.side.upper(), a=t["a"], b=t["b"])
        except (asyncio.TimeoutError, redis.RedisError):
            text = _(STORE_DOWN)
        await answer_privately(interaction, text)

    def _cast(self, conn: redis.Redis, guild_id: int | None, user_id: int) -> dict | None:
        """The round's tallies with this vote in, or None for a round this server doesn't have: one call, so
        the click's answer waits toolkit.READ_TIMEOUT_S at most."""
        record = votes.load_round(conn, self.round_id)
        if record is None or record["guild_id"] != guild_id:
            return None
        return votes.cast(conn, record, user_id, self.side)


def vote_view(round_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(VoteButton(round_id, "a"))
    view.add_item(VoteButton(round_id, "b"))
    return view


def vote_text(record: dict, a: DreamResult, b: DreamResult) -> str:
    seeds = ", ".join(str(i.seed) for i in a.images)
    return _("**{prompt}**\nTwo candidates from the same seed ({seeds}), different in one setting. Which is "
             "better? Pictures marked A- and B-; the settings are revealed in /dreamstats.").format(
        prompt=shown(record["prompt"], 900), seeds=seeds)[:2000]


def vote_files(a: DreamResult, a_images: list[bytes], b: DreamResult, b_images: list[bytes],
               a_mod=None, b_mod=None) -> list[discord.File]:
    """Both candidates' pictures, marked A- and B-; spoilered where the content filter says so (a round
    with a withheld picture is not posted as a vote: bot.vote_rounds)."""
    from .moderated import files

    return [*files(a, a_images, a_mod, prefix="A-"), *files(b, b_images, b_mod, prefix="B-")]


def stats_text(rates: dict) -> str:
    """The win rates of votes.win_rates. A row's label is a variant's, marked in dreamcore.votes and
    translated here (one the catalogs don't know, from an older version, reads as it was recorded); a
    comparison's kind ("refiner", "split", "style") is named as the setting it compares and stays as it is."""
    if not rates:
        return _("No votes yet in this server.")
    lines = [_("**Vote win rates** (rounds with at least one vote)")]
    for kind, rows in sorted(rates.items()):
        parts = []
        for label, row in sorted(rows.items()):
            if row["rounds"]:
                # English says "votes" for any number (1 too); the plural is the other languages'.
                parts.append(ngettext("{label}: won {wins}/{rounds} ({percent}%), {votes} votes",
                                      "{label}: won {wins}/{rounds} ({percent}%), {votes} votes",
                                      row["votes"]).format(
                    label=_(label) if label else label, wins=row["wins"], rounds=row["rounds"],
                    percent=100 * row["wins"] // row["rounds"], votes=row["votes"]))
        if parts:
            lines.append(_("- {kind}: {results}").format(kind=kind, results="; ".join(parts)))
    return "\n".join(lines)[:2000]


@app_commands.command(name="dreamvote", description="Admins: turn pairwise vote mode on or off in this channel")
@app_commands.describe(mode="on: /dream here makes two candidates to vote on; off: back to normal")
@app_commands.choices(mode=[app_commands.Choice(name="on", value="on"),
                            app_commands.Choice(name="off", value="off")])
@app_commands.default_permissions(manage_guild=True)
@app_commands.guild_only()
@admin_only(NO_PERMISSION)
async def dreamvote(interaction: discord.Interaction, mode: str):
    try:
        await toolkit.in_time(votes.set_channel, interaction.client.backend.conn, interaction.guild_id,
                            interaction.channel_id, mode == "on")
        log.info("vote mode changed", extra={"guild_id": interaction.guild_id, "actor_id": interaction.user.id,
                                             "channel_id": interaction.channel_id, "mode": mode})
        if mode == "on":
            text = _("Vote mode is **on** in <#{channel_id}>. Each /dream here makes two candidates to "
                     "vote on.").format(channel_id=interaction.channel_id)
        else:
            text = _("Vote mode is **off** in <#{channel_id}>.").format(channel_id=interaction.channel_id)
    except (asyncio.TimeoutError, redis.RedisError):
        text = _(STORE_DOWN)
    await answer_privately(interaction, text)


@app_commands.command(name="dreamstats", description="Win rates of the settings compared in vote rounds here")
@app_commands.guild_only()
@app_commands.checks.cooldown(1, STATS_COOLDOWN_S, key=lambda i: (i.guild_id, i.user.id))
async def dreamstats(interaction: discord.Interaction):
    try:
        rates = await toolkit.in_time(votes.win_rates, interaction.client.backend.conn, interaction.guild_id)
        text = stats_text(rates)
    except (asyncio.TimeoutError, redis.RedisError):
        text = _(STORE_DOWN)
    await answer_privately(interaction, text)
