"""The speech-synthesizer protocol's two backends: CSM (on the tiny model) and the tone synthesizer.

What the conversation relies on: payloads tagged with their backend and model, the payload of exactly the
audio a listener heard, each speaker of the context as their own speaker, what fits decided by the backend.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from engine.speech_synthesizer import ASSISTANT, ContextTurn, SpeechPayload, SpeechSynthesizer, VoicePrompt
from engine.tts.csm import CsmSpeech
from engine.tts.csm_synthesizer import CsmSynthesizer
from engine.tts.tone import ToneSynthesizer, estimate_pitch


@pytest.fixture
def csm(tiny_speech: CsmSpeech, tiny_csm_dir: Path) -> CsmSynthesizer:
    return CsmSynthesizer(str(tiny_csm_dir), load=lambda: tiny_speech)


def tone_wave(hz: float, seconds: float = 1.0, rate: int = 24_000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def test_both_backends_implement_the_protocol(csm: CsmSynthesizer) -> None:
    for backend in (csm, ToneSynthesizer()):
        assert isinstance(backend, SpeechSynthesizer)
    assert csm.capabilities.clones_voices and csm.capabilities.uses_context
    assert csm.tag.startswith("csm:") and ToneSynthesizer("t").tag == "tone:t"


async def test_csm_keeps_the_codes_of_exactly_what_was_heard(csm: CsmSynthesizer, tiny_speech: CsmSpeech) -> None:
    stream = csm.stream("Hello there, this is a test.", None, [])
    heard = 0
    async with contextlib.aclosing(stream):
        async for chunk in stream:
            assert chunk.sample_rate == 24_000
            heard += len(chunk.samples)
            break  # the listener interrupted after the first chunk
    payload = stream.spoken(heard)
    assert payload is not None and payload.tag == csm.tag
    frames = len(payload.data) // (2 * tiny_speech.num_codebooks)
    assert frames == heard // 1920
    assert stream.spoken(0) is None  # nothing heard, nothing kept


async def test_csm_gives_each_speaker_of_the_context_their_own_id(
    csm: CsmSynthesizer, tiny_speech: CsmSpeech
) -> None:
    payload = await csm.encode(tone_wave(220.0), 24_000)
    assert payload is not None
    context = [
        ContextTurn("person:ann", "Hi.", payload),
        ContextTurn(ASSISTANT, "Hello Ann.", payload),
        ContextTurn("person:bob", "Hey.", None),
        ContextTurn("person:ann", "How are you?", None),
    ]
    voice, segments = csm.segments(tiny_speech, VoicePrompt("voice-1", "My voice.", payload), context)
    assert voice is not None and voice.speaker == 0
    assert [segment.speaker for segment in segments] == [1, 0, 2, 1]
    with pytest.raises(ValueError, match="tone:"):
        csm.segments(tiny_speech, None, [ContextTurn("person:ann", "Hi.", SpeechPayload("tone:tone", b"\0\0\0\0"))])


async def test_csm_fits_the_newest_context_and_drops_the_oldest(csm: CsmSynthesizer) -> None:
    payload = await csm.encode(tone_wave(200.0, seconds=3.0), 24_000)
    context = [ContextTurn(ASSISTANT if i % 2 else "person", f"Turn number {i}.", payload) for i in range(100)]
    kept = await csm.fit_context(None, context, "And now this.")
    assert 0 < len(kept) < len(context)
    assert kept == context[len(context) - len(kept) :]  # the newest, in order


async def test_the_tone_synthesizer_speaks_in_the_pitch_of_its_voice() -> None:
    tone = ToneSynthesizer()
    low, high = await tone.encode(tone_wave(110.0), 24_000), await tone.encode(tone_wave(330.0), 24_000)
    assert estimate_pitch(tone_wave(110.0), 24_000) == pytest.approx(110.0, rel=0.05)

    async def speak(voice: SpeechPayload) -> np.ndarray:
        stream = tone.stream("Hello there.", VoicePrompt("v", "x", voice), [])
        return np.concatenate([chunk.samples async for chunk in stream])

    low_audio, high_audio = await speak(low), await speak(high)
    assert estimate_pitch(high_audio, 24_000) > 2 * estimate_pitch(low_audio, 24_000)
    assert np.array_equal(low_audio, await speak(low))  # deterministic
