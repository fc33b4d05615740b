"""aLAN on Discord: `serve(settings, conversation, scheduler)` runs the bot until cancelled.

The bot syncs its slash commands on start (to the servers in ALAN_DISCORD_GUILD_IDS at once, else globally,
which Discord may take up to an hour to show), answers mentions in text channels, and keeps one `VoiceSession`
per server it has joined. It leaves a voice channel when no person is left in it, and when discord.py gives up
on a dropped voice connection it connects again, unless it was told to leave or was removed by a member.

Only the default (non-privileged) gateway intents are used: messages that mention a bot carry their content
even without the message-content intent, and members in voice channels are cached through voice states.

With ALAN_DISCORD_SHARD_COUNT set the bot is discord.py's AutoShardedBot, running the shards in
ALAN_DISCORD_SHARDS (all of them when empty); several processes can then share the servers (see bot/discord/shards.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import discord
from discord.ext import commands

from alan.scheduler import TurnScheduler
from alan.settings import Settings
from bot.discord.commands import AlanCommands
from bot.discord.link_commands import LinkCommands
from bot.discord.memory_commands import MemoryCommands
from bot.discord.receive import ReceivingVoiceClient
from bot.discord.recovery import follow_up_unanswered
from bot.discord.session import VoiceSession
from bot.discord.shards import Shards
from bot.discord.text import answer_mention
from engine.audio import WHISPER_RATE
from engine.conversation import Conversation

log = logging.getLogger(__name__)

REJOIN_DELAYS = (2.0, 5.0, 15.0)
LOST_CONNECTION = "I lost my voice connection and couldn't get back in. Use /join to bring me back."


class AlanVoiceClient(ReceivingVoiceClient):
    """A receiving voice client that hears at 16 kHz (what the VAD and Whisper want, decoded so by Opus itself),
    and says when discord.py has torn the connection down for good."""

    receive_sample_rate = WHISPER_RATE

    def __init__(self, client: discord.Client, channel: discord.abc.Connectable) -> None:
        super().__init__(client, channel)
        self.on_gone: Any = None

    def cleanup(self) -> None:
        super().cleanup()
        if self.on_gone is not None:
            self.on_gone()


def has_people(channel: Any) -> bool:
    return any(not member.bot for member in getattr(channel, "members", []))


class VoiceSessions:
    """One `VoiceSession` per server: joining, moving, leaving, and coming back after a dropped connection."""

    def __init__(
        self,
        conversation: Conversation,
        scheduler: TurnScheduler,
        *,
        rejoin_delays: Sequence[float] = REJOIN_DELAYS,
        voice_client_class: type = AlanVoiceClient,
    ) -> None:
        self.conversation = conversation
        self.scheduler = scheduler
        self.rejoin_delays = rejoin_delays
        self.voice_client_class = voice_client_class
        self._sessions: dict[int, VoiceSession] = {}
        self._homes: dict[int, Any] = {}  # the channel each session belongs in, for coming back
        self._tasks: set[asyncio.Task[Any]] = set()

    def get(self, guild_id: int) -> VoiceSession | None:
        return self._sessions.get(guild_id)

    async def join(self, channel: Any) -> VoiceSession:
        guild_id = channel.guild.id
        session = self._sessions.get(guild_id)
        if session is not None and session.voice_client.is_connected():
            if session.channel is None or session.channel.id != channel.id:
                await session.voice_client.move_to(channel)
            self._homes[guild_id] = channel
            return session
        if session is not None:
            # Mid-reconnect (discord.py still holds the old client): drop it for good, or connecting again
            # fails with "Already connected" and the old client lingers, deaf.
            await self._drop(guild_id)
            await session.voice_client.disconnect(force=True)
        voice_client = await self._connect(channel)
        session = VoiceSession(self.conversation, voice_client, self.scheduler)
        self._sessions[guild_id], self._homes[guild_id] = session, channel
        session.start()
        log.info("joined voice channel %s in guild %s", channel.id, guild_id)
        return session

    async def leave(self, guild_id: int, guild: Any = None) -> bool:
        session = self._sessions.get(guild_id)
        if session is None:
            # No session, but discord.py may still hold a voice client (one it is reconnecting, say).
            voice_client = getattr(guild, "voice_client", None)
            if voice_client is None:
                return False
            await voice_client.disconnect(force=True)
            log.info("left voice in guild %s (no session)", guild_id)
            return True
        session.leaving = True
        await self._drop(guild_id)
        # Even when not connected: discord.py may be mid-reconnect, and force stops that too.
        await session.voice_client.disconnect(force=True)
        log.info("left voice in guild %s", guild_id)
        return True

    async def close(self) -> None:
        for guild_id in list(self._sessions):
            await self.leave(guild_id)
        for task in list(self._tasks):
            task.cancel()

    async def on_voice_state_update(self, member: Any, before: Any, after: Any, bot_id: int) -> None:
        session = self._sessions.get(member.guild.id)
        if session is None:
            return
        if member.id == bot_id:
            if after.channel is None and not session.leaving:
                session.kicked = True  # removed by someone: the clean-up that follows must not bring us back
            elif after.channel is not None:
                # Back in a channel: discord.py's own reconnect also disconnects first (channel None), so that
                # None was no kick after all. Moved, or back: this is home now.
                session.kicked = False
                self._homes[member.guild.id] = after.channel
            return
        if before.channel is not None and (after.channel is None or after.channel.id != before.channel.id):
            session.listener.forget(member.id)
            home = session.channel or self._homes.get(member.guild.id)
            if home is not None and before.channel.id == home.id and not has_people(home):
                log.info("nobody left in voice channel %s: leaving", home.id)
                await self.leave(member.guild.id)

    async def _connect(self, channel: Any) -> Any:
        voice_client = await channel.connect(cls=self.voice_client_class, reconnect=True, self_deaf=False)
        voice_client.on_gone = lambda: self._voice_gone(channel.guild.id, voice_client)
        return voice_client

    async def _drop(self, guild_id: int) -> None:
        session = self._sessions.pop(guild_id, None)
        self._homes.pop(guild_id, None)
        if session is not None:
            await session.close()

    def _voice_gone(self, guild_id: int, voice_client: Any) -> None:
        # Called from VoiceClient.cleanup(): discord.py has stopped trying on its own.
        session = self._sessions.get(guild_id)
        if session is None or session.voice_client is not voice_client or session.leaving:
            return
        task = asyncio.get_running_loop().create_task(self._rejoin(guild_id, session), name=f"rejoin-{guild_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rejoin(self, guild_id: int, session: VoiceSession) -> None:
        home = self._homes.get(guild_id)
        for delay in self.rejoin_delays:
            await asyncio.sleep(delay)  # also gives a kick's voice-state event time to arrive
            if self._sessions.get(guild_id) is not session or session.leaving or session.kicked:
                break
            if home is None or not has_people(home):
                break
            try:
                voice_client = await self._connect(home)
            except Exception as error:  # timeouts, gateway errors: try again after the next delay
                log.warning("reconnecting to voice channel %s failed: %s", home.id, error)
                continue
            session.attach(voice_client)
            log.info("voice connection to channel %s re-established", home.id)
            return
        if self._sessions.get(guild_id) is session:
            if not (session.leaving or session.kicked) and home is not None and has_people(home):
                await session.post(LOST_CONNECTION)
            await self._drop(guild_id)


class AlanBot(commands.Bot):
    """aLAN on one gateway connection, as without shard settings; `make_bot` picks this or `ShardedAlanBot`."""

    def __init__(
        self,
        settings: Settings,
        conversation: Conversation,
        *,
        scheduler: TurnScheduler | None = None,
        **client_options: Any,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            help_command=None,
            **client_options,
        )
        # What this client really runs: a plain one is one connection for every server, whatever the settings say.
        sharded = isinstance(self, discord.AutoShardedClient)
        self.shard_plan = Shards.from_settings(settings) if sharded else Shards(None, ())
        self.settings = settings
        self.conversation = conversation
        # One TTS model serves every server: at most two turns at once, and a bounded wait.
        self.scheduler = scheduler or TurnScheduler(concurrency=2, max_waiting=20)
        self.sessions = VoiceSessions(conversation, self.scheduler)
        # on_ready comes again after every reconnect; turns left by a stopped process are followed up once.
        self.follow_ups: asyncio.Task[int] | None = None

    async def setup_hook(self) -> None:
        alan = AlanCommands(self.conversation, self.sessions)
        await self.add_cog(alan)
        # /memory's writes wait for the server's voice turn in progress, in the same line as /reset's.
        await self.add_cog(MemoryCommands(self.conversation, alan.after_turns))
        await self.add_cog(LinkCommands(self.conversation))
        log.info("Discord: %s", self.shard_plan.describe())
        if not self.shard_plan.syncs_commands:  # every process syncing the same commands only spends rate limits
            return
        guild_ids = self.settings.discord_guild_id_list
        if not guild_ids:
            synced = await self.tree.sync()
            log.info("synced %d slash commands globally (Discord may take a while to show them)", len(synced))
            return
        for guild_id in guild_ids:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            try:
                synced = await self.tree.sync(guild=guild)
            except discord.HTTPException as error:  # not invited there, or no applications.commands scope
                log.error("could not sync slash commands to server %s: %s", guild_id, error)
            else:
                log.info("synced %d slash commands to server %s", len(synced), guild_id)

    async def on_ready(self) -> None:
        log.info("logged in to Discord as %s (%s)", self.user, getattr(self.user, "id", "?"))
        if self.follow_ups is None:  # in the background: events keep being handled meanwhile
            self.follow_ups = asyncio.create_task(
                follow_up_unanswered(self, self.conversation, self.scheduler, owns=self.shard_plan.has_channel)
            )

    async def on_message(self, message: discord.Message) -> None:
        if self.user is None or message.author.bot:
            return
        session = self.sessions.get(message.guild.id) if message.guild is not None else None
        await answer_mention(
            message, bot_user=self.user, conversation=self.conversation, scheduler=self.scheduler, session=session
        )

    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        if self.user is not None:
            await self.sessions.on_voice_state_update(member, before, after, self.user.id)

    async def close(self) -> None:
        if self.follow_ups is not None:
            self.follow_ups.cancel()
        await self.sessions.close()
        await super().close()


class ShardedAlanBot(AlanBot, commands.AutoShardedBot):
    """The same bot on discord.py's AutoShardedBot: one gateway connection per shard this process runs. Voice
    follows by itself: discord.py sends a server's voice state on the connection of the server's shard."""

    def __init__(
        self, settings: Settings, conversation: Conversation, *, scheduler: TurnScheduler | None = None
    ) -> None:
        options = Shards.from_settings(settings).client_options()
        super().__init__(settings, conversation, scheduler=scheduler, **options)


def make_bot(settings: Settings, conversation: Conversation, *, scheduler: TurnScheduler | None = None) -> AlanBot:
    """The bot `settings` ask for: sharded when ALAN_DISCORD_SHARD_COUNT is set, else as it has always run."""
    bot_class = ShardedAlanBot if Shards.from_settings(settings).sharded else AlanBot
    return bot_class(settings, conversation, scheduler=scheduler)


async def serve(settings: Settings, conversation: Conversation, scheduler: TurnScheduler | None = None) -> None:
    """Run the Discord bot until cancelled (or until the token is refused); turns go through `scheduler`."""
    if settings.discord_token is None:
        raise ValueError("DISCORD_TOKEN is not set")
    bot = make_bot(settings, conversation, scheduler=scheduler)
    try:
        await bot.start(settings.discord_token.get_secret_value())
    finally:
        if not bot.is_closed():
            await bot.close()
