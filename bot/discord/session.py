"""aLAN in one server's voice channel: hears each member, takes part in the group's conversation, answers aloud
when spoken to, one answer at a time, and stops talking as soon as someone talks over it.

Flow: receiver (per-user PCM) -> `VoiceListener` (per-user VAD) -> utterance -> `TurnScheduler` (one turn at a time
per server, in the order people finished speaking) -> `Conversation.turn(audio=Samples)` -> `ReplyPlayback`
(streaming `AudioSource`). The channel is one shared conversation: every utterance is transcribed and kept under
its speaker's name, and answered when `engine.addressing.should_answer` says it was said to aLAN (everything, with
one person there; its name, a follow-up or a question right after it spoke, with several; the channel's `/listen`
mode). A reply waits for a gap in the talk before it plays; a speech start while it is audible interrupts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import discord

from alan.scheduler import SchedulerFullError, TurnScheduler
from bot.discord.listen import Clock, VoiceListener
from bot.discord.speak import PlaybackResult, ReplyPlayback
from bot.text_split import split_text
from engine.addressing import AddressDetector, GroupFloor, ListenMode, should_answer
from engine.audio import Samples
from engine.conversation import Conversation, Participant
from engine.errors import NoSpeechError, TurnError
from engine.vad import SAMPLE_RATE, Utterance, VadConfig

log = logging.getLogger(__name__)

PLATFORM = "discord"
APOLOGY = "Sorry, something went wrong on my side while answering. Please try again."
# Discord's message length limit.
MAX_MESSAGE = 2000
# A reply ready while others are talking waits for them this long at most (then it speaks: it was asked).
MAX_GAP_WAIT_S = 12.0
GAP_POLL_S = 0.05
# Utterances of one voice channel waiting to be heard (transcribed, perhaps answered) at most.
MAX_WAITING_UTTERANCES = 8


@dataclass
class Hearing:
    """What became of one utterance, for telling the channel about a failure only when it concerns aLAN."""

    in_group: bool = False  # several people (or /listen off): the words may well not have been for aLAN
    addressed: bool | None = None  # None until the words are known

    @property
    def worth_telling(self) -> bool:
        return bool(self.addressed) or (self.addressed is None and not self.in_group)


def voice_queue_key(guild_id: int) -> str:
    """The TurnScheduler chat of a server's voice turns (and of the commands that must not race them)."""
    return f"discord-voice:{guild_id}"


def participant(member: discord.abc.User, scope: int | str) -> Participant:
    """A member talking in `scope`; their server is the parent scope, so a server's default voice applies.

    A server's channel is one conversation shared by everyone in it; a direct message is the person's own.
    """
    guild = getattr(member, "guild", None)
    return Participant(
        PLATFORM,
        str(member.id),
        str(scope),
        getattr(member, "display_name", None) or member.name,
        parent_scope=str(guild.id) if guild is not None else None,
        shared=guild is not None,
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
        self.detector = AddressDetector(conversation.bot_name)
        self.floor = GroupFloor()  # whom aLAN answered last, and when it finished
        self._speech_began: dict[int, float] = {}  # when each person's current utterance started
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
        self._speech_began[user_id] = self.clock()
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
        who = (
            participant(member, scope)
            if member
            else Participant(PLATFORM, str(user_id), str(scope), None, guild_id, shared=True)
        )
        # The PCM goes in as it is: the engine hears it at its own rate and stores it once, as OGG/Opus.
        heard = Samples(utterance.audio, SAMPLE_RATE)
        # When they started: a follow-up's window counts from aLAN's last words to the start of theirs. (An
        # utterance cut at the length cap goes on without a new start: its own length tells.)
        began = self._speech_began.pop(user_id, None)
        began = self.clock() - utterance.seconds if began is None else began
        task = asyncio.create_task(self._answer_utterance(who, heard, began), name=f"voice-turn-{user_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_utterance(self, who: Participant, heard: Samples, began: float) -> None:
        hearing = Hearing(in_group=self.people() > 1)
        try:
            result = await self.answer(who, audio=heard, began=began, hearing=hearing)
        except NoSpeechError:
            log.debug("no speech in an utterance of user %s", who.user_id)  # a cough or a laugh: say nothing
        except (TurnError, SchedulerFullError) as error:
            if hearing.worth_telling:
                await self.post(str(error))
            else:  # words perhaps never meant for aLAN: a message per line of chatter would flood the channel
                log.warning("an utterance of user %s in guild %d was lost: %s", who.user_id, self.guild_id, error)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("voice turn failed for user %s in guild %d", who.user_id, self.guild_id)
            if hearing.worth_telling:
                await self.post(APOLOGY)
        else:
            if result.overheard:
                log.debug("kept an utterance of user %s, not said to aLAN", who.user_id)
            if result.speech_unavailable and not result.interrupted and result.text:
                await self.post(f"{result.speech_unavailable}\n{result.text}")

    # -- speaking ---------------------------------------------------------------------------------------

    async def answer(
        self,
        who: Participant,
        *,
        audio: Samples | None = None,
        text: str | None = None,
        began: float | None = None,
        hearing: Hearing | None = None,
    ) -> PlaybackResult:
        """Queue a turn for this channel and return once its answer has been heard out (or interrupted).

        Speech (`audio`, which `began` at that clock time) is answered when it was said to aLAN, and otherwise only
        kept in the channel's conversation (`PlaybackResult.overheard`). Text (a mention) is always answered; with
        `/listen off`, in text only. Raises `TurnError` / `SchedulerFullError` with a message for the user.
        Speech waits in line as a light turn: a room's chatter must not crowd out the next question.
        """
        began = self.clock() if began is None else began
        hearing = hearing or Hearing()
        return await self.scheduler.run(
            self.queue_key,
            lambda: self._speak(who, audio=audio, text=text, began=began, hearing=hearing),
            light=audio is not None,
            # A room's talk beyond this is waiting too long to be answered in time: the next is refused (logged).
            max_per_chat=MAX_WAITING_UTTERANCES if audio is not None else None,
        )

    def others_names(self, who: Participant) -> list[str]:
        """The display names of the other people in the voice channel."""
        members = getattr(self.channel, "members", ())
        return [member.display_name for member in members if not member.bot and str(member.id) != who.user_id]

    def people(self) -> int:
        """The people in the voice channel now (bots such as aLAN itself or a music bot don't count)."""
        return sum(1 for member in getattr(self.channel, "members", ()) if not member.bot)

    async def _speak(
        self, who: Participant, *, audio: Samples | None, text: str | None, began: float, hearing: Hearing
    ) -> PlaybackResult:
        if self.closed:  # we left while this turn waited its go
            return PlaybackResult(interrupted=True)
        mode = await self.conversation.listen_mode(who.scope) or ListenMode.ADDRESSED
        people = self.people()
        hearing.in_group = people > 1 or mode is ListenMode.OFF

        def said_to_us(said: str) -> bool:
            others = self.others_names(who)
            hearing.addressed = should_answer(self.detector, self.floor, mode, who.user_id, said, began, people, others)
            return hearing.addressed

        playback = ReplyPlayback(
            self.voice_client,
            clock=self.clock,
            on_start=lambda: self._still_talking(who),
            before_start=lambda: self._wait_for_gap(who),
        )
        self.playback, self.answering = playback, who
        try:
            turn = self.conversation.turn(
                who,
                audio=audio,
                text=text,
                speak=audio is not None or mode is not ListenMode.OFF,
                answer_if=said_to_us if audio is not None else None,
                name_them=people > 1,
            )
            result = await playback.play(turn)
        finally:
            if self.playback is playback:
                self.playback, self.answering = None, None
        if result.finished is not None or result.played_seconds > 0:
            self.floor.spoke_to(who.user_id, self.clock(), playback.started_at)
        return result

    async def _wait_for_gap(self, who: Participant) -> None:
        """Hold the first words of a reply while someone else is talking: aLAN doesn't start over people."""
        polls = int(MAX_GAP_WAIT_S / GAP_POLL_S)
        for _ in range(polls):
            # The person answered is left to `_still_talking`: them going on means they weren't done.
            others = self.listener.speaking() - {int(who.user_id)}
            if not others or self.closed:
                return
            await asyncio.sleep(GAP_POLL_S)
        log.info("people kept talking for %.0f s in guild %d: answering anyway", MAX_GAP_WAIT_S, self.guild_id)

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
