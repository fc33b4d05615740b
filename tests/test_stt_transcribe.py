"""`WhisperTranscriber.transcribe` around a scripted stand-in for faster-whisper's model.

Checks what reaches the transcript (the hallucination filter applied, repeated and looping segments dropped, the
log naming reasons, never words), the decoding options it asks for, when a language hint is used, how PCM is scaled
and the error when CUDA libraries are missing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from faster_whisper.transcribe import Segment

from engine.errors import SttUnavailableError
from engine.stt import DEFAULT_BEAM_SIZE, SAMPLE_RATE, TOKENS_PER_SPEECH_SECOND, WhisperTranscriber
from engine.stt_decoding import MAX_NEW_TOKENS, TOKEN_ALLOWANCE
from engine.stt_filter import MAX_COMPRESSION_RATIO, compression_ratio
from tests.stt_helpers import (
    REAL_SHORT_ANSWER,
    make_segment,
    whisper_speech,  # noqa: F401 (the `speech` fixture)
)


class ScriptedModel:
    """Stands in for faster-whisper's model so the filter can be checked inside `transcribe`."""

    def __init__(self, segments: list[Segment], detected: tuple[str, float] = ("en", 0.97)) -> None:
        self.segments = segments
        self.detected = detected
        self.calls: list[dict[str, Any]] = []
        self.audio: list[np.ndarray] = []
        self.detections = 0
        self.model = SimpleNamespace(is_multilingual=True)

    def detect_language(self, audio: np.ndarray, **options: Any) -> tuple[str, float, list[tuple[str, float]]]:
        self.detections += 1
        language, probability = self.detected
        others = [("es", 0.2), ("de", 0.05)] if language != "es" else [("en", 0.2), ("de", 0.05)]
        return language, probability, [(language, probability), *others]

    def transcribe(self, audio: np.ndarray, **options: Any) -> tuple[Any, SimpleNamespace]:
        self.calls.append(options)
        self.audio.append(audio)
        language = options.get("language") or self.detected[0]
        probability = 1.0 if options.get("language") else self.detected[1]
        info = SimpleNamespace(language=language, language_probability=probability, duration_after_vad=2.5)
        return iter(self.segments), info


def test_transcript_keeps_speech_and_drops_a_hallucinated_tail(speech: np.ndarray) -> None:
    whisper = WhisperTranscriber("unused", device="cpu")
    scripted = ScriptedModel(
        [make_segment(" What time is it"), make_segment(" in Tokyo?"), make_segment(" Thanks for watching!")]
    )
    whisper._model = scripted  # type: ignore[assignment]
    result = whisper.transcribe(speech)
    assert result.text == "What time is it in Tokyo?"
    assert not result.no_speech
    assert result.rejected == (("stock hallucination", "Thanks for watching!"),)
    assert (result.language, result.language_probability, result.speech_duration) == ("en", 0.97, 2.5)
    options = scripted.calls[0]
    assert options["vad_filter"] is True and options["condition_on_previous_text"] is False


def test_only_hallucinations_means_no_speech(speech: np.ndarray) -> None:
    whisper = WhisperTranscriber("unused", device="cpu")
    # Over real speech, but Whisper barely heard words: a stock phrase needs more than Silero's say-so.
    scripted = ScriptedModel([make_segment(" Thank you.", avg_logprob=-1.3, no_speech_prob=0.4)])
    whisper._model = scripted  # type: ignore[assignment]
    result = whisper.transcribe(speech)
    assert result.no_speech and result.text == ""
    assert result.rejected == (("unsure stock phrase", "Thank you."),)


def test_a_short_answer_over_real_speech_becomes_a_turn(speech: np.ndarray) -> None:
    # The numbers the real Whisper base gives "thank you"; the clip is real (espeak) speech, which Silero hears.
    whisper = WhisperTranscriber("unused", device="cpu")
    whisper._model = ScriptedModel([make_segment(" Thank you.", **REAL_SHORT_ANSWER)])  # type: ignore[assignment]
    assert whisper.transcribe(speech).text == "Thank you."


def test_the_same_short_answer_over_noise_does_not(speech: np.ndarray) -> None:
    # Speech first (so VAD lets the clip through), then a "Thank you." Whisper placed over the noise after it.
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(3 * SAMPLE_RATE) * 0.05).astype(np.float32)
    clip = np.concatenate([speech, noise])
    start = len(speech) / SAMPLE_RATE + 0.5
    tail = dataclasses.replace(make_segment(" Thank you.", **REAL_SHORT_ANSWER), start=start, end=start + 2.0)
    whisper = WhisperTranscriber("unused", device="cpu")
    whisper._model = ScriptedModel([make_segment(" Is it raining?"), tail])  # type: ignore[assignment]
    result = whisper.transcribe(clip)
    assert result.text == "Is it raining?"
    assert result.rejected == (("unsure stock phrase", "Thank you."),)


REPEATED = " Mañana tengo que ir al médico a las diez de la mañana."


def test_dropped_segments_log_their_reasons_never_their_words(
    speech: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    # A dropped text may hold a colon or quotes of its own: the log must come from the reasons alone.
    words = "Subtitles: by 'Maria' for watching"
    whisper = WhisperTranscriber("unused", device="cpu")
    whisper._model = ScriptedModel([make_segment(" Ja ja ja", avg_logprob=-2.0), make_segment(f" {words}")])  # type: ignore[assignment]
    caplog.set_level(logging.DEBUG, logger="engine.stt")
    result = whisper.transcribe(speech)
    assert result.rejection_reasons == ("low confidence", "stock hallucination")
    assert [text for _, text in result.rejected] == ["Ja ja ja", words]
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "low confidence" in logged and "stock hallucination" in logged
    assert "Ja ja" not in logged and "Subtitles" not in logged and "Maria" not in logged


def test_a_phrase_repeated_as_separate_segments_is_kept_once(speech: np.ndarray) -> None:
    # What the real base model did with this sentence: three segments, each under the compression limit.
    segments = [make_segment(REPEATED, compression_ratio=1.1) for _ in range(3)]
    whisper = WhisperTranscriber("unused", device="cpu")
    whisper._model = ScriptedModel(segments)  # type: ignore[assignment]
    result = whisper.transcribe(speech)
    assert result.text == REPEATED.strip()
    assert result.rejected == (("repeated segment", REPEATED.strip()),) * 2


def test_a_loop_spread_over_differing_segments_is_no_turn(speech: np.ndarray) -> None:
    texts = [" Ja, ja, ja, ja, ja, ja.", " Ja ja ja ja ja ja ja.", " ja, ja, ja, ja, ja, ja, ja, ja", " Ja ja ja ja!"]
    assert compression_ratio(" ".join(text.strip() for text in texts)) > MAX_COMPRESSION_RATIO
    segments = [make_segment(text, compression_ratio=1.8) for text in texts]
    whisper = WhisperTranscriber("unused", device="cpu")
    whisper._model = ScriptedModel(segments)  # type: ignore[assignment]
    result = whisper.transcribe(speech)
    assert result.no_speech and result.text == ""
    assert set(result.rejection_reasons[-3:]) == {"repetition across segments"}


def test_repeated_words_inside_real_speech_are_kept(speech: np.ndarray) -> None:
    texts = [" No, no, I said Tuesday.", " Not Thursday.", " Tuesday at ten, please."]
    whisper = WhisperTranscriber("unused", device="cpu")
    whisper._model = ScriptedModel([make_segment(text) for text in texts])  # type: ignore[assignment]
    assert whisper.transcribe(speech).text == "No, no, I said Tuesday. Not Thursday. Tuesday at ten, please."


def test_decoding_is_bounded(speech: np.ndarray) -> None:
    # A laugh once cost 30 s of CPU: six temperature passes, each free to run to 448 tokens.
    whisper = WhisperTranscriber("unused", device="cpu")
    scripted = ScriptedModel([make_segment(" Hello.")])
    whisper._model = scripted  # type: ignore[assignment]
    whisper.transcribe(speech)
    options = scripted.calls[0]
    assert options["beam_size"] == DEFAULT_BEAM_SIZE
    assert len(options["temperature"]) <= 2 and options["temperature"][0] == 0.0
    seconds = len(speech) / SAMPLE_RATE
    assert options["max_new_tokens"] <= math.ceil(TOKENS_PER_SPEECH_SECOND * seconds) + TOKEN_ALLOWANCE
    # ... and never more than the decoder can hold, even for a long turn.
    long_turn = np.tile(speech, 40)
    whisper.transcribe(long_turn)
    assert scripted.calls[1]["max_new_tokens"] == MAX_NEW_TOKENS


def test_the_hint_is_used_only_when_detection_is_unsure(speech: np.ndarray) -> None:
    whisper = WhisperTranscriber("unused", device="cpu")
    unsure = ScriptedModel([make_segment(" ¡Sí!")], detected=("en", 0.7))
    whisper._model = unsure  # type: ignore[assignment]
    result = whisper.transcribe(speech, language_hint="es")
    assert unsure.calls[0]["language"] == "es"
    assert (result.language, result.language_probability) == ("es", 0.2)  # how likely detection found Spanish

    sure = ScriptedModel([make_segment(" What a lovely day.")], detected=("en", 0.97))
    whisper._model = sure  # type: ignore[assignment]
    assert whisper.transcribe(speech, language_hint="es").language == "en"
    assert sure.calls[0]["language"] == "en"

    no_hint = ScriptedModel([make_segment(" See?")], detected=("en", 0.7))
    whisper._model = no_hint  # type: ignore[assignment]
    assert whisper.transcribe(speech).language == "en"
    assert no_hint.calls[0]["language"] is None and no_hint.detections == 0  # faster-whisper detects itself

    forced = ScriptedModel([make_segment(" Oui.")], detected=("en", 0.7))
    whisper._model = forced  # type: ignore[assignment]
    assert whisper.transcribe(speech, language="fr", language_hint="es").language == "fr"
    assert forced.detections == 0


def test_missing_cuda_libraries_at_first_use_say_what_to_install(speech: np.ndarray) -> None:
    class NoCublas:
        def transcribe(self, audio: np.ndarray, **options: Any) -> None:
            raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")

    whisper = WhisperTranscriber("unused", device="cpu")
    whisper._model = NoCublas()  # type: ignore[assignment]
    with pytest.raises(SttUnavailableError, match="ALAN_DEVICE=cpu") as caught:
        whisper.transcribe(speech)
    assert "libcublas.so.12" in str(caught.value)


def test_integer_pcm_is_scaled(speech: np.ndarray) -> None:
    whisper = WhisperTranscriber("unused", device="cpu")
    scripted = ScriptedModel([make_segment(" Hello.")])
    whisper._model = scripted  # type: ignore[assignment]
    pcm = (speech * 32767).astype(np.int16)
    assert whisper.transcribe(pcm).text == "Hello."
    sent = scripted.audio[0]
    assert sent.dtype == np.float32
    assert np.abs(sent - speech).max() < 1e-3
