"""What a conversation remembers: turns as stored rows, and stored turns as CSM context.

Opus encoding and database writes run in worker threads: a two-minute voice note takes about half a second to
encode, and the event loop serves every other chat meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from sqlalchemy.exc import IntegrityError

from engine.audio import CSM_RATE, encode_ogg_opus
from engine.events import ServiceUnavailable, StorageUnavailable
from engine.speech_models import SpeechModels
from engine.store.codes import codes_from_bytes, codes_to_bytes
from engine.store.models import Turn
from engine.store.repository import Store
from engine.tts import Segment
from engine.voices import BOT_SPEAKER

log = logging.getLogger(__name__)

USER_SPEAKER = 1
# The newest spoken turns offered to CSM as context; the budget planner keeps as many of them as fit.
CSM_HISTORY_TURNS = 8
# The first reply in a scope without any voice becomes that scope's voice if it is at least this long.
MIN_HOUSE_VOICE_SECONDS = 1.5


@dataclass
class ReplyDraft:
    """What has been said of a reply so far."""

    sentences: list[str] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)  # spoken sentences, as CSM context for the next
    audio: list[np.ndarray] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def _ogg_or_none(audio: np.ndarray | None) -> bytes | None:
    return encode_ogg_opus(audio, CSM_RATE) if audio is not None and audio.size else None


class TurnMemory:
    def __init__(self, store: Store, models: SpeechModels) -> None:
        self.store = store
        self.models = models

    async def remember_user_turn(
        self, user_id: int, scope: str, said: str, language: str | None, audio: np.ndarray | None
    ) -> Turn:
        def write() -> Turn:
            return self.store.add_turn(user_id, scope, "user", said, language=language, audio=_ogg_or_none(audio))

        try:
            return await asyncio.to_thread(write)
        except StorageUnavailable as error:  # the one case where what they said is not kept: say so
            raise error.saying("I couldn't save your message, so I haven't answered it") from error

    async def add_user_codes(self, turn: Turn, audio: np.ndarray) -> Segment | None:
        """Mimi-encode what the user said and keep the codes with their turn; None without a voice model."""
        try:
            codes = await self.models.encode(audio)
        except ServiceUnavailable:
            return None  # the reply says once that there is no voice
        data, codebooks = codes_to_bytes(codes.numpy())
        try:
            if not await asyncio.to_thread(self.store.update_turn, turn.id, codes=data, codes_codebooks=codebooks):
                log.info("turn %s was deleted (/reset or /forget) while its audio was encoded", turn.id)
        except StorageUnavailable:
            pass  # logged by the store; the codes still serve this reply, only not later ones
        return Segment(USER_SPEAKER, turn.text, codes)

    @staticmethod
    def spoken_context(history: list[Turn]) -> list[Segment]:
        """The newest turns that have audio codes, as CSM segments: aLAN as speaker 0, the user as 1."""
        spoken = [turn for turn in history if turn.codes is not None and turn.codes_codebooks][-CSM_HISTORY_TURNS:]
        return [
            Segment(
                BOT_SPEAKER if turn.role == "assistant" else USER_SPEAKER,
                turn.text,
                torch.from_numpy(codes_from_bytes(turn.codes, turn.codes_codebooks)),  # type: ignore[arg-type]
            )
            for turn in spoken
        ]

    async def store_reply(
        self, user_id: int, scope: str, reply: ReplyDraft, *, complete: bool, spoken: bool
    ) -> int | None:
        """Store the reply as it was said; returns its turn id, or None when nothing of it was said."""
        if not reply.sentences or (spoken and not complete and not reply.segments):
            return None  # an interrupted spoken reply nobody heard isn't part of the conversation
        codes = [segment.codes for segment in reply.segments if segment.codes is not None and len(segment.codes)]
        # A reply cut short keeps only the sentences that were spoken, so the LLM later knows what was heard.
        interrupted = not complete and reply.segments
        text = " ".join(segment.text for segment in reply.segments) if interrupted else reply.text

        def write() -> Turn:
            data, codebooks = codes_to_bytes(torch.cat(codes).numpy()) if codes else (None, None)
            audio = np.concatenate(reply.audio) if reply.audio else None
            return self.store.add_turn(
                user_id, scope, "assistant", text, audio=_ogg_or_none(audio), codes=data, codes_codebooks=codebooks
            )

        try:
            return (await asyncio.to_thread(write)).id
        except IntegrityError:
            # The user asked to be forgotten while this reply was being made: there is no one to store it for.
            log.info("user %s was deleted during a reply; the reply is not stored", user_id)
            return None
        except StorageUnavailable as error:  # they heard it; it won't be in the history the LLM sees next time
            raise error.saying("I couldn't keep my answer in our conversation") from error

    async def make_house_voice(self, scope: str, reply: ReplyDraft) -> None:
        """Keep the first sentence of the first reply in a voiceless scope as that scope's voice."""
        first = reply.segments[0]
        if first.codes is None or first.seconds < MIN_HOUSE_VOICE_SECONDS:
            return
        try:
            tts = await self.models.tts()
            audio = await self.models.worker.call(tts.decode_codes, first.codes)
            data, codebooks = codes_to_bytes(first.codes.numpy())

            def write() -> int:
                voice = self.store.add_voice(
                    None,
                    f"house voice of {scope}",
                    reference_audio=encode_ogg_opus(audio, CSM_RATE),
                    reference_seconds=first.seconds,
                    transcript=first.text,
                    codes=data,
                    codes_codebooks=codebooks,
                    codes_model=self.models.tts_model_name,
                    house_scope=scope,
                )
                self.store.set_scope_voice(scope, voice.id)
                return voice.id

            voice_id = await asyncio.to_thread(write)
        except Exception:  # the reply was spoken all the same; the next one tries again
            log.exception("could not keep a house voice for scope %s", scope)
            return
        log.info("scope %s now speaks with house voice %s", scope, voice_id)
