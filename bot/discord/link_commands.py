"""`/link`, `/link code:…` and `/unlink` on Discord: every answer ephemeral (a code is a secret), and a link made
only once the person presses "Link" under whose code it is."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.commands import caller
from bot.discord.views import OwnerOnlyView, answer_command_error, say
from bot.link_text import code_message, linked_message, offer_message, status_line, unlinked_message
from engine.conversation import Conversation, Participant
from engine.errors import TurnError

log = logging.getLogger(__name__)


class LinkView(OwnerOnlyView):
    """Link / Cancel under an offer; only the account that sent the code can press them."""

    def __init__(self, conversation: Conversation, who: Participant, owner_id: int, code: str) -> None:
        super().__init__(owner_id)
        self.conversation, self.who, self.code = conversation, who, code
        self.linked = False

    @discord.ui.button(label="Link", style=discord.ButtonStyle.primary)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content="Linking…", view=None)
        try:
            account = await self.conversation.link(self.who, self.code)
        except TurnError as error:  # expired meanwhile, used, too many tries, the store down: said as it is
            await self.finish(interaction, str(error))
            return
        self.linked = True
        await self.finish(interaction, linked_message(account))

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.stop()
        await interaction.response.edit_message(content="Nothing was linked.", view=None)


class LinkCommands(commands.Cog):
    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation

    async def cog_app_command_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await answer_command_error(interaction, error)

    @app_commands.command(name="link", description="Link this account with your Telegram one (one person to me)")
    @app_commands.describe(code="The code /link gave you on Telegram; leave out to get a code for this account")
    async def link(self, interaction: discord.Interaction, code: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True)
        who = caller(interaction)
        if not code:
            new = await self.conversation.link_code(who)
            status = status_line(await self.conversation.linked_accounts(who))
            await say(interaction, code_message(new, "Telegram", "/link") + (f"\n\n{status}" if status else ""))
            return
        try:
            account = await self.conversation.link_offer(who, code)
        except TurnError as error:  # a wrong code among them: the message says what to do, and nothing else
            await say(interaction, str(error))
            return
        view = LinkView(self.conversation, who, interaction.user.id, code)
        await say(interaction, offer_message(account), view=view)

    @app_commands.command(name="unlink", description="Stop sharing voices and memory with your linked account")
    async def unlink(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        await say(interaction, unlinked_message(await self.conversation.unlink(caller(interaction))))
