"""One conversation turn: the user's audio or text in, the reply's sentences and speech out, all stored.

    async for event in conversation.turn(participant, audio=voice_note_bytes):
        ...  # Heard, ReplySentence, SpeechChunk, SentenceSpoken, SpeechUnavailable, TurnFinished

The bots call only this. A turn stores the user's words as soon as they are known, so nothing they said is
lost if the LLM or the voice model fails afterwards; the reply is stored with the audio that was actually made
(all of it, or, if the listener interrupted, what was made until then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from engine.audio import CSM_RATE, WHISPER_RATE, AudioError, decode_audio, resample
from engine.chat_model import ChatMessage, ChatModel
from engine.errors import LlmUnavailable
from engine.events import (
    BadInput,
    Heard,
    NoSpeech,
    ReplySentence,
    SentenceSpoken,
    ServiceUnavailable,
    SpeechChunk,
    SpeechUnavailable,
    TurnEvent,
    TurnFinished,
)
from engine.speech_models import SpeechModels
from engine.speech_text import SentenceSplitter, clean_for_speech, speakable_sentences
from engine.store.models import Turn, User
from engine.store.repository import Store
from engine.tts import SAMPLES_PER_FRAME, BudgetError, Segment
from engine.turn_memory import ReplyDraft, TurnMemory
from engine.visible_text import visible_text
from engine.voices import BOT_SPEAKER, VoiceLibrary, voice_cache_key

log = logging.getLogger(__name__)

LLM_HISTORY_TURNS = 40
MAX_TEXT_CHARS = 4000

LLM_DOWN = "I can't think right now: my language model isn't answering. I kept your message; please try again soon."
SPEECH_FAILED = "Something went wrong while I was speaking, so the rest of my answer comes as text."


@dataclass(frozen=True)
class Participant:
    """Who is talking, and where. `scope` is opaque to the engine: a chat, a channel."""

    platform: str
    user_id: str
    scope: str
    display_name: str | None = None
    # A wider scope whose default voice applies where `scope` has none (a Discord server around its channels).
    parent_scope: str | None = None


@dataclass(frozen=True)
class PendingTurn:
    """A stored user turn that nothing answered: the process stopped (or the answer failed) mid-turn."""

    who: Participant
    turn_id: int
    said_at: datetime  # UTC


class Conversation:
    def __init__(self, store: Store, models: SpeechModels, llm: ChatModel, voices: VoiceLibrary, *,
                 max_audio_seconds: float, max_audio_bytes: int) -> None:  # fmt: skip
        self.store = store
        self.models = models
        self.llm = llm
        self.voices = voices
        self.memory = TurnMemory(store, models)
        self.max_audio_seconds = max_audio_seconds
        self.max_audio_bytes = max_audio_bytes

    async def user(self, who: Participant) -> User:
        return await asyncio.to_thread(self.store.user, who.platform, who.user_id, who.display_name)

    async def turn(
        self,
        who: Participant,
        *,
        audio: bytes | None = None,
        text: str | None = None,
        speak: bool = True,
        voice_name: str | None = None,
    ) -> AsyncIterator[TurnEvent]:
        """Run one turn. Raises `TurnError` (message for the user) when there is nothing to answer or no LLM.

        `voice_name` speaks this reply with one of the user's voices instead of their active one.
        """
        started = time.perf_counter()
        timings: dict[str, float] = {}
        user = await self.user(who)
        if voice_name is not None:
            await asyncio.to_thread(self.voices.find, user.id, voice_name)  # unknown name: fail before anything
        if audio is not None:
            # The language of their recent turns: a clip of a word or two says too little to detect it.
            known_language = await asyncio.to_thread(self.store.user_language, user.id)
            said, language, heard_audio = await self._hear(audio, timings, known_language)
        else:
            said, language, heard_audio = self._read(text), None, None
        history = await asyncio.to_thread(self.store.recent_turns, user.id, who.scope, LLM_HISTORY_TURNS)
        # Stored before anything else can go wrong or be interrupted: what the user said is never lost.
        user_turn = await self.memory.remember_user_turn(user.id, who.scope, said, language, heard_audio)
        if audio is not None:
            yield Heard(said, language)
        # Mimi-encode what the user said while the LLM thinks, so it is ready as CSM context.
        user_codes = (
            asyncio.ensure_future(self.memory.add_user_codes(user_turn, heard_audio))
            if heard_audio is not None and speak
            else None
        )
        answer = self._answer(
            user, who, history, said, user_codes, speak, voice_name, timings, started, language=language
        )
        async with self._answering(answer, user_codes):
            async for event in answer:
                yield event

    @staticmethod
    @contextlib.asynccontextmanager
    async def _answering(
        answer: AsyncIterator[TurnEvent], user_codes: asyncio.Future[Segment | None] | None
    ) -> AsyncIterator[AsyncIterator[TurnEvent]]:
        """However the turn ends, `answer` is closed and the user's codes, if still being made, are cancelled."""
        try:
            # aclosing: an interrupted turn must close the answer too, which stores what was said of it.
            async with contextlib.aclosing(answer):
                yield answer
        finally:
            if user_codes is not None and not user_codes.done():
                user_codes.cancel()

    def _read(self, text: str | None) -> str:
        text = visible_text(text)  # zero-width and control characters alone are no message
        if not text:
            raise BadInput("There's nothing to answer: send me a voice message or some text.")
        if len(text) > MAX_TEXT_CHARS:
            raise BadInput(f"That message is too long for me: please keep it under {MAX_TEXT_CHARS} characters.")
        return text

    async def _hear(
        self, audio: bytes, timings: dict[str, float], language_hint: str | None = None
    ) -> tuple[str, str | None, np.ndarray]:
        start = time.perf_counter()
        try:
            wave = await asyncio.to_thread(
                decode_audio, audio, CSM_RATE, max_seconds=self.max_audio_seconds, max_bytes=self.max_audio_bytes
            )
        except AudioError as error:
            log.info("rejected audio: %s", error)
            raise BadInput(str(error)) from error
        transcript = await self.models.transcribe(resample(wave, CSM_RATE, WHISPER_RATE), language_hint=language_hint)
        timings["stt_s"] = time.perf_counter() - start
        if transcript.no_speech or not transcript.text.strip():
            # Why each segment was dropped, never its words (logs may end up on disk).
            log.info(
                "no speech in %.1f s of audio (dropped segments: %s)",
                transcript.duration,
                list(transcript.rejection_reasons),
            )
            raise NoSpeech()
        return transcript.text.strip(), transcript.language, wave

    async def _answer(
        self,
        user: User,
        who: Participant,
        history: list[Turn],
        said: str,
        user_codes: asyncio.Future[Segment | None] | None,
        speak: bool,
        voice_name: str | None,
        timings: dict[str, float],
        started: float,
        *,
        language: str | None = None,  # the person's, for the LLM to answer in
    ) -> AsyncIterator[TurnEvent]:
        reply = ReplyDraft()
        speaking = speak
        context: list[Segment] = [] if not speak else self.memory.spoken_context(history)
        voice_segment: Segment | None = None
        voice_key: str | None = None
        if speak:
            try:
                voice_segment, voice_key = await self._voice(user, who, voice_name)
            except ServiceUnavailable as error:
                log.error("no voice: %s", error.detail)
                speaking = False
                yield SpeechUnavailable(str(error))
        messages = [ChatMessage(turn.role, turn.text) for turn in history]  # type: ignore[arg-type]
        finished = False
        try:
            try:
                deltas = self.llm.stream_reply(messages, said, language=language)
                sentences = speakable_sentences(deltas)
                # Closing both on the way out (an interruption, say) closes the HTTP stream: the LLM server stops.
                async with contextlib.aclosing(deltas), contextlib.aclosing(sentences):
                    async for sentence in sentences:
                        index = len(reply.sentences)
                        reply.sentences.append(sentence)
                        timings.setdefault("first_sentence_s", time.perf_counter() - started)
                        yield ReplySentence(index, sentence)
                        if not speaking:
                            continue
                        try:
                            if user_codes is not None:
                                if (segment := await user_codes) is not None:
                                    context.append(segment)
                                user_codes = None
                            speech = self._speak(sentence, index, voice_segment, voice_key, context, reply)
                            async with contextlib.aclosing(speech):
                                async for chunk in speech:
                                    timings.setdefault("first_audio_s", time.perf_counter() - started)
                                    yield chunk
                            yield SentenceSpoken(index)
                        except Exception as error:  # any model failure: the answer goes on as text
                            log.exception("speech failed for user %s: %s", user.id, error)
                            speaking = False
                            yield SpeechUnavailable(
                                str(error) if isinstance(error, ServiceUnavailable) else SPEECH_FAILED
                            )
            except LlmUnavailable as error:
                log.error("LLM unavailable: %s", error)
                raise ServiceUnavailable(LLM_DOWN, str(error)) from error
            if not reply.sentences:
                log.warning("the LLM returned no speakable text for user %s", user.id)
                raise ServiceUnavailable(LLM_DOWN, "the model's reply was empty")
            if voice_segment is None and speaking and reply.segments:
                await self.memory.make_house_voice(who.scope, reply)
            finished = True
        finally:
            turn_id = await self.memory.store_reply(user.id, who.scope, reply, complete=finished, spoken=speaking)
        if finished and turn_id is not None:
            timings["total_s"] = time.perf_counter() - started
            yield TurnFinished(reply.text, turn_id, timings)

    async def _voice(
        self, user: User, who: Participant, voice_name: str | None = None
    ) -> tuple[Segment | None, str | None]:
        if voice_name is not None:
            voice = await asyncio.to_thread(self.voices.find, user.id, voice_name)
        else:
            voice = await asyncio.to_thread(self.store.active_voice, user.id, who.scope, who.parent_scope)
        if voice is None:
            await self.models.tts()  # fail early and clearly if there is no voice model at all
            return None, None
        return await self.voices.prompt_segment(voice), voice_cache_key(voice.id)

    async def _speak(
        self,
        sentence: str,
        index: int,
        voice: Segment | None,
        voice_key: str | None,
        context: list[Segment],
        reply: ReplyDraft,
    ) -> AsyncIterator[SpeechChunk]:
        tts = await self.models.tts()
        history = [*context, *reply.segments]
        streams: list = []

        def start():  # type: ignore[no-untyped-def]
            stream = tts.stream(voice, history, sentence, BOT_SPEAKER, voice_cache_key=voice_key)
            streams.append(stream)
            return stream

        made: list[np.ndarray] = []
        try:
            async with contextlib.aclosing(self.models.worker.stream(start)) as chunks:
                async for chunk in chunks:
                    made.append(chunk)
                    yield SpeechChunk(index, chunk, tts.sample_rate)
        finally:
            # Interrupted or not, what reached the listener is what was said: keep exactly that (the model may
            # have made a little more than was delivered) for the history.
            if streams and streams[0].done:
                frames = sum(len(chunk) for chunk in made) // SAMPLES_PER_FRAME
                reply.segments.append(Segment(BOT_SPEAKER, sentence, streams[0].result.codes[:frames]))
                reply.audio.extend(made)

    # Turns left unanswered -------------------------------------------------------------------------------

    async def unanswered(self, platform: str, since: datetime) -> list[PendingTurn]:
        """This platform's user turns since `since` that are still the last word in their scope, oldest first."""
        rows = await asyncio.to_thread(self.store.unanswered_turns, platform, since)
        return [
            PendingTurn(
                Participant(platform, user.platform_user_id, turn.scope, user.display_name),
                turn.id,
                turn.created_at if turn.created_at.tzinfo else turn.created_at.replace(tzinfo=UTC),
            )
            for turn, user in rows
        ]

    async def resume(self, who: Participant, turn_id: int, *, speak: bool = True) -> AsyncIterator[TurnEvent]:
        """Answer a stored user turn that has no reply yet, exactly as `turn()` answers; it isn't stored again.

        Yields nothing when the turn no longer waits for an answer (answered, /reset or /forget meanwhile).
        """
        started = time.perf_counter()
        timings: dict[str, float] = {}
        found = await self._waiting(who, turn_id, LLM_HISTORY_TURNS + 1)
        if found is None:
            return
        user, history = found
        pending, history = history[-1], history[:-1]
        has_audio = pending.codes is not None or pending.audio is not None
        user_codes = asyncio.ensure_future(self._stored_codes(pending)) if speak and has_audio else None
        answer = self._answer(
            user, who, history, pending.text, user_codes, speak, None, timings, started, language=pending.language
        )
        async with self._answering(answer, user_codes):
            async for event in answer:
                yield event

    async def close_unanswered(self, who: Participant, turn_id: int, said: str) -> bool:
        """Store `said` (what the person was told instead of an answer) as the reply to a waiting turn.

        Returns False, storing nothing, when the turn no longer waits (answered or deleted meanwhile).
        """
        found = await self._waiting(who, turn_id, 1)
        if found is None:
            return False
        await asyncio.to_thread(self.store.add_turn, found[0].id, who.scope, "assistant", said)
        return True

    async def _waiting(self, who: Participant, turn_id: int, limit: int) -> tuple[User, list[Turn]] | None:
        """The user and their newest `limit` turns here, if the newest is still `turn_id`, unanswered."""
        # find_user, not user(): someone who used /forget meanwhile must not be created again.
        user = await asyncio.to_thread(self.store.find_user, who.platform, who.user_id)
        if user is None:
            return None
        history = await asyncio.to_thread(self.store.recent_turns, user.id, who.scope, limit)
        if not history or history[-1].id != turn_id or history[-1].role != "user":
            return None
        return user, history

    async def _stored_codes(self, turn: Turn) -> Segment | None:
        """A stored user turn as CSM context: its Mimi codes, made from its audio if it has none yet."""
        if turn.codes is not None and turn.codes_codebooks:
            return self.memory.spoken_context([turn])[0]
        assert turn.audio is not None
        wave = await asyncio.to_thread(decode_audio, turn.audio, CSM_RATE)
        return await self.memory.add_user_codes(turn, wave)

    # Commands --------------------------------------------------------------------------------------------

    async def say(self, who: Participant, text: str, *, voice_name: str | None = None) -> AsyncIterator[SpeechChunk]:
        """Speak `text` as it is, sentence by sentence, in the user's voice. No LLM, and no turn is stored."""
        user = await self.user(who)
        text = self._read(text)
        voice_segment, voice_key = await self._voice(user, who, voice_name)
        reply = ReplyDraft()
        splitter = SentenceSplitter()
        spoken = [clean_for_speech(sentence) for sentence in [*splitter.feed(text), *splitter.flush()]]
        for index, sentence in enumerate(sentence for sentence in spoken if sentence):
            reply.sentences.append(sentence)
            speech = self._speak(sentence, index, voice_segment, voice_key, [], reply)
            try:
                async with contextlib.aclosing(speech):
                    async for chunk in speech:
                        yield chunk
            except BudgetError as error:
                raise BadInput(f"I can't say that in one go: {error}") from error

    async def set_reply_with_text(self, who: Participant, enabled: bool) -> None:
        """Whether this user also gets the reply (and what was heard) as text."""
        user = await self.user(who)
        await asyncio.to_thread(self.store.set_reply_with_text, user.id, enabled)

    async def reset(self, who: Participant) -> int:
        """Forget this conversation (here), keep the user's voices. Returns how many turns were deleted."""
        user = await self.user(who)
        return await asyncio.to_thread(self.store.clear_conversation, user.id, who.scope)

    async def forget(self, who: Participant) -> None:
        """Delete everything stored about this user: voices, conversations, settings."""
        user = await asyncio.to_thread(self.store.find_user, who.platform, who.user_id)
        if user is not None:
            await asyncio.to_thread(self.store.forget_user, user.id)
            # Caches are rebuilt on demand; emptying them is the simple way to be sure nothing of theirs stays.
            self.models.forget_cached()
            log.info("forgot user %s on request", user.id)
