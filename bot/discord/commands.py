"""aLAN's slash commands: /join, /leave, /listen, /clone, /voices, /voice, /reset, /forget — and the buttons and
modal behind /clone and /forget. /memory is a cog of its own, in memory_commands.py.

Every reply here is ephemeral: voice cloning and personal data are nobody else's business, and failures should
not clutter the channel. Anything slow is deferred at once (Discord wants an answer within 3 s); engine errors
(`TurnError`) are shown as they are, anything unexpected becomes a short apology and a log entry.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import PurePath
from typing import Any, Protocol, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from alan.scheduler import SchedulerFullError, TurnScheduler
from bot.discord.session import APOLOGY, VoiceSession, participant, voice_queue_key
from bot.discord.views import MAX_TRANSCRIPT_CHARS, CloneView, ForgetView, answer_command_error, say
from engine.addressing import ListenMode
from engine.conversation import Conversation, Participant
from engine.errors import TurnError
from engine.voices import NAME_PATTERN

log = logging.getLogger(__name__)
T = TypeVar("T")

# Discord's own upload cap for most servers; the engine's cap applies too, whichever is lower.
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
AUDIO_EXTENSIONS = frozenset(
    {".ogg", ".oga", ".opus", ".mp3", ".wav", ".m4a", ".aac", ".flac", ".webm", ".mp4", ".mka", ".wma", ".aiff"}
)
DEFAULT_VOICE_NAME = "my voice"
TRANSCRIPT_TOO_LONG = (
    f"That transcript is over {MAX_TRANSCRIPT_CHARS} characters: more than I can use. "
    "Send a shorter clip (10–30 s of clear speech is ideal) with what is said in it."
)
MAX_REPLY_CHARS = 2000
LISTEN_MODES = {
    ListenMode.ADDRESSED: "I answer when someone says my name, follows up on my answer, or asks me something right "
    "after I spoke (with one person here, I answer everything)",
    ListenMode.ALWAYS: "I answer everything anyone says",
    ListenMode.OFF: "I only listen: I keep up with the conversation but say nothing until /listen changes it",
}


class Sessions(Protocol):
    scheduler: TurnScheduler

    def get(self, guild_id: int) -> VoiceSession | None: ...
    async def join(self, channel: Any) -> VoiceSession: ...
    async def leave(self, guild_id: int, guild: Any = None) -> bool: ...


def attachment_problem(attachment: discord.Attachment, max_bytes: int) -> str | None:
    """Why this attachment can't be a voice clip, or None. Checked before downloading anything."""
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    extension = PurePath(attachment.filename).suffix.lower()
    # Phones label recordings oddly (video/mp4 for an .m4a, octet-stream for .opus): trust either hint.
    looks_audio = content_type.startswith(("audio/", "video/")) or extension in AUDIO_EXTENSIONS
    if not looks_audio:
        return (
            f"“{attachment.filename}” isn't an audio file. Attach a recording of the voice to clone "
            "(OGG, MP3, WAV, M4A…), 10–30 seconds of one person talking clearly."
        )
    if attachment.size > max_bytes:
        return (
            f"That file is too large ({attachment.size / 1_048_576:.1f} MB): the limit is "
            f"{max_bytes / 1_048_576:.0f} MB. 10–30 seconds of speech is all I need."
        )
    return None


def voice_name_for(given: str | None, filename: str) -> str:
    if given and given.strip():
        return given.strip()  # the engine checks it and says what's allowed
    stem = PurePath(filename).stem.replace("_", " ").strip()[:40]
    return stem if NAME_PATTERN.match(stem) else DEFAULT_VOICE_NAME


def capped(heading: str, lines: list[str], limit: int = MAX_REPLY_CHARS) -> str:
    """`heading` and as many `lines` as fit in one Discord message, then how many more there are."""
    text = heading
    for index, line in enumerate(lines):
        rest = len(lines) - index - 1
        more = f"\n…and {rest} more" if rest else ""
        if len(text) + 1 + len(line) + len(more) > limit:
            return f"{text}\n…and {len(lines) - index} more"
        text += "\n" + line
    return text


def caller(interaction: discord.Interaction) -> Participant:
    """The caller, scoped where they are talking with aLAN: their voice channel if in one, else this channel."""
    voice = getattr(interaction.user, "voice", None)
    scope = voice.channel.id if voice is not None and voice.channel is not None else interaction.channel_id
    return participant(interaction.user, scope or "dm")


class AlanCommands(commands.Cog):
    def __init__(self, conversation: Conversation, sessions: Sessions) -> None:
        self.conversation = conversation
        self.sessions = sessions

    async def cog_app_command_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await answer_command_error(interaction, error)

    async def after_turns(self, interaction: discord.Interaction, job: Callable[[], Awaitable[T]]) -> T:
        """Run `job` in the server's line of voice turns: not while a turn that writes the history is under way."""
        if interaction.guild is None:
            return await job()
        return await self.sessions.scheduler.run(voice_queue_key(interaction.guild.id), job)

    @property
    def max_attachment_bytes(self) -> int:
        return min(MAX_ATTACHMENT_BYTES, self.conversation.max_clone_bytes)

    @app_commands.command(name="join", description="Join your voice channel and talk with everyone there")
    @app_commands.guild_only()
    async def join(self, interaction: discord.Interaction) -> None:
        voice = getattr(interaction.user, "voice", None)
        channel = voice.channel if voice is not None else None
        if channel is None or interaction.guild is None:
            await say(interaction, "Join a voice channel first, then use /join: I'll come to the one you're in.")
            return
        permissions = channel.permissions_for(interaction.guild.me)
        missing = [name for name, ok in (("Connect", permissions.connect), ("Speak", permissions.speak)) if not ok]
        if missing:
            await say(
                interaction,
                f"I can't talk in {channel.mention}: I need the {' and '.join(missing)} permission there. "
                "Ask someone who manages the server to grant it.",
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self.sessions.join(channel)
        except (TimeoutError, discord.ClientException, discord.HTTPException) as error:
            log.warning("could not join voice channel %s: %s", channel.id, error)
            await say(interaction, f"I couldn't connect to {channel.mention}. Please try /join again in a moment.")
            return
        await say(interaction, f"I'm in {channel.mention}. Just talk: I answer when you pause, and you can cut in.")

    @app_commands.command(name="leave", description="Leave the voice channel")
    @app_commands.guild_only()
    async def leave(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)  # disconnecting can take longer than Discord's 3 s
        if interaction.guild is None or not await self.sessions.leave(interaction.guild.id, interaction.guild):
            await say(interaction, "I'm not in a voice channel here.")
            return
        await say(interaction, "Bye for now!")

    @app_commands.command(name="listen", description="When I answer in the voice channel: addressed, always, or off")
    @app_commands.describe(mode="addressed (the default), always, or off (I only listen); leave out to see it")
    @app_commands.choices(mode=[app_commands.Choice(name=mode.value, value=mode.value) for mode in ListenMode])
    @app_commands.guild_only()
    async def listen(self, interaction: discord.Interaction, mode: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True)
        guild = interaction.guild
        session = self.sessions.get(guild.id) if guild is not None else None
        voice = getattr(interaction.user, "voice", None)
        channel = session.channel if session is not None else getattr(voice, "channel", None)
        if channel is None:
            await say(interaction, "I'm not in a voice channel here: /join first, then choose how I listen.")
            return
        scope = str(channel.id)
        if mode is None:
            current = await self.conversation.listen_mode(scope) or ListenMode.ADDRESSED
            await say(interaction, f"In {channel.mention}, /listen is {current.value}: {LISTEN_MODES[current]}.")
            return
        chosen = ListenMode(mode)  # one of the declared choices: Discord sends nothing else
        in_channel = voice is not None and getattr(voice.channel, "id", None) == channel.id
        permissions = getattr(interaction.user, "guild_permissions", None)
        if not in_channel and not (permissions is not None and permissions.manage_channels):
            await say(interaction, f"Only people in {channel.mention} (or who manage channels) can change that.")
            return
        await self.conversation.set_listen_mode(scope, chosen)
        log.info("listen mode of channel %s set to %s", scope, chosen.value)
        await say(interaction, f"Done. In {channel.mention}, {LISTEN_MODES[chosen]}.")

    @app_commands.command(name="clone", description="Make a voice for me to speak to you with, from a recording")
    @app_commands.describe(
        audio="A recording of one person talking clearly (10–30 s is ideal)",
        transcript="Exactly what is said in it (I'll transcribe it if you leave this out)",
        name="A name for the voice",
    )
    async def clone(self, interaction: discord.Interaction, audio: discord.Attachment,
                    transcript: str | None = None, name: str | None = None) -> None:  # fmt: skip
        await interaction.response.defer(ephemeral=True, thinking=True)
        given = " ".join((transcript or "").split()) or None
        problem = attachment_problem(audio, self.max_attachment_bytes)
        if problem is None and given is not None and len(given) > MAX_TRANSCRIPT_CHARS:
            problem = TRANSCRIPT_TOO_LONG
        if problem is not None:
            await say(interaction, problem)
            return
        try:
            account = await self.conversation.clone_owner(caller(interaction))
            clip = await audio.read()
            draft = await self.conversation.prepare_clone(clip, given)  # a given transcript skips Whisper
        except TurnError as error:
            await say(interaction, str(error))
            return
        except discord.HTTPException as error:
            log.warning("downloading attachment %s failed: %s", audio.filename, error)
            await say(interaction, "I couldn't download that file from Discord. Please try again.")
            return
        except Exception:
            log.exception("preparing a voice clip failed")
            await say(interaction, APOLOGY)
            return
        if len(draft.transcript) > MAX_TRANSCRIPT_CHARS:
            await say(interaction, TRANSCRIPT_TOO_LONG)
            return
        view = CloneView(
            self.conversation, caller(interaction), interaction.user.id, draft, draft.transcript,
            voice_name_for(name, audio.filename), account,
        )  # fmt: skip
        await say(interaction, view.preview(), view=view)

    @app_commands.command(name="voices", description="List your cloned voices")
    async def voices(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)  # the database may be slow: answer within 3 s
        listing = await self.conversation.voices(caller(interaction))
        if not listing:
            await say(interaction, "You have no voices yet. Use /clone with a recording to make one.")
            return
        lines = [f"• {voice.name}{' — speaking to you here' if voice.active else ''}" for voice in listing]
        await say(interaction, capped("Your voices:", lines))

    @app_commands.command(name="voice", description="Choose the voice I speak to you with")
    @app_commands.describe(name="One of your voices (see /voices)", server_default="Make it this server's default")
    async def voice(self, interaction: discord.Interaction, name: str, server_default: bool = False) -> None:
        await interaction.response.defer(ephemeral=True)
        who = caller(interaction)
        try:
            if not server_default:
                chosen = await self.conversation.use_voice(who, name)
                await say(interaction, f"I'll speak to you with “{chosen.name}” from now on.")
                return
            guild = interaction.guild
            permissions = getattr(interaction.user, "guild_permissions", None)
            if guild is None or permissions is None or not permissions.manage_guild:
                await say(interaction, "Only members with the Manage Server permission can set the server's voice.")
                return
            # The server is every member's parent scope: its default applies in all its channels, new ones too.
            chosen = await self.conversation.use_voice(who, name, for_everyone_in=str(guild.id))
            await say(
                interaction,
                f"“{chosen.name}” is now this server's voice (anyone who picked their own voice keeps theirs).",
            )
        except TurnError as error:
            await say(interaction, str(error))

    @voice.autocomplete("name")
    async def _voice_names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        listing = await self.conversation.voices(caller(interaction))
        names = [voice.name for voice in listing]
        return [app_commands.Choice(name=n, value=n) for n in names if current.lower() in n.lower()][:25]

    @app_commands.command(name="reset", description="Forget our conversation here (your voices and my memory stay)")
    async def reset(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        who = caller(interaction)
        scopes = {who.scope, str(interaction.channel_id)} - {"None"}

        async def reset_all() -> int:
            deleted = 0
            for scope in scopes:
                # In a server's channel that is everyone's conversation there: one shared context, cleared.
                deleted += await self.conversation.reset(dataclasses.replace(who, scope=scope))
            return deleted

        try:
            deleted = await self.after_turns(interaction, reset_all)
        except SchedulerFullError as error:
            await say(interaction, str(error))
            return
        kept = "Your voices, and what I remember about you, are kept."
        await say(interaction, f"Done: I forgot our conversation here ({deleted} messages). {kept}")

    @app_commands.command(name="forget", description="Delete everything I have stored about you")
    async def forget(self, interaction: discord.Interaction) -> None:
        view = ForgetView(
            self.conversation, caller(interaction), interaction.user.id,
            run=lambda job: self.after_turns(interaction, job),
        )  # fmt: skip
        await say(
            interaction,
            "This deletes your voices, all our conversations, what I remember about you and your settings, "
            "everywhere. It can't be undone.",
            view=view,
        )
