"""Cloned voices: from a user's clip to a stored reference segment that CSM speaks with.

Cloning is two steps so the user can check the transcript (CSM copies the voice best when the transcript is
exactly what is said): `prepare` decodes, trims, normalises, checks the length and transcribes; `save` takes
the confirmed transcript and the user's consent, computes the Mimi codes once and stores everything.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import numpy as np
import torch

from engine.audio import CSM_RATE, WHISPER_RATE, AudioError, decode_audio, encode_ogg_opus, resample
from engine.consent import CONSENT_STATEMENT
from engine.events import BadInput, NoSpeech
from engine.speech_models import SpeechModels
from engine.store.codes import codes_from_bytes, codes_to_bytes
from engine.store.models import Voice
from engine.store.repository import EVERYWHERE, Store
from engine.tts import Segment
from engine.visible_text import visible_text
from engine.voice_prep import normalise_loudness, trim_silence

log = logging.getLogger(__name__)

BOT_SPEAKER = 0
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

    audio: np.ndarray  # 24 kHz mono, trimmed and normalised
    seconds: float
    transcript: str  # what Whisper heard; the user may correct it
    language: str | None


def voice_cache_key(voice_id: int) -> str:
    """The key of a voice's prefix KV in the TTS cache."""
    return f"voice-{voice_id}"


def _exact_transcript(transcript: str) -> str:
    """The transcript as the words it shows; refused when it shows none (invisible characters count as none)."""
    text = visible_text(transcript)
    if not text:
        raise BadInput(EMPTY_TRANSCRIPT)
    return text


def check_voice_name(name: str) -> str:
    name = " ".join(name.split())
    if not NAME_PATTERN.match(name):
        raise BadInput("A voice name is 1–40 letters, digits, spaces, dots, dashes or apostrophes.")
    return name


class VoiceLibrary:
    def __init__(self, store: Store, models: SpeechModels, *, max_upload_bytes: int) -> None:
        self.store = store
        self.models = models
        self.max_upload_bytes = max_upload_bytes

    async def prepare(self, clip: bytes, transcript: str | None = None) -> CloneDraft:
        """Decode, trim, normalise, length-check and (unless given) transcribe a clip.

        Raises `TurnError`s for the user. A given transcript is trusted as exact and skips Whisper.
        """
        try:
            raw = await asyncio.to_thread(
                decode_audio, clip, CSM_RATE, max_seconds=MAX_UPLOAD_SECONDS, max_bytes=self.max_upload_bytes
            )
        except AudioError as error:
            raise BadInput(str(error)) from error
        audio = normalise_loudness(trim_silence(raw, CSM_RATE), CSM_RATE)
        seconds = len(audio) / CSM_RATE
        if seconds == 0:
            raise NoSpeech()
        if seconds < MIN_CLONE_SECONDS:
            raise BadInput(
                f"That clip has only {seconds:.1f} s of speech: I need at least {MIN_CLONE_SECONDS:g} seconds "
                f"(10–{MAX_CLONE_SECONDS:g} s works best) of one person talking clearly."
            )
        if transcript is not None and transcript.strip():
            text, language = _exact_transcript(transcript), None
        else:
            heard = await self.models.transcribe(resample(audio, CSM_RATE, WHISPER_RATE))
            if heard.no_speech:
                raise NoSpeech()
            text, language = heard.text, heard.language
        await self._check_fits(text, seconds)
        return CloneDraft(audio, seconds, text, language)

    async def _check_fits(self, transcript: str, seconds: float) -> None:
        tts = await self.models.tts()
        limit = min(MAX_CLONE_SECONDS, tts.max_reference_seconds(transcript, BOT_SPEAKER))
        if seconds > limit:
            raise BadInput(
                f"That clip has {seconds:.0f} s of speech; the most I can use is {limit:.0f} s. "
                f"Please send a shorter clip: 10–{limit:.0f} s of clear speech."
            )

    async def save(self, owner_id: int, name: str, draft: CloneDraft, transcript: str) -> Voice:
        """Store the voice with the user's consent and make it their voice everywhere."""
        name = check_voice_name(name)
        transcript = _exact_transcript(transcript)
        await self._check_fits(transcript, draft.seconds)
        codes = await self.models.encode(draft.audio)
        data, codebooks = codes_to_bytes(codes.numpy())
        voice = await asyncio.to_thread(
            self.store.add_voice,
            owner_id,
            name,
            reference_audio=encode_ogg_opus(draft.audio, CSM_RATE),
            reference_seconds=draft.seconds,
            transcript=transcript,
            language=draft.language,
            codes=data,
            codes_codebooks=codebooks,
            codes_model=self.models.tts_model_name,
            consent_statement=CONSENT_STATEMENT,
        )
        await asyncio.to_thread(self.store.choose_voice, owner_id, voice.id, EVERYWHERE)
        log.info("user %s cloned voice %s (%.1f s)", owner_id, voice.id, draft.seconds)
        return voice

    def find(self, owner_id: int, name: str) -> Voice:
        voice = self.store.voice_by_name(owner_id, " ".join(name.split()))
        if voice is None:
            names = ", ".join(v.name for v in self.store.voices_of(owner_id)) or "none yet"
            raise BadInput(f"You have no voice called “{name}”. Your voices: {names}.")
        return voice

    async def prompt_segment(self, voice: Voice) -> Segment:
        """The voice as CSM's reference segment, re-encoding its clip if the stored codes came from another model."""
        if voice.codes is not None and voice.codes_codebooks and voice.codes_model == self.models.tts_model_name:
            codes = torch.from_numpy(codes_from_bytes(voice.codes, voice.codes_codebooks))
        else:
            audio = await asyncio.to_thread(decode_audio, voice.reference_audio, CSM_RATE)
            codes = await self.models.encode(audio)
            data, codebooks = codes_to_bytes(codes.numpy())
            await asyncio.to_thread(self.store.set_voice_codes, voice.id, data, codebooks, self.models.tts_model_name)
        return Segment(BOT_SPEAKER, voice.transcript, codes)

    # Choosing and managing voices ----------------------------------------------------------------------

    def listing(self, owner_id: int, scope: str) -> list[tuple[str, bool]]:
        """The owner's voices by name, each with whether it is the one speaking to them in `scope`."""
        active = self.store.active_voice(owner_id, scope)
        return [(voice.name, active is not None and voice.id == active.id) for voice in self.store.voices_of(owner_id)]

    def use(self, owner_id: int, name: str, scope: str = EVERYWHERE) -> Voice:
        """Speak to this user with their voice `name` (everywhere, or only in `scope`)."""
        voice = self.find(owner_id, name)
        self.store.choose_voice(owner_id, voice.id, scope)
        return voice

    def use_as_scope_default(self, owner_id: int, name: str, scope: str) -> Voice:
        """Make the owner's voice `name` the default for everyone in `scope` (a server manager's choice)."""
        voice = self.find(owner_id, name)
        self.store.set_scope_voice(scope, voice.id, set_by_user_id=owner_id)
        return voice

    def rename(self, owner_id: int, name: str, new_name: str) -> Voice:
        voice = self.find(owner_id, name)
        self.store.rename_voice(voice.id, check_voice_name(new_name))
        return voice

    def delete(self, owner_id: int, name: str) -> None:
        voice = self.find(owner_id, name)
        self.store.delete_voice(voice.id)
        self.models.forget_cached(voice_cache_key(voice.id))
