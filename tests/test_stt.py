"""Speech to text on a tiny random Whisper loaded through faster-whisper's real code path.

The tiny model's words are garbage, so these tests check what can be checked: loading, device choice, that
the real Silero VAD keeps silence and noise away from the model, that synthetic speech reaches it, and the
errors an operator sees. The hallucination filter is tested in test_stt_filter.py, and what `transcribe` does
around a scripted stand-in model in test_stt_transcribe.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import ctranslate2
import numpy as np
import pytest

from engine import stt
from engine.errors import SttUnavailableError
from engine.stt import DEFAULT_BEAM_SIZE, SAMPLE_RATE, Transcript, WhisperTranscriber, resolve_device
from engine.stt_decoding import LANGUAGE_SURE
from tests.stt_helpers import whisper_speech  # noqa: F401 (the `speech` fixture)
from tests.tiny_models.whisper import WHISPER_LANGUAGES


@pytest.fixture(scope="session")
def transcriber(tiny_whisper_dir: Path) -> WhisperTranscriber:
    # One temperature: a random model fails every fallback check, and six passes would only cost time.
    whisper = WhisperTranscriber(str(tiny_whisper_dir), device="cpu", cpu_threads=2, temperatures=(0.0,))
    whisper.load()
    return whisper


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


# --- defaults and model names ---


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
