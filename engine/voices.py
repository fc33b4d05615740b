"""Cloned voices: from a user's clip to a stored voice that the speech synthesizer speaks with.

Cloning is two steps so the user can check the transcript (CSM copies the voice best when the transcript is
exactly what is said): `prepare` decodes, trims, normalises, checks the length and transcribes; `save` takes
the confirmed transcript and the user's consent, has the synthesizer make its payload of the clip once (CSM: its
Mimi codes) and stores everything.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import numpy as np

from engine import hearing
from engine.audio import decode_audio, encode_ogg_opus
from engine.consent import CONSENT_STATEMENT
from engine.errors import AudioError, BadInputError, NoSpeechError, ServiceUnavailableError, TtsUnavailableError
from engine.speech_synthesizer import SpeechPayload, SpeechSynthesizer, VoicePrompt
from engine.speech_to_text import SpeechToText
from engine.store.models import Voice
from engine.store.repository import EVERYWHERE, Store
from engine.visible_text import visible_text
from engine.voice_prep import normalise_loudness, trim_silence

log = logging.getLogger(__name__)

TTS_DOWN = "I can't speak right now: my voice model isn't available. I'll answer in text."
# Clips are decoded at this rate: what speech synthesizers and Opus take, above Whisper's 16 kHz.
CLIP_RATE = 24_000
MIN_CLONE_SECONDS = 3.0
# Past ~30 s a longer reference stops helping the likeness and only costs prefill time and context.
MAX_CLONE_SECONDS = 30.0
# A clip may arrive with long silences around it; this caps what is decoded before trimming.
MAX_UPLOAD_SECONDS = 180.0
NAME_PATTERN = re.compile(r"^[\w][\w .'-]{0,39}$")
EMPTY_TRANSCRIPT = "The transcript is empty (it has no visible words): tell me exactly what is said in the clip."


@dataclass
class CloneDraft:
    """A clip ready to become a voice, waiting for the user to confirm its transcript and consent."""

    audio: np.ndarray  # CLIP_RATE mono, trimmed and normalised
    seconds: float
    transcript: str  # what Whisper heard; the user may correct it
    language: str | None


@dataclass(frozen=True)
class VoiceInfo:
    """One of a person's voices as they see it listed."""

    id: int
    name: str
    seconds: float
    active: bool  # the one speaking to them where they asked


def voice_cache_key(voice_id: int) -> str:
    """The key under which the synthesizer may cache work done on a voice."""
    return f"voice-{voice_id}"


def voice_down(error: TtsUnavailableError) -> ServiceUnavailableError:
    """A synthesizer that can't load, told to the person; the operator's fix goes to the logs."""
    return ServiceUnavailableError(TTS_DOWN, str(error))


def _exact_transcript(transcript: str) -> str:
    """The transcript as the words it shows; refused when it shows none (invisible characters count as none)."""
    text = visible_text(transcript)
    if not text:
        raise BadInputError(EMPTY_TRANSCRIPT)
    return text


def check_voice_name(name: str) -> str:
    name = " ".join(name.split())
    if not NAME_PATTERN.match(name):
        raise BadInputError("A voice name is 1–40 letters, digits, spaces, dots, dashes or apostrophes.")
    return name


class VoiceLibrary:
    """A person's voices: cloning, choosing, naming, deleting, and a voice as the synthesizer's prompt."""

    def __init__(self, store: Store, stt: SpeechToText, tts: SpeechSynthesizer, *, max_upload_bytes: int) -> None:
        self.store = store
        self.stt = stt
        self.tts = tts
        self.max_upload_bytes = max_upload_bytes

    async def prepare(self, clip: bytes, transcript: str | None = None) -> CloneDraft:
        """Decode, trim, normalise, length-check and (unless given) transcribe a clip.

        Raises `TurnError`s for the user. A given transcript is trusted as exact and skips Whisper.
        """
        if not self.tts.capabilities.clones_voices:
            raise BadInputError("My voice model can't copy voices, so I can't clone one: I speak in my own voice.")
        try:
            raw = await asyncio.to_thread(
                decode_audio, clip, CLIP_RATE, max_seconds=MAX_UPLOAD_SECONDS, max_bytes=self.max_upload_bytes
            )
        except AudioError as error:
            raise BadInputError(str(error)) from error
        audio = await asyncio.to_thread(lambda: normalise_loudness(trim_silence(raw, CLIP_RATE), CLIP_RATE))
        seconds = len(audio) / CLIP_RATE
        if seconds == 0:
            raise NoSpeechError()
        if seconds < MIN_CLONE_SECONDS:
            raise BadInputError(
                f"That clip has only {seconds:.1f} s of speech: I need at least {MIN_CLONE_SECONDS:g} seconds "
                f"(10–{MAX_CLONE_SECONDS:g} s works best) of one person talking clearly."
            )
        if transcript is not None and transcript.strip():
            text, language = _exact_transcript(transcript), None
        else:
            heard = await hearing.transcribe(self.stt, audio, CLIP_RATE)
            if heard.no_speech:
                raise NoSpeechError()
            text, language = heard.text, heard.language
        await self._check_fits(text, seconds)
        return CloneDraft(audio, seconds, text, language)

    async def _check_fits(self, transcript: str, seconds: float) -> None:
        try:
            fits = await self.tts.max_reference_seconds(transcript)
        except TtsUnavailableError as error:
            raise voice_down(error) from error
        limit = min(MAX_CLONE_SECONDS, fits)
        if seconds > limit:
            raise BadInputError(
                f"That clip has {seconds:.0f} s of speech; the most I can use is {limit:.0f} s. "
                f"Please send a shorter clip: 10–{limit:.0f} s of clear speech."
            )

    async def _encode(self, audio: np.ndarray) -> SpeechPayload:
        try:
            payload = await self.tts.encode(audio, CLIP_RATE)
        except TtsUnavailableError as error:
            raise voice_down(error) from error
        if payload is None:
            raise ServiceUnavailableError(TTS_DOWN, f"{self.tts.tag} keeps nothing of a reference clip")
        return payload

    async def save(self, owner_id: int, name: str, draft: CloneDraft, transcript: str) -> Voice:
        """Store the voice with the user's consent and make it their voice everywhere."""
        name = check_voice_name(name)
        transcript = _exact_transcript(transcript)
        await self._check_fits(transcript, draft.seconds)
        payload = await self._encode(draft.audio)
        reference = await asyncio.to_thread(encode_ogg_opus, draft.audio, CLIP_RATE)
        voice = await asyncio.to_thread(
            self.store.add_voice,
            owner_id,
            name,
            reference_audio=reference,
            reference_seconds=draft.seconds,
            transcript=transcript,
            language=draft.language,
            speech=payload,
            consent_statement=CONSENT_STATEMENT,
        )
        await asyncio.to_thread(self.store.choose_voice, owner_id, voice.id, EVERYWHERE)
        log.info("user %s cloned voice %s (%.1f s)", owner_id, voice.id, draft.seconds)
        return voice

    def _find(self, owner_id: int, name: str) -> Voice:
        voice = self.store.voice_by_name(owner_id, " ".join(name.split()))
        if voice is None:
            names = ", ".join(v.name for v in self.store.voices_of(owner_id)) or "none yet"
            raise BadInputError(f"You have no voice called “{name}”. Your voices: {names}.")
        return voice

    async def find(self, owner_id: int, name: str) -> Voice:
        """The owner's voice `name`; `BadInputError` listing their voices when there is none by that name."""
        return await asyncio.to_thread(self._find, owner_id, name)

    async def name_taken(self, owner_id: int, name: str) -> bool:
        return await asyncio.to_thread(self.store.voice_by_name, owner_id, " ".join(name.split())) is not None

    async def prompt(self, voice: Voice) -> VoicePrompt:
        """The voice as the synthesizer's prompt, encoding its clip again if another model made the stored one."""
        if voice.speech is not None and voice.speech_model == self.tts.tag:
            payload = SpeechPayload(self.tts.tag, voice.speech)
        else:
            audio = await asyncio.to_thread(decode_audio, voice.reference_audio, CLIP_RATE)
            payload = await self._encode(audio)
            await asyncio.to_thread(self.store.set_voice_speech, voice.id, payload)
        return VoicePrompt(voice_cache_key(voice.id), voice.transcript, payload)

    # Choosing and managing voices ----------------------------------------------------------------------

    async def listing(self, owner_id: int, scope: str) -> list[VoiceInfo]:
        """The owner's voices by name, each with whether it is the one speaking to them in `scope`."""

        def read() -> list[VoiceInfo]:
            active = self.store.active_voice(owner_id, scope)
            return [
                VoiceInfo(voice.id, voice.name, voice.reference_seconds, active is not None and voice.id == active.id)
                for voice in self.store.voices_of(owner_id)
            ]

        return await asyncio.to_thread(read)

    async def use(self, owner_id: int, name: str, scope: str = EVERYWHERE) -> Voice:
        """Speak to this user with their voice `name` (everywhere, or only in `scope`)."""

        def choose() -> Voice:
            voice = self._find(owner_id, name)
            self.store.choose_voice(owner_id, voice.id, scope)
            return voice

        return await asyncio.to_thread(choose)

    async def use_as_scope_default(self, owner_id: int, name: str, scope: str) -> Voice:
        """Make the owner's voice `name` the default for everyone in `scope` (a server manager's choice)."""

        def choose() -> Voice:
            voice = self._find(owner_id, name)
            self.store.set_scope_voice(scope, voice.id, set_by_user_id=owner_id)
            return voice

        return await asyncio.to_thread(choose)

    async def rename(self, owner_id: int, name: str, new_name: str) -> Voice:
        new_name = check_voice_name(new_name)

        def rename() -> Voice:
            voice = self._find(owner_id, name)
            self.store.rename_voice(voice.id, new_name)
            voice.name = new_name  # the detached row, as it now is
            return voice

        return await asyncio.to_thread(rename)

    async def delete(self, owner_id: int, name: str) -> None:
        def delete() -> Voice:
            voice = self._find(owner_id, name)
            self.store.delete_voice(voice.id)
            return voice

        voice = await asyncio.to_thread(delete)
        self.tts.forget(voice_cache_key(voice.id))
