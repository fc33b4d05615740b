"""aLAN in one server's voice channel: hears each member, answers each utterance aloud, one answer at a time, and
stops talking as soon as someone talks over it.

Flow: receiver (per-user PCM) -> `VoiceListener` (per-user VAD) -> utterance -> `TurnScheduler` (one turn at a time
per server) -> `Conversation.turn(audio=Samples)` -> `ReplyPlayback` (streaming `AudioSource`). A speech start while
a reply is audible interrupts it (`ReplyPlayback.interrupt`). Every member keeps their own history: the
participant is the member, the scope is the voice channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from alan.scheduler import SchedulerFullError, TurnScheduler
from bot.discord.listen import Clock, VoiceListener
from bot.discord.speak import PlaybackResult, ReplyPlayback
from bot.text_split import split_text
from engine.audio import Samples
from engine.conversation import Conversation, Participant
from engine.errors import NoSpeechError, TurnError
from engine.vad import SAMPLE_RATE, Utterance, VadConfig

log = logging.getLogger(__name__)

PLATFORM = "discord"
APOLOGY = "Sorry, something went wrong on my side while answering. Please try again."
# Discord's message length limit.
MAX_MESSAGE = 2000


def voice_queue_key(guild_id: int) -> str:
    """The TurnScheduler chat of a server's voice turns (and of the commands that must not race them)."""
    return f"discord-voice:{guild_id}"


def participant(member: discord.abc.User, scope: int | str) -> Participant:
    """A member talking in `scope`; their server is the parent scope, so a server's default voice applies."""
    guild = getattr(member, "guild", None)
    return Participant(
        PLATFORM,
        str(member.id),
        str(scope),
        getattr(member, "display_name", None) or member.name,
        parent_scope=str(guild.id) if guild is not None else None,
    )


class VoiceSession:
    """One voice connection and everything it hears and says. Create, then `start()`; `close()` when leaving."""

    def __init__(
        self,
        conversation: Conversation,
        voice_client: Any,  # discord.VoiceClient with a `receiver` (ReceivingVoiceClient) — or a test double
        scheduler: TurnScheduler,
        *,
        clock: Clock = time.monotonic,
        vad_config: VadConfig | None = None,
        post: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.conversation = conversation
        self.voice_client = voice_client
        self.scheduler = scheduler
        self.clock = clock
        self.post = post or self._post_in_channel
        self.listener = VoiceListener(
            on_speech_start=self._on_speech_start,
            on_utterance=self._on_utterance,
            accept=self._is_person,
            clock=clock,
            vad_config=vad_config,
        )
        self.playback: ReplyPlayback | None = None
        self.answering: Participant | None = None
        self.closed = False
        self.leaving = False  # we chose to leave: a dropped connection must not be re-established
        self.kicked = False  # someone removed us from the channel: don't come back uninvited
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle --------------------------------------------------------------------------------------

    @property
    def guild_id(self) -> int:
        return self.voice_client.guild.id

    @property
    def channel(self) -> Any:
        # Read live: a moderator may move us, and discord.py updates the client's channel.
        return self.voice_client.channel

    @property
    def queue_key(self) -> str:
        return voice_queue_key(self.guild_id)

    def start(self) -> None:
        self.voice_client.receiver.start(self.listener.on_audio)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self.listener.run(), name=f"vad-tick-{self.guild_id}")

    def attach(self, voice_client: Any) -> None:
        """A new connection after a drop: listen on it, keep everything else (histories, scheduler, VAD state)."""
        self.voice_client = voice_client
        if not voice_client.receiver.listening:
            voice_client.receiver.start(self.listener.on_audio)

    async def close(self) -> None:
        self.closed = True
        if self.playback is not None:
            self.playback.interrupt()
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._tasks):
            task.cancel()
        receiver = getattr(self.voice_client, "receiver", None)
        if receiver is not None:
            receiver.stop()
        await asyncio.gather(*self._tasks, *([self._ticker] if self._ticker else []), return_exceptions=True)

    # -- hearing ----------------------------------------------------------------------------------------

    def _is_person(self, user_id: int) -> bool:
        member = self.voice_client.guild.get_member(user_id)
        return member is None or not member.bot  # unknown (not cached yet) members are people until shown otherwise

    def _on_speech_start(self, user_id: int) -> None:
        playback = self.playback
        if playback is not None and playback.audible:
            log.info("user %d talked over the reply in guild %d: stopping", user_id, self.guild_id)
            playback.interrupt()

    def _on_utterance(self, user_id: int, utterance: Utterance) -> None:
        if self.closed:
            return
        member = self.voice_client.guild.get_member(user_id)
        scope = self.channel.id
        guild_id = str(self.voice_client.guild.id)
        who = participant(member, scope) if member else Participant(PLATFORM, str(user_id), str(scope), None, guild_id)
        # The PCM goes in as it is: the engine hears it at its own rate and stores it once, as OGG/Opus.
        heard = Samples(utterance.audio, SAMPLE_RATE)
        task = asyncio.create_task(self._answer_utterance(who, heard), name=f"voice-turn-{user_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_utterance(self, who: Participant, heard: Samples) -> None:
        try:
            result = await self.answer(who, audio=heard)
        except NoSpeechError:
            log.debug("no speech in an utterance of user %s", who.user_id)  # a cough or a laugh: say nothing
        except (TurnError, SchedulerFullError) as error:
            await self.post(str(error))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("voice turn failed for user %s in guild %d", who.user_id, self.guild_id)
            await self.post(APOLOGY)
        else:
            if result.speech_unavailable and not result.interrupted and result.text:
                await self.post(f"{result.speech_unavailable}\n{result.text}")

    # -- speaking ---------------------------------------------------------------------------------------

    async def answer(
        self, who: Participant, *, audio: Samples | None = None, text: str | None = None
    ) -> PlaybackResult:
        """Queue a spoken turn for this channel and return once it has been heard out (or interrupted).

        Raises `TurnError` / `SchedulerFullError` with a message for the user.
        """
        return await self.scheduler.run(self.queue_key, lambda: self._speak(who, audio=audio, text=text))

    async def _speak(self, who: Participant, *, audio: Samples | None, text: str | None) -> PlaybackResult:
        if self.closed:  # we left while this turn waited its go
            return PlaybackResult(interrupted=True)
        playback = ReplyPlayback(self.voice_client, clock=self.clock, on_start=lambda: self._still_talking(who))
        self.playback, self.answering = playback, who
        try:
            return await playback.play(self.conversation.turn(who, audio=audio, text=text, speak=True))
        finally:
            if self.playback is playback:
                self.playback, self.answering = None, None

    def _still_talking(self, who: Participant) -> None:
        # They paused long enough to end the utterance, then went on: they weren't done, so don't talk over them.
        playback = self.playback
        if playback is not None and self.listener.is_speaking(int(who.user_id)):
            log.info("user %s is still talking: holding the reply back", who.user_id)
            playback.interrupt()

    async def _post_in_channel(self, text: str) -> None:
        channel = self.channel
        for part in split_text(text, MAX_MESSAGE):
            try:
                await channel.send(part)
            except (discord.HTTPException, AttributeError) as error:  # no permission to write there: log only
                log.warning("can't post in voice channel %s: %s", getattr(channel, "id", "?"), error)
                return
