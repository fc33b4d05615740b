"""/memory on Discord: one slash command, its `action` one of list (the default), forget (with `number`), clear
(asked first, with buttons), off and on.

A cog of its own, next to `AlanCommands`; like every reply there, each one here is ephemeral, so the list can be
shown wherever it is asked for. What writes waits for the server's voice turn in progress, as /reset does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from alan.scheduler import SchedulerFullError
from bot import memory_text
from bot.discord.commands import MAX_REPLY_CHARS, caller
from bot.discord.session import APOLOGY
from bot.discord.views import OwnerOnlyView, answer_command_error, say
from bot.memory_text import DISCORD
from bot.text_split import split_text
from engine.conversation import Conversation, Participant
from engine.errors import TurnError

log = logging.getLogger(__name__)
T = TypeVar("T")

ACTIONS = ("list", "forget", "clear", "off", "on")
NEEDS_NUMBER = "Say which fact to forget: /memory action:forget number:N, N being its number in /memory's list."


class InLine(Protocol):
    """Runs a job in the caller's server's line of voice turns: `AlanCommands.after_turns`."""

    def __call__(self, interaction: discord.Interaction, job: Callable[[], Awaitable[T]]) -> Awaitable[T]: ...


class ClearMemoryView(OwnerOnlyView):
    def __init__(self, conversation: Conversation, who: Participant, owner_id: int,
                 run: Callable[[Callable[[], Awaitable[int]]], Awaitable[int]]) -> None:  # fmt: skip
        super().__init__(owner_id)
        self.conversation = conversation
        self.who = who
        self.serialise = run
        self.cleared: int | None = None

    @discord.ui.button(label="Forget it all", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content="Forgetting…", view=None)
        try:
            self.cleared = await self.serialise(lambda: self.conversation.clear_memory(self.who))
        except (TurnError, SchedulerFullError) as error:  # storage busy or full: say so, nothing was forgotten
            await self.finish(interaction, str(error))
            return
        except Exception:
            log.exception("clearing the memory of user %s failed", self.who.user_id)
            await self.finish(interaction, APOLOGY)
            return
        await self.finish(interaction, memory_text.cleared(self.cleared))

    @discord.ui.button(label="Keep it", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.stop()
        await interaction.response.edit_message(content="Nothing was forgotten.", view=None)


class MemoryCommands(commands.Cog):
    def __init__(self, conversation: Conversation, in_line: InLine) -> None:
        self.conversation = conversation
        self.in_line = in_line

    async def cog_app_command_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await answer_command_error(interaction, error)

    @app_commands.command(name="memory", description="What I remember about you; forget a fact, clear it, off, on")
    @app_commands.describe(
        action="list (the default), forget one fact, clear them all, or turn my memory off or on",
        number="With forget: the fact's number in the list",
    )
    @app_commands.choices(action=[app_commands.Choice(name=action, value=action) for action in ACTIONS])
    async def memory(
        self, interaction: discord.Interaction, action: str = "list", number: app_commands.Range[int, 1] | None = None
    ) -> None:
        await interaction.response.defer(ephemeral=True)  # the database may be slow: answer within 3 s
        try:
            await self._carry_out(interaction, caller(interaction), action, number)
        except (TurnError, SchedulerFullError) as error:  # a wrong number, storage trouble, a full queue
            await say(interaction, str(error))

    async def _carry_out(
        self, interaction: discord.Interaction, who: Participant, action: str, number: int | None
    ) -> None:
        if action == "forget":
            if number is None:
                await say(interaction, NEEDS_NUMBER)
                return
            text = await self.in_line(interaction, lambda: self.conversation.forget_fact(who, number))
            await say(interaction, memory_text.forgotten(text))
        elif action == "clear":
            await self._ask_to_clear(interaction, who)
        elif action in ("off", "on"):
            await self.in_line(interaction, lambda: self.conversation.set_memory_enabled(who, action == "on"))
            await say(interaction, memory_text.switched(action == "on", DISCORD))
        else:  # "list": the only other choice Discord offers
            listing = await self.conversation.memory(who)
            for piece in split_text(memory_text.listing_text(listing, DISCORD), MAX_REPLY_CHARS):
                await say(interaction, piece)

    async def _ask_to_clear(self, interaction: discord.Interaction, who: Participant) -> None:
        count = len((await self.conversation.memory(who)).facts)
        if not count:  # nothing to lose: no question (a summary of older talks, if any, goes too)
            await self.in_line(interaction, lambda: self.conversation.clear_memory(who))
            await say(interaction, memory_text.cleared(0))
            return
        view = ClearMemoryView(
            self.conversation, who, interaction.user.id, run=lambda job: self.in_line(interaction, job)
        )
        await say(interaction, memory_text.clear_question(count), view=view)
