"""Speech to text on a tiny random Whisper loaded through faster-whisper's real code path.

The tiny model's words are garbage, so these tests check what can be checked: loading, device choice, that
the real Silero VAD keeps silence and noise away from the model, that synthetic speech reaches it, the
hallucination filter on real `Segment` objects, and the errors an operator sees.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ctranslate2
import numpy as np
import pytest
from faster_whisper import decode_audio
from faster_whisper.transcribe import Segment

from engine import stt
from engine.errors import SttUnavailableError
from engine.stt import (
    DEFAULT_BEAM_SIZE,
    SAMPLE_RATE,
    TOKENS_PER_SPEECH_SECOND,
    Transcript,
    WhisperTranscriber,
    resolve_device,
)
from engine.stt_decoding import LANGUAGE_SURE, MAX_NEW_TOKENS, TOKEN_ALLOWANCE
from engine.stt_filter import MAX_COMPRESSION_RATIO, compression_ratio, rejection_reason
from tests.tiny_models.whisper import WHISPER_LANGUAGES


@pytest.fixture(scope="session")
def transcriber(tiny_whisper_dir: Path) -> WhisperTranscriber:
    # One temperature: a random model fails every fallback check, and six passes would only cost time.
    whisper = WhisperTranscriber(str(tiny_whisper_dir), device="cpu", cpu_threads=2, temperatures=(0.0,))
    whisper.load()
    return whisper


@pytest.fixture(scope="session")
def speech(speech_wav: Path) -> np.ndarray:
    audio = decode_audio(str(speech_wav), sampling_rate=SAMPLE_RATE)
    assert audio.dtype == np.float32 and len(audio) > SAMPLE_RATE
    return audio


def make_segment(
    text: str, *, avg_logprob: float = -0.2, no_speech_prob: float = 0.01, compression_ratio: float = 1.2
) -> Segment:
    return Segment(
        id=1,
        seek=0,
        start=0.0,
        end=2.0,
        text=text,
        tokens=[1, 2, 3],
        avg_logprob=avg_logprob,
        compression_ratio=compression_ratio,
        no_speech_prob=no_speech_prob,
        words=None,
        temperature=0.0,
    )


# --- device and compute type ---


def test_auto_picks_cpu_int8_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    assert resolve_device("auto") == ("cpu", "int8")
    assert resolve_device("cpu") == ("cpu", "int8")


def test_auto_picks_cuda_float16_with_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    monkeypatch.setattr(
        ctranslate2, "get_supported_compute_types", lambda device: {"float32", "float16", "int8_float16"}
    )
    assert resolve_device("auto") == ("cuda", "float16")


def test_old_gpu_without_float16_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    monkeypatch.setattr(ctranslate2, "get_supported_compute_types", lambda device: {"float32", "int8_float32"})
    assert resolve_device("cuda") == ("cuda", "int8_float32")


def test_cuda_requested_without_gpu_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    with pytest.raises(SttUnavailableError, match="ALAN_DEVICE=auto or cpu"):
        resolve_device("cuda")
    with pytest.raises(SttUnavailableError, match="Unknown device"):
        resolve_device("tpu")


# --- loading ---


def test_tiny_model_loads_through_faster_whisper(transcriber: WhisperTranscriber) -> None:
    model = transcriber.load()
    assert transcriber.loaded
    assert model is transcriber.load()  # loaded once
    assert model.model.is_multilingual  # language detection is on, as with real multilingual weights
    assert (transcriber.device, transcriber.compute_type, transcriber.beam_size) == ("cpu", "int8", DEFAULT_BEAM_SIZE)
    assert set(model.supported_languages) >= set(WHISPER_LANGUAGES)


def test_loading_is_lazy(tiny_whisper_dir: Path) -> None:
    whisper = WhisperTranscriber(str(tiny_whisper_dir), device="cpu")
    assert not whisper.loaded
    assert whisper.device == "cpu"  # resolving the device does not load the model either
    assert not whisper.loaded


def test_missing_folder_says_how_to_get_a_model(tmp_path: Path) -> None:
    whisper = WhisperTranscriber(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(SttUnavailableError, match="does not exist") as caught:
        whisper.load()
    assert "ALAN_STT_MODEL" in str(caught.value)
    assert not whisper.loaded


def test_folder_without_model_files_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SttUnavailableError, match=r"lacks model\.bin, tokenizer\.json") as caught:
        WhisperTranscriber(str(tmp_path), device="cpu").load()
    assert "ct2-transformers-converter" in str(caught.value)


def test_size_not_downloadable_offline_says_how_to_get_it(tmp_path: Path) -> None:
    whisper = WhisperTranscriber("small", device="cpu", download_root=tmp_path, local_files_only=True)
    with pytest.raises(SttUnavailableError, match="Could not load the Whisper model 'small'") as caught:
        whisper.load()
    assert "downloaded from Hugging Face on first use" in str(caught.value)


def test_transcribing_speech_with_a_missing_model_raises(speech: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(SttUnavailableError):
        WhisperTranscriber(str(tmp_path / "gone"), device="cpu").transcribe(speech)


# --- VAD: no turn from silence or noise ---


@pytest.mark.parametrize(
    "audio",
    [
        np.zeros(3 * SAMPLE_RATE, dtype=np.float32),
        (np.random.default_rng(1).standard_normal(3 * SAMPLE_RATE) * 0.1).astype(np.float32),
        (np.random.default_rng(2).standard_normal(3 * SAMPLE_RATE) * 0.5).astype(np.float32),
        np.zeros(0, dtype=np.float32),
    ],
    ids=["silence", "white-noise", "loud-white-noise", "empty"],
)
def test_silence_and_noise_never_reach_the_model(audio: np.ndarray, tmp_path: Path) -> None:
    # A model that does not exist: if VAD let the clip through, loading it would raise.
    whisper = WhisperTranscriber(str(tmp_path / "never-loaded"), device="cpu")
    result = whisper.transcribe(audio)
    assert result.no_speech and result.text == ""
    assert result.speech_duration == 0.0
    assert result.duration == pytest.approx(len(audio) / SAMPLE_RATE)
    assert not whisper.loaded


def test_speech_passes_vad_and_reaches_the_model(transcriber: WhisperTranscriber, speech: np.ndarray) -> None:
    silence = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    padded = np.concatenate([silence, speech, silence])
    result = transcriber.transcribe(padded)
    assert result.duration == pytest.approx(len(padded) / SAMPLE_RATE)
    # VAD kept the speech (with its padding) and cut most of the silence around it.
    assert 0.8 * len(speech) / SAMPLE_RATE < result.speech_duration < result.duration
    assert result.language in WHISPER_LANGUAGES
    assert 0.0 < result.language_probability <= 1.0
    # The model decoded something; random weights are deeply unsure of it, so the filter dropped it all.
    assert result.rejected and set(result.rejection_reasons) == {"low confidence"}
    assert result.no_speech and result.text == ""


def test_given_language_skips_detection(transcriber: WhisperTranscriber, speech: np.ndarray) -> None:
    result = transcriber.transcribe(speech, language="fr")
    assert (result.language, result.language_probability) == ("fr", 1.0)


def test_a_language_hint_wins_over_unsure_detection(transcriber: WhisperTranscriber, speech: np.ndarray) -> None:
    # Random weights spread the language probability thin over 99 languages: detection is never sure.
    detected = transcriber.transcribe(speech)
    assert detected.language_probability < LANGUAGE_SURE
    hinted_language = "es" if detected.language != "es" else "de"
    result = transcriber.transcribe(speech, language_hint=hinted_language)
    assert result.language == hinted_language
    assert 0.0 < result.language_probability < LANGUAGE_SURE  # the hint's own probability, not a forced 1.0


async def test_async_transcription_leaves_the_loop_free(transcriber: WhisperTranscriber, speech: np.ndarray) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await transcriber.transcribe_async(speech, "en")
    finally:
        task.cancel()
    assert isinstance(result, Transcript) and result.language == "en"
    assert ticks > 0


def test_rejects_multichannel_audio(transcriber: WhisperTranscriber) -> None:
    with pytest.raises(ValueError, match="mono"):
        transcriber.transcribe(np.zeros((2, SAMPLE_RATE), dtype=np.float32))


# --- hallucination filter ---

UNSURE = {"avg_logprob": -0.8, "no_speech_prob": 0.4}


@pytest.mark.parametrize(
    ("text", "numbers", "reason"),
    [
        (" Thanks for watching!", {}, "stock hallucination"),
        (" Thank you for watching.", {}, "stock hallucination"),
        (" you", {}, "stock hallucination"),
        (" Subtitles by the Amara.org community", {}, "stock hallucination"),
        (" Please subscribe to my channel.", {}, "stock hallucination"),
        (" Untertitel im Auftrag des ZDF, 2017", {}, "stock hallucination"),
        (" www.mooji.org", {}, "stock hallucination"),
        (" Thank you.", UNSURE, "unsure stock phrase"),
        (" Bye.", UNSURE, "unsure stock phrase"),
        (" [Music]", {}, "sound annotation"),
        (" (upbeat music)", {}, "sound annotation"),
        (" ♪♪", {}, "empty"),
        (" ...", {}, "empty"),
        (" Hello there.", {"no_speech_prob": 0.9, "avg_logprob": -1.2}, "silence"),
        (" The the cat sat there.", {"avg_logprob": -2.3}, "low confidence"),
        (" I I I I I I I I I I I", {"compression_ratio": 3.1}, "repetition"),
    ],
)
def test_rejected_segments(text: str, numbers: dict[str, float], reason: str) -> None:
    assert rejection_reason(make_segment(text, **numbers)) == reason


@pytest.mark.parametrize(
    "text",
    [" Thank you.", " Okay.", " What's the weather like tomorrow?", " I watched a video about subtitles."],
)
def test_confident_real_speech_is_kept(text: str) -> None:
    assert rejection_reason(make_segment(text, avg_logprob=-0.25, no_speech_prob=0.02)) is None


@pytest.mark.parametrize(
    "text",
    [
        " Gracias por ver el video.",
        " ¡Gracias por ver el vídeo!",
        " GRACIAS POR VER EL VÍDEO",
        " Suscríbete al canal.",
        " Suscribete al canal y dale like",
        " Subtítulos realizados por la comunidad de Amara.org",
        " Untertitel im Auftrag des ZDF für funk, 2017",
        " Vielen Dank fürs Zuschauen!",
        " Sous-titres réalisés par la communauté d'Amara.org",
        " Sous-titrage ST' 501",
        " Merci d'avoir regardé cette vidéo !",
        " Obrigado por assistir!",
        " Legendas pela comunidade Amara.org",
        " Grazie per la visione!",
        " Sottotitoli creati dalla comunità Amara.org",
        " Bedankt voor het kijken!",
        " Спасибо за просмотр!",
        " ご視聴ありがとうございました",
    ],
)
def test_stock_hallucinations_in_other_languages(text: str) -> None:
    # Confident numbers: these phrases are dropped however sure Whisper is of them.
    assert rejection_reason(make_segment(text, avg_logprob=-0.2, no_speech_prob=0.01)) == "stock hallucination"


@pytest.mark.parametrize(
    "text",
    [
        " Gracias por venir a verme.",
        " Me suscribí al periódico.",
        " Danke für deine Hilfe.",
        " Merci pour le dîner.",
        " You know what I mean?",
        " Obrigado pela ajuda.",
    ],
)
def test_real_speech_near_a_stock_phrase_is_kept(text: str) -> None:
    assert rejection_reason(make_segment(text, avg_logprob=-0.3, no_speech_prob=0.02)) is None


# What the real Whisper base gives a real short answer: unsure by Whisper's own numbers alone.
REAL_SHORT_ANSWER = {"avg_logprob": -0.66, "no_speech_prob": 0.09}


@pytest.mark.parametrize("text", [" Thank you.", " Okay.", " Bye!", " Thanks.", " Yeah.", " Gracias."])
def test_a_short_answer_is_kept_when_silero_heard_clear_speech(text: str) -> None:
    def clear_speech(start: float, end: float) -> float:
        assert (start, end) == (0.0, 2.0)  # asked about the segment's own time span
        return 0.3

    assert rejection_reason(make_segment(text, **REAL_SHORT_ANSWER), clear_speech) is None


@pytest.mark.parametrize(
    ("numbers", "clear_seconds"),
    [
        (REAL_SHORT_ANSWER, 0.0),  # Silero heard no clear speech there: a breath, a click
        (REAL_SHORT_ANSWER, 0.03),  # one 32 ms window is not speech
        ({"avg_logprob": -1.3, "no_speech_prob": 0.3}, 0.5),  # Whisper barely heard words at all
        ({"avg_logprob": -0.7, "no_speech_prob": 0.65}, 0.5),  # Whisper leans to silence
    ],
)
def test_a_stock_phrase_still_needs_evidence_of_speech(numbers: dict[str, float], clear_seconds: float) -> None:
    segment = make_segment(" Thank you.", **numbers)
    assert rejection_reason(segment, lambda start, end: clear_seconds) == "unsure stock phrase"
    assert rejection_reason(segment) == "unsure stock phrase"  # no evidence given: Whisper's confidence alone


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


def test_beam_search_by_default_on_every_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # bench/stt.py: beam 5 costs little on a CPU too and cuts Spanish WER (numbers beside DEFAULT_BEAM_SIZE).
    assert WhisperTranscriber("small", device="cpu").beam_size == DEFAULT_BEAM_SIZE == 5
    monkeypatch.setattr(stt, "resolve_device", lambda device: ("cuda", "float16"))
    assert WhisperTranscriber("small", device="auto").beam_size == 5
    assert WhisperTranscriber("small", device="auto", beam_size=2).beam_size == 2


def test_a_size_name_that_cannot_be_downloaded_says_how_to_get_it(tmp_path: Path) -> None:
    # HF_HUB_OFFLINE is set for the tests, standing in for a machine with no internet.
    with pytest.raises(SttUnavailableError, match="internet"):
        WhisperTranscriber("tiny", device="cpu", download_root=tmp_path).load()


def test_an_unknown_size_name_lists_the_known_ones() -> None:
    with pytest.raises(SttUnavailableError, match=r"Unknown Whisper model 'huge-v9'.*large-v3"):
        WhisperTranscriber("huge-v9", device="cpu").load()
