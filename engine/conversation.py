"""One conversation turn: the user's audio or text in, the reply's sentences and speech out, all stored.

    async for event in conversation.turn(participant, audio=voice_note_bytes):
        ...  # Heard, ReplySentence, SpeechChunk, SentenceSpoken, VoiceNote, SpeechUnavailable, TurnFinished

The bots and the CLI call only this object's async methods (turns, `say`, voices, settings, `reset`, `forget`);
the store, the voice library and the models behind it are its own. A turn stores the user's words as soon as
they are known, so nothing they said is lost if the LLM or the voice model fails afterwards; the reply is stored
with the audio that was actually made (all of it, or, if the listener interrupted, what was made until then); a
reply cut into voice notes is stored as the notes that were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable

import numpy as np

from engine import hearing
from engine.audio import Samples
from engine.chat_model import ChatModel
from engine.conversation_links import ConversationLinks
from engine.conversation_memory import ConversationMemory
from engine.conversation_resume import LLM_HISTORY_TURNS, ConversationResume, PendingTurn
from engine.conversation_settings import ConversationSettings
from engine.conversation_voices import ConversationVoices
from engine.errors import (
    BadInputError,
    LlmUnavailableError,
    NoSpeechError,
    ServiceUnavailableError,
    SpeechTooLongError,
    TtsUnavailableError,
)
from engine.events import (
    Heard,
    Overheard,
    ReplySentence,
    SentenceSpoken,
    SpeechChunk,
    SpeechUnavailable,
    TurnEvent,
    TurnFinished,
    VoiceNote,
)
from engine.group_talk import History, group_context, own_words
from engine.memory import MemoryKeeper
from engine.participant import Participant
from engine.speech_synthesizer import ContextTurn, SpeechSynthesizer, VoicePrompt
from engine.speech_text import SentenceSplitter, clean_for_speech, speakable_sentences
from engine.speech_to_text import SpeechToText
from engine.store.models import User
from engine.store.repository import Store
from engine.turn_input import decode_input, read_text
from engine.turn_memory import HeardAudio, ReplyDraft, SpokenSentence, TurnMemory
from engine.voice_notes import NoteCutter, NotePolicy, encode_note
from engine.voices import VoiceLibrary, voice_down

__all__ = ["Conversation", "NotePolicy", "Participant", "PendingTurn"]

log = logging.getLogger(__name__)


LLM_DOWN = "I can't think right now: my language model isn't answering. I kept your message; please try again soon."
SPEECH_FAILED = "Something went wrong while I was speaking, so the rest of my answer comes as text."


class Conversation(ConversationVoices, ConversationResume, ConversationSettings, ConversationMemory, ConversationLinks):
    """Everything a platform or the CLI can ask of aLAN; see the module docstring."""

    def __init__(
        self,
        store: Store,
        stt: SpeechToText,
        tts: SpeechSynthesizer,
        llm: ChatModel,
        *,
        max_audio_seconds: float,
        max_audio_bytes: int,
        bot_name: str = "Alan",
    ) -> None:
        self._store = store
        self._stt = stt
        self._tts = tts
        self._llm = llm
        self._voices = VoiceLibrary(store, stt, tts, max_upload_bytes=max_audio_bytes)
        self._memory = TurnMemory(store, tts)
        self._keeper = MemoryKeeper(store, llm, bot_name=bot_name)
        self._keeper.history_turns = LLM_HISTORY_TURNS
        self.max_audio_seconds = max_audio_seconds
        self.max_audio_bytes = max_audio_bytes
        self.bot_name = bot_name  # what people call aLAN: the LLM is told, in a group

    @property
    def store(self) -> Store:
        """Where the conversation is kept; a platform's own tables (Telegram's inbox) share its connections."""
        return self._store

    async def load_models(self, *, hearing_too: bool = True) -> None:
        """Load the speech models now rather than on first use; raises `ServiceUnavailableError` if one can't load."""
        if hearing_too:
            await hearing.load(self._stt)
        try:
            await self._tts.load()
        except TtsUnavailableError as error:
            raise voice_down(error) from error

    async def aclose(self) -> None:
        """Stop remembering, release the LLM client and the speech models' threads."""
        await self._keeper.aclose()
        await self._llm.aclose()
        await self._tts.aclose()

    async def _user(self, who: Participant) -> User:
        return await asyncio.to_thread(self._store.user, who.platform, who.user_id, who.display_name)

    async def _history(self, user: User, who: Participant, limit: int, *, before: int | None = None) -> History:
        """The newest turns here (`before` a turn id): the person's own, or everyone's in a shared scope (with
        who said each)."""
        if not who.shared:
            return History(await asyncio.to_thread(self._store.recent_turns, user.id, who.scope, limit))
        rows = await asyncio.to_thread(functools.partial(self._store.shared_turns, who.scope, limit, before=before))
        names = {turn.id: name for turn, name in rows if turn.role == "user" and name is not None}
        return History([turn for turn, _ in rows], shared=True, names=names)

    async def turn(
        self,
        who: Participant,
        *,
        audio: bytes | Samples | None = None,
        text: str | None = None,
        speak: bool = True,
        voice_name: str | None = None,
        notes: NotePolicy | None = None,
        answer_if: Callable[[str], bool] | None = None,
        name_them: bool = False,
    ) -> AsyncIterator[TurnEvent]:
        """Run one turn. Raises `TurnError` (message for the user) when there is nothing to answer or no LLM.

        `audio` is an encoded file (a voice note, kept as it came when it is OGG/Opus) or decoded `Samples` (a
        platform's PCM, kept at its own rate). With `notes`, the reply also comes as `VoiceNote`s cut at sentence
        ends, each encoded once and stored as sent. `voice_name` speaks this reply with one of the user's voices
        instead of their active one.

        In a group, `answer_if(what they said)` decides whether the words were said to aLAN: if not, they are
        kept in the conversation (with their payload, as the synthesizer's context) and the turn ends with
        `Overheard`. `name_them`: others are listening, so the reply starts with the person's name.
        """
        started = time.perf_counter()
        timings: dict[str, float] = {}
        user = await self._user(who)
        if voice_name is not None:
            await self._voices.find(user.id, voice_name)  # unknown name: fail before anything
        if audio is not None:
            # The language of their recent turns: a clip of a word or two says too little to detect it.
            known_language = await asyncio.to_thread(self._store.user_language, user.id)
            said, language, heard_audio = await self._hear(audio, timings, known_language)
        else:
            said, language, heard_audio = read_text(text), None, None
        addressed = answer_if is None or answer_if(said)
        # Read before this turn is stored: the history the reply follows (nothing to read for words kept unanswered).
        history = await self._history(user, who, LLM_HISTORY_TURNS) if addressed else History([])
        # Stored before anything else can go wrong or be interrupted: what the user said is never lost.
        user_turn = await self._memory.remember_user_turn(
            user.id, who.scope, said, language, heard_audio, addressed=addressed
        )
        if audio is not None:
            yield Heard(said, language)
        if not addressed:
            if heard_audio is not None and speak and self._tts.capabilities.uses_context:
                # Their voice becomes part of the room the synthesizer listens to when aLAN next speaks here.
                await self._memory.add_user_speech(user_turn, heard_audio.samples, heard_audio.sample_rate)
            yield Overheard(said)
            return
        # Make the synthesizer's payload of what the user said while the LLM thinks, ready as its context.
        user_speech = (
            asyncio.ensure_future(self._memory.add_user_speech(user_turn, heard_audio.samples, heard_audio.sample_rate))
            if heard_audio is not None and speak and self._tts.capabilities.uses_context
            else None
        )
        answer = self._answer(
            user, who, history, said, user_speech, speak, voice_name, timings, started,
            language=language, notes=notes, name_them=name_them,
        )  # fmt: skip
        async with self._answering(answer, user_speech):
            async for event in answer:
                yield event

    async def overhear(self, who: Participant, *, audio: bytes | Samples | None = None, text: str | None = None) -> str:
        """Keep what `who` said in their group's conversation without answering it; returns the words kept.

        Raises `TurnError` as `turn()` does (no speech in the audio, a message too long, the store down).
        """
        heard = ""
        async for event in self.turn(who, audio=audio, text=text, answer_if=lambda said: False):
            if isinstance(event, Overheard):
                heard = event.text
        return heard

    @staticmethod
    @contextlib.asynccontextmanager
    async def _answering(
        answer: AsyncIterator[TurnEvent], user_speech: asyncio.Future[ContextTurn | None] | None
    ) -> AsyncIterator[AsyncIterator[TurnEvent]]:
        """However the turn ends, `answer` is closed and the user's payload, if still being made, is cancelled."""
        try:
            # aclosing: an interrupted turn must close the answer too, which stores what was said of it.
            async with contextlib.aclosing(answer):
                yield answer
        finally:
            if user_speech is not None and not user_speech.done():
                user_speech.cancel()

    async def _hear(
        self, audio: bytes | Samples, timings: dict[str, float], language_hint: str | None = None
    ) -> tuple[str, str | None, HeardAudio]:
        start = time.perf_counter()
        heard = await decode_input(audio, self.max_audio_seconds, self.max_audio_bytes)
        transcript = await hearing.transcribe(self._stt, heard.samples, heard.sample_rate, language_hint=language_hint)
        timings["stt_s"] = time.perf_counter() - start
        if transcript.no_speech or not transcript.text.strip():
            # Why each segment was dropped, never its words (logs may end up on disk).
            log.info(
                "no speech in %.1f s of audio (dropped segments: %s)",
                transcript.duration,
                list(transcript.rejection_reasons),
            )
            raise NoSpeechError()
        return transcript.text.strip(), transcript.language, heard

    async def _answer(
        self,
        user: User,
        who: Participant,
        history: History,
        said: str,
        user_speech: asyncio.Future[ContextTurn | None] | None,
        speak: bool,
        voice_name: str | None,
        timings: dict[str, float],
        started: float,
        *,
        language: str | None = None,  # the person's, for the LLM to answer in
        notes: NotePolicy | None = None,
        name_them: bool = False,
    ) -> AsyncIterator[TurnEvent]:
        reply = ReplyDraft(notes=[] if notes is not None else None)
        cutter = NoteCutter(notes) if notes is not None else None
        speaking = speak
        uses_context = speak and self._tts.capabilities.uses_context
        context: list[ContextTurn] = self._memory.spoken_context(history.turns) if uses_context else []
        voice: VoicePrompt | None = None
        if speak:
            try:
                voice = await self._voice(user, who, voice_name)
            except ServiceUnavailableError as error:
                log.error("no voice: %s", error.detail)
                speaking = False
                yield SpeechUnavailable(str(error))
        messages = history.messages()
        situation = group_context(user.display_name, self.bot_name, name_them=name_them) if history.shared else None
        # Only the speaking person's memory, in a group too.
        recollection = await self._recall(user, who)
        situation = "\n\n".join(part for part in (situation, recollection.text) if part) or None
        finished = False
        try:
            try:
                stream = self._llm.stream_reply(
                    messages, history.said(user.display_name, said), language=language, context=situation
                )
                # Having read "Name: words" lines, a model may write its own that way, or go on as someone else.
                deltas = (
                    own_words(stream, self.bot_name, history.people(user.display_name)) if history.shared else stream
                )
                sentences = speakable_sentences(deltas)
                # Closing them on the way out (an interruption, say) closes the HTTP stream: the LLM server stops.
                async with contextlib.aclosing(stream), contextlib.aclosing(deltas), contextlib.aclosing(sentences):
                    async for sentence in sentences:
                        index = len(reply.sentences)
                        reply.sentences.append(sentence)
                        timings.setdefault("first_sentence_s", time.perf_counter() - started)
                        yield ReplySentence(index, sentence)
                        if not speaking:
                            continue
                        spoken_before = len(reply.spoken)
                        try:
                            if user_speech is not None:
                                if (heard := await user_speech) is not None:
                                    context.append(heard)
                                user_speech = None
                            speech = self._speak(sentence, index, voice, context, reply)
                            async with contextlib.aclosing(speech):
                                async for chunk in speech:
                                    timings.setdefault("first_audio_s", time.perf_counter() - started)
                                    yield chunk
                            yield SentenceSpoken(index)
                        except Exception as error:  # any model failure: the answer goes on as text
                            log.exception("speech failed for user %s: %s", user.id, error)
                            speaking = False
                            for note in await self._encode_notes(_rest(cutter), reply):
                                yield note
                            yield SpeechUnavailable(_speech_failure(error))
                        else:
                            if cutter is not None and len(reply.spoken) > spoken_before:
                                for note in await self._encode_notes(cutter.add(index, reply.spoken[-1]), reply):
                                    yield note
            except LlmUnavailableError as error:
                log.error("LLM unavailable: %s", error)
                for note in await self._encode_notes(_rest(cutter), reply):  # what was spoken still goes out
                    yield note
                raise ServiceUnavailableError(LLM_DOWN, str(error)) from error
            for note in await self._encode_notes(_rest(cutter), reply):
                yield note
            if not reply.sentences:
                log.warning("the LLM returned no speakable text for user %s", user.id)
                raise ServiceUnavailableError(LLM_DOWN, "the model's reply was empty")
            if voice is None and speaking and reply.spoken:
                await self._memory.make_house_voice(who.scope, reply)
            finished = True
        finally:
            if reply.notes is not None:
                # Said is what went out in a note: not a sentence spoken after the last one (the turn stopped, or
                # speech failed mid-sentence), which the person never got as audio.
                reply.spoken = reply.spoken[: sum(len(note.sentence_indices) for note in reply.notes)]
            turn_id = await self._memory.store_reply(user.id, who.scope, reply, complete=finished, spoken=speaking)
        if finished and turn_id is not None:
            timings["total_s"] = time.perf_counter() - started
            self._leave_to_remember(user, who, said, reply.text, recollection)  # in the background, after the answer
            yield TurnFinished(reply.text, turn_id, timings)

    @staticmethod
    async def _encode_notes(groups: list[list[tuple[int, SpokenSentence]]], reply: ReplyDraft) -> list[VoiceNote]:
        made = [await encode_note(group) for group in groups]
        if made:
            assert reply.notes is not None  # notes come only from a reply asked for them
            reply.notes.extend(made)  # the stored reply keeps what was sent
        return made

    async def _voice(self, user: User, who: Participant, voice_name: str | None = None) -> VoicePrompt | None:
        """The voice to speak with here, or None for the synthesizer's own (checked to load: fail early)."""
        if voice_name is not None:
            voice = await self._voices.find(user.id, voice_name)
        else:
            voice = await asyncio.to_thread(self._store.active_voice, user.id, who.scope, who.parent_scope)
        if voice is not None and voice.owner_id is None and voice.speech_model != self._tts.tag:
            # A house voice another synthesizer made (tones, say): speaking it again would copy that sound for
            # good. The synthesizer's own voice speaks instead, and this reply becomes the new house voice.
            voice = None
        if voice is not None:
            return await self._voices.prompt(voice)
        try:
            await self._tts.load()
        except TtsUnavailableError as error:
            raise voice_down(error) from error
        return None

    async def _speak(
        self, sentence: str, index: int, voice: VoicePrompt | None, context: list[ContextTurn], reply: ReplyDraft
    ) -> AsyncIterator[SpeechChunk]:
        stream = self._tts.stream(sentence, voice, [*context, *(spoken.as_context() for spoken in reply.spoken)])
        made: list[np.ndarray] = []
        rate = self._tts.capabilities.sample_rate
        try:
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    made.append(chunk.samples)
                    rate = chunk.sample_rate
                    yield SpeechChunk(index, chunk.samples, chunk.sample_rate)
        finally:
            # Interrupted or not, what reached the listener is what was said: keep exactly that (the model may
            # have made a little more than was delivered) for the history.
            delivered = sum(len(chunk) for chunk in made)
            if delivered:
                audio = np.concatenate(made)
                reply.spoken.append(SpokenSentence(sentence, audio, rate, stream.spoken(delivered)))

    # Commands --------------------------------------------------------------------------------------------

    async def say(self, who: Participant, text: str, *, voice_name: str | None = None) -> AsyncIterator[SpeechChunk]:
        """Speak `text` as it is, sentence by sentence, in the user's voice. No LLM, and no turn is stored."""
        user = await self._user(who)
        text = read_text(text)
        voice = await self._voice(user, who, voice_name)
        reply = ReplyDraft()
        splitter = SentenceSplitter()
        spoken = [clean_for_speech(sentence) for sentence in [*splitter.feed(text), *splitter.flush()]]
        for index, sentence in enumerate(sentence for sentence in spoken if sentence):
            reply.sentences.append(sentence)
            speech = self._speak(sentence, index, voice, [], reply)
            try:
                async with contextlib.aclosing(speech):
                    async for chunk in speech:
                        yield chunk
            except SpeechTooLongError as error:
                raise BadInputError(f"I can't say that in one go: {error}") from error
            except TtsUnavailableError as error:
                raise voice_down(error) from error


def _rest(cutter: NoteCutter | None) -> list[list[tuple[int, SpokenSentence]]]:
    """The sentences spoken since the last note, as a last note (none without notes)."""
    return cutter.flush() if cutter is not None else []


def _speech_failure(error: Exception) -> str:
    """What the person is told when speaking failed mid-answer (the rest comes as text)."""
    if isinstance(error, TtsUnavailableError):
        return str(voice_down(error))
    return str(error) if isinstance(error, ServiceUnavailableError) else SPEECH_FAILED
