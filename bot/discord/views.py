"""The buttons and the modal behind /clone and /forget, and `say`, the ephemeral answer every command gives."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from alan.scheduler import SchedulerFullError
from bot.discord.session import APOLOGY
from engine.conversation import Conversation, Participant
from engine.errors import TurnError, VoiceNameTakenError
from engine.voices import CONSENT_STATEMENT, CloneDraft, VoiceInfo

log = logging.getLogger(__name__)

VIEW_TIMEOUT = 14 * 60  # an interaction's token lives 15 minutes; after that its message can't be edited
# The /clone preview quotes the transcript in one message (Discord's limit: 2,000 characters); 10–30 s of speech
# is far less than this.
MAX_TRANSCRIPT_CHARS = 1000


async def say(interaction: discord.Interaction, text: str, **kwargs: Any) -> None:
    """Answer ephemerally, whether or not the interaction was already answered or deferred."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, **kwargs)
    else:
        await interaction.response.send_message(text, ephemeral=True, **kwargs)


async def answer_command_error(interaction: discord.Interaction, error: Exception) -> None:
    """What every cog does with an error its command didn't handle: the user gets a sentence (the engine's own, for a
    `TurnError`), the log gets the traceback."""
    original = getattr(error, "original", error)
    if isinstance(original, TurnError):
        await say(interaction, str(original))
        return
    log.error("/%s failed", getattr(interaction.command, "name", "?"), exc_info=original)
    with contextlib.suppress(discord.HTTPException):  # the interaction may have expired meanwhile
        await say(interaction, APOLOGY)


class OwnerOnlyView(discord.ui.View):
    def __init__(self, owner_id: int) -> None:
        super().__init__(timeout=VIEW_TIMEOUT)
        self.owner_id = owner_id

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.owner_id:
            await say(interaction, "These buttons belong to someone else's command.")
            return False
        return True

    async def finish(self, interaction: discord.Interaction, text: str) -> None:
        self.stop()
        await interaction.edit_original_response(content=text, view=None)


class TranscriptModal(discord.ui.Modal, title="Correct the transcript"):
    def __init__(self, view: CloneView) -> None:
        super().__init__(timeout=VIEW_TIMEOUT)
        self.view = view
        self.text: discord.ui.TextInput[Any] = discord.ui.TextInput(
            style=discord.TextStyle.paragraph, default=view.transcript, max_length=MAX_TRANSCRIPT_CHARS, required=True
        )
        self.add_item(discord.ui.Label(text="Exactly what is said in the clip", component=self.text))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        corrected = " ".join(self.text.value.split())
        if corrected:
            self.view.transcript = corrected
        await interaction.response.edit_message(content=self.view.preview(), view=self.view)


class CloneView(OwnerOnlyView):
    """The /clone preview: Confirm stores the voice (with the consent statement), Edit fixes the transcript."""

    def __init__(self, conversation: Conversation, who: Participant, owner_id: int, draft: CloneDraft,
                 transcript: str, name: str, account: int | None = None) -> None:  # fmt: skip
        super().__init__(owner_id)
        self.conversation = conversation
        self.who = who
        self.account = account  # the account the clone was begun for: gone (/forget) by Confirm, nothing is saved
        self.draft = draft
        self.transcript = transcript
        self.name = name
        self.saved: VoiceInfo | None = None

    def preview(self) -> str:
        language = f", {self.draft.language}" if self.draft.language else ""
        return (
            f"**New voice “{self.name[:100]}”** ({self.draft.seconds:.1f} s of speech{language})\n"
            "I copy a voice best when the transcript matches the clip word for word. I heard:\n"
            f"> {self.transcript[:MAX_TRANSCRIPT_CHARS]}\n\n"
            f"By pressing **Confirm** you state: *{CONSENT_STATEMENT}*"
        )

    @discord.ui.button(label="Confirm", style=discord.ButtonStyle.success)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content="Saving your voice…", view=None)
        try:
            saved = await self.conversation.save_clone(
                self.who, self.name, self.draft, self.transcript, owner=self.account
            )
        except TurnError as error:
            hint = " Run /clone again with another name." if isinstance(error, VoiceNameTakenError) else ""
            await self.finish(interaction, f"{error}{hint}")
        except Exception:
            log.exception("saving a cloned voice failed for user %s", self.who.user_id)
            await self.finish(interaction, APOLOGY)
        else:
            self.saved = saved
            await self.finish(interaction, f"Saved “{saved.name}”: I'll speak to you with it from now on.")

    @discord.ui.button(label="Edit transcript", style=discord.ButtonStyle.secondary)
    async def edit(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.send_modal(TranscriptModal(self))

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.danger)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.stop()
        await interaction.response.edit_message(content="Cancelled: nothing was stored.", view=None)


class ForgetView(OwnerOnlyView):
    def __init__(self, conversation: Conversation, who: Participant, owner_id: int,
                 run: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]] | None = None) -> None:  # fmt: skip
        super().__init__(owner_id)
        self.conversation = conversation
        self.who = who
        self.serialise = run  # waits for the turn in progress, if any
        self.forgotten = False

    @discord.ui.button(label="Delete everything", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content="Deleting…", view=None)
        try:
            job = functools.partial(self.conversation.forget, self.who)
            await (self.serialise(job) if self.serialise is not None else job())
        except (TurnError, SchedulerFullError) as error:  # e.g. storage busy or full: say so, nothing was deleted
            await self.finish(interaction, str(error))
            return
        except Exception:
            log.exception("forgetting user %s failed", self.who.user_id)
            await self.finish(interaction, APOLOGY)
            return
        self.forgotten = True
        done = "Done: your voices, our conversations, what I remembered and your settings are deleted."
        await self.finish(interaction, done)

    @discord.ui.button(label="Keep it", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.stop()
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)
