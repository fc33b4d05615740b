"""What a conversation remembers: turns as stored rows, and stored turns as the synthesizer's context.

Opus encoding and database writes run in worker threads: a two-minute voice note takes about half a second to
encode, and the event loop serves every other chat meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.exc import IntegrityError

from engine.audio import encode_ogg_opus
from engine.errors import StorageUnavailableError, TtsUnavailableError
from engine.events import VoiceNote
from engine.group_talk import person_key
from engine.speech_synthesizer import ASSISTANT, ContextTurn, SpeechPayload, SpeechSynthesizer
from engine.store.models import Turn
from engine.store.repository import Store

log = logging.getLogger(__name__)

# The newest spoken turns offered to the synthesizer as context; it keeps as many of them as fit.
SPOKEN_CONTEXT_TURNS = 8
# The first reply in a scope without any voice becomes that scope's voice if it is at least this long.
MIN_HOUSE_VOICE_SECONDS = 1.5
# Encoding what was heard of a reply cut short (see `_encode_what_was_heard`): the next turn may wait on it.
ENCODE_HEARD_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SpokenSentence:
    """A sentence of the reply as the listener heard it: its audio, and the synthesizer's payload of that."""

    text: str
    audio: np.ndarray
    sample_rate: int
    payload: SpeechPayload | None

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    def as_context(self) -> ContextTurn:
        return ContextTurn(ASSISTANT, self.text, self.payload)


@dataclass
class ReplyDraft:
    """What has been said of a reply so far."""

    sentences: list[str] = field(default_factory=list)
    spoken: list[SpokenSentence] = field(default_factory=list)
    notes: list[VoiceNote] | None = None  # as sent, when the platform asked for voice notes (else None)

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


@dataclass(frozen=True)
class HeardAudio:
    """What a person said, as samples for the models and as the bytes to keep (encoded once, or as received)."""

    samples: np.ndarray
    sample_rate: int
    stored: bytes


class TurnMemory:
    def __init__(self, store: Store, tts: SpeechSynthesizer) -> None:
        self.store = store
        self.tts = tts

    async def remember_user_turn(
        self,
        user_id: int,
        scope: str,
        said: str,
        language: str | None,
        audio: HeardAudio | None,
        *,
        addressed: bool = True,
    ) -> Turn:
        def write() -> Turn:
            stored = audio.stored if audio is not None else None
            return self.store.add_turn(
                user_id, scope, "user", said, language=language, audio=stored, addressed=addressed
            )

        try:
            return await asyncio.to_thread(write)
        except StorageUnavailableError as error:  # the one case where what they said is not kept: say so
            raise error.saying("I couldn't save your message, so I haven't answered it") from error

    async def add_user_speech(self, turn: Turn, audio: np.ndarray, sample_rate: int) -> ContextTurn | None:
        """The synthesizer's payload of what the person said, kept with their turn; None without a voice model."""
        try:
            payload = await self.tts.encode(audio, sample_rate)
        except TtsUnavailableError:
            return None  # the reply says once that there is no voice
        if payload is None:
            return ContextTurn(person_key(turn.user_id), turn.text)
        try:
            if not await asyncio.to_thread(self.store.set_turn_speech, turn.id, payload):
                log.info("turn %s was deleted (/reset or /forget) while its audio was encoded", turn.id)
        except StorageUnavailableError:
            pass  # logged by the store; the payload still serves this reply, only not later ones
        return ContextTurn(person_key(turn.user_id), turn.text, payload)

    def spoken_context(self, history: list[Turn]) -> list[ContextTurn]:
        """The newest turns that carry this synthesizer's payload, as its context: each person their own speaker."""
        spoken = [turn for turn in history if turn.speech is not None and turn.speech_model == self.tts.tag]
        return [
            ContextTurn(
                ASSISTANT if turn.role == "assistant" else person_key(turn.user_id),
                turn.text,
                SpeechPayload(self.tts.tag, turn.speech),  # type: ignore[arg-type]
            )
            for turn in spoken[-SPOKEN_CONTEXT_TURNS:]
        ]

    async def store_reply(
        self, user_id: int, scope: str, reply: ReplyDraft, *, complete: bool, spoken: bool
    ) -> int | None:
        """Store the reply as it was said; returns its turn id, or None when nothing of it was said."""
        if not reply.sentences or (spoken and not complete and not reply.spoken):
            return None  # an interrupted spoken reply nobody heard isn't part of the conversation
        # A reply cut short keeps only the sentences that were spoken, so the LLM later knows what was heard.
        interrupted = not complete and reply.spoken
        text = " ".join(sentence.text for sentence in reply.spoken) if interrupted else reply.text
        payloads = [sentence.payload for sentence in reply.spoken]

        def write() -> Turn:
            audio = None
            if reply.notes is not None:
                # The notes as they were sent, one after another: a chained Ogg stream, which decodes as one.
                audio = b"".join(note.data for note in reply.notes) or None
            elif reply.spoken:
                samples = np.concatenate([sentence.audio for sentence in reply.spoken])
                audio = encode_ogg_opus(samples, reply.spoken[0].sample_rate) if samples.size else None
            speech = self._whole(payloads)
            return self.store.add_turn(user_id, scope, "assistant", text, audio=audio, speech=speech)

        try:
            turn = await asyncio.to_thread(write)
        except IntegrityError:
            # The user asked to be forgotten while this reply was being made: there is no one to store it for.
            log.info("user %s was deleted during a reply; the reply is not stored", user_id)
            return None
        except StorageUnavailableError as error:  # they heard it; it won't be in the history the LLM sees next time
            raise error.saying("I couldn't keep my answer in our conversation") from error
        if spoken and turn.speech is None:
            await self._encode_what_was_heard(turn.id, reply.spoken)
        return turn.id

    async def _encode_what_was_heard(self, turn_id: int, sentences: list[SpokenSentence]) -> None:
        """Give a stored reply the payload it lacks for the spoken context: a synthesizer that can't tell what was
        heard of a sentence the listener cut short (the speech service makes the payload of whole sentences) gives
        none, so the audio heard is encoded, as a person's words are. After the reply is stored, and bounded in
        time: failing costs the next turns this reply's voice as context, nothing else."""
        if not self.tts.capabilities.uses_context:
            return
        if not any(sentence.payload is None and sentence.audio.size for sentence in sentences):
            return  # nothing to add (or a sentence without audio: no whole payload to make)
        try:
            async with asyncio.timeout(ENCODE_HEARD_TIMEOUT_S):
                payloads = [
                    sentence.payload or await self.tts.encode(sentence.audio, sentence.sample_rate)
                    for sentence in sentences
                ]
            joined = self._whole(payloads)
            if joined is not None and not await asyncio.to_thread(self.store.set_turn_speech, turn_id, joined):
                log.info("reply %s was deleted (/reset or /forget) while what was heard of it was encoded", turn_id)
        except Exception as error:  # the voice failing, slow, or the database: the reply is stored all the same
            log.info("what was heard of an interrupted reply was not kept as the voice's context: %s", error)

    def _whole(self, payloads: list[SpeechPayload | None]) -> SpeechPayload | None:
        """The reply's payload, its sentences' joined; None unless every sentence has one (or there are none)."""
        if not payloads or any(payload is None for payload in payloads):
            return None
        return self.tts.join([payload for payload in payloads if payload is not None])

    async def make_house_voice(self, scope: str, reply: ReplyDraft) -> None:
        """Keep the first sentence of the first reply in a voiceless scope as that scope's voice."""
        first = reply.spoken[0]
        if first.payload is None or first.seconds < MIN_HOUSE_VOICE_SECONDS:
            return
        payload = first.payload
        # The first voice note is often that very sentence: its bytes serve, encoded once.
        note = reply.notes[0] if reply.notes and len(reply.notes[0].sentence_indices) == 1 else None
        sent = note.data if note is not None and note.text == first.text else None

        def write() -> int:
            voice = self.store.add_voice(
                None,
                f"house voice of {scope}",
                reference_audio=sent or encode_ogg_opus(first.audio, first.sample_rate),
                reference_seconds=first.seconds,
                transcript=first.text,
                speech=payload,
                house_scope=scope,
            )
            self.store.set_scope_voice(scope, voice.id)
            return voice.id

        try:
            voice_id = await asyncio.to_thread(write)
        except Exception:  # the reply was spoken all the same; the next one tries again
            log.exception("could not keep a house voice for scope %s", scope)
            return
        log.info("scope %s now speaks with house voice %s", scope, voice_id)
