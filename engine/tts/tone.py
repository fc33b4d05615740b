"""A deterministic synthesizer: each character of the text becomes a short tone, in the voice's pitch.

It needs no model and no GPU, so the platform adapters' tests run on it (and an operator can try the whole bot
with ALAN_TTS_BACKEND=tone before downloading CSM). It is a real backend all the same: it clones a "voice" (the
pitch of the reference clip, estimated from its zero crossings), streams in chunks, stops when closed, and the
same text in the same voice always makes the same samples. It ignores the conversation's context.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator, Sequence

import numpy as np

from engine.speech_synthesizer import (
    AudioChunk,
    ContextTurn,
    SpeechPayload,
    SynthesizerCapabilities,
    SynthesizerOptions,
    VoicePrompt,
)

SAMPLE_RATE = 24_000
SECONDS_PER_CHARACTER = 0.04
MIN_SECONDS = 0.3
CHUNK_SECONDS = 0.2
DEFAULT_PITCH_HZ = 180.0
PITCH_RANGE_HZ = (70.0, 400.0)
MAX_REFERENCE_SECONDS = 30.0


def estimate_pitch(audio: np.ndarray, sample_rate: int) -> float:
    """A rough fundamental frequency: half the zero-crossing rate, clamped to a speaking voice's range."""
    if audio.size < 2:
        return DEFAULT_PITCH_HZ
    crossings = np.count_nonzero(np.signbit(audio[1:]) != np.signbit(audio[:-1]))
    pitch = crossings * sample_rate / (2 * audio.size)
    return float(np.clip(pitch, *PITCH_RANGE_HZ))


def tone_speech(text: str, pitch_hz: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The samples for `text`: one tone per character, its pitch set by the character around the voice's pitch."""
    per_char = max(1, int(SECONDS_PER_CHARACTER * sample_rate))
    characters = text.strip() or " "
    total = max(int(MIN_SECONDS * sample_rate), per_char * len(characters))
    # Each character shifts the pitch by up to ±20 %, so different texts make audibly different audio.
    steps = np.array([zlib.crc32(c.encode()) % 41 - 20 for c in characters], dtype=np.float64)
    frequency = np.repeat(pitch_hz * (1 + steps / 100), per_char)
    frequency = np.pad(frequency, (0, max(0, total - frequency.size)), mode="edge")[:total]
    phase = 2 * np.pi * np.cumsum(frequency) / sample_rate
    envelope = np.minimum(1.0, np.minimum(np.arange(total), np.arange(total)[::-1]) / (0.01 * sample_rate))
    return (0.3 * np.sin(phase) * envelope).astype(np.float32)


class ToneSynthesizer:
    """See the module docstring. `model` only names it (its payloads are tagged with it)."""

    def __init__(self, model: str = "tone", device: str = "cpu", options: SynthesizerOptions | None = None) -> None:
        self.tag = f"tone:{model}"
        self.capabilities = SynthesizerCapabilities(clones_voices=True, uses_context=False, sample_rate=SAMPLE_RATE)

    async def load(self) -> None:
        return None

    def _payload(self, pitch_hz: float) -> SpeechPayload:
        return SpeechPayload(self.tag, struct.pack("<f", pitch_hz))

    def pitch(self, voice: VoicePrompt | None) -> float:
        if voice is None:
            return DEFAULT_PITCH_HZ
        if voice.payload.tag != self.tag:
            raise ValueError(f"a payload of {voice.payload.tag!r} given to {self.tag!r}")
        return float(struct.unpack("<f", voice.payload.data)[0])

    async def encode(self, audio: np.ndarray, sample_rate: int) -> SpeechPayload:
        return self._payload(estimate_pitch(np.asarray(audio, dtype=np.float32), sample_rate))

    async def fit_context(
        self, voice: VoicePrompt | None, context: Sequence[ContextTurn], text: str
    ) -> list[ContextTurn]:
        return []  # it listens to no context

    async def max_reference_seconds(self, transcript: str) -> float:
        return MAX_REFERENCE_SECONDS

    def stream(self, text: str, voice: VoicePrompt | None, context: Sequence[ContextTurn]) -> ToneStream:
        return ToneStream(self, text, self.pitch(voice))

    def join(self, payloads: Sequence[SpeechPayload]) -> SpeechPayload | None:
        return payloads[0] if payloads else None  # one pitch for the whole reply

    def forget(self, voice_key: str | None = None) -> None:
        return None  # it caches nothing

    async def aclose(self) -> None:
        return None


class ToneStream:
    def __init__(self, synthesizer: ToneSynthesizer, text: str, pitch_hz: float) -> None:
        self._synthesizer = synthesizer
        self._pitch_hz = pitch_hz
        self._audio = tone_speech(text, pitch_hz)
        self._chunks = self._run()

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._chunks

    async def aclose(self) -> None:
        await self._chunks.aclose()

    async def _run(self) -> AsyncIterator[AudioChunk]:
        step = int(CHUNK_SECONDS * SAMPLE_RATE)
        for start in range(0, self._audio.size, step):
            await asyncio.sleep(0)  # a chunk at a time, as a model would: a close in between stops it
            yield AudioChunk(self._audio[start : start + step], SAMPLE_RATE)

    def spoken(self, samples: int) -> SpeechPayload | None:
        return self._synthesizer._payload(self._pitch_hz) if samples > 0 else None
