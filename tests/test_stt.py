"""Speech to text on a tiny random Whisper loaded through faster-whisper's real code path.

The tiny model's words are garbage, so these tests check what can be checked: loading, device choice, that
the real Silero VAD keeps silence and noise away from the model, that synthetic speech reaches it, the
hallucination filter on real `Segment` objects, and the errors an operator sees.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ctranslate2
import numpy as np
import pytest
from faster_whisper import decode_audio
from faster_whisper.transcribe import Segment

from engine import stt
from engine.errors import SttUnavailable
from engine.stt import SAMPLE_RATE, Transcript, WhisperTranscriber, rejection_reason, resolve_device
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
    with pytest.raises(SttUnavailable, match="ALAN_DEVICE=auto or cpu"):
        resolve_device("cuda")
    with pytest.raises(SttUnavailable, match="Unknown device"):
        resolve_device("tpu")


# --- loading ---


def test_tiny_model_loads_through_faster_whisper(transcriber: WhisperTranscriber) -> None:
    model = transcriber.load()
    assert transcriber.loaded
    assert model is transcriber.load()  # loaded once
    assert model.model.is_multilingual  # language detection is on, as with real multilingual weights
    assert (transcriber.device, transcriber.compute_type, transcriber.beam_size) == ("cpu", "int8", 1)
    assert set(model.supported_languages) >= set(WHISPER_LANGUAGES)


def test_loading_is_lazy(tiny_whisper_dir: Path) -> None:
    whisper = WhisperTranscriber(str(tiny_whisper_dir), device="cpu")
    assert not whisper.loaded
    assert whisper.beam_size == 1  # resolving the device does not load the model either
    assert not whisper.loaded


def test_missing_folder_says_how_to_get_a_model(tmp_path: Path) -> None:
    whisper = WhisperTranscriber(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(SttUnavailable, match="does not exist") as caught:
        whisper.load()
    assert "ALAN_STT_MODEL" in str(caught.value)
    assert not whisper.loaded


def test_folder_without_model_files_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SttUnavailable, match=r"lacks model\.bin, tokenizer\.json") as caught:
        WhisperTranscriber(str(tmp_path), device="cpu").load()
    assert "ct2-transformers-converter" in str(caught.value)


def test_size_not_downloadable_offline_says_how_to_get_it(tmp_path: Path) -> None:
    whisper = WhisperTranscriber("small", device="cpu", download_root=tmp_path, local_files_only=True)
    with pytest.raises(SttUnavailable, match="Could not load the Whisper model 'small'") as caught:
        whisper.load()
    assert "downloaded from Hugging Face on first use" in str(caught.value)


def test_transcribing_speech_with_a_missing_model_raises(speech: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(SttUnavailable):
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
    assert result.rejected and all(entry.startswith("low confidence") for entry in result.rejected)
    assert result.no_speech and result.text == ""


def test_given_language_skips_detection(transcriber: WhisperTranscriber, speech: np.ndarray) -> None:
    result = transcriber.transcribe(speech, language="fr")
    assert (result.language, result.language_probability) == ("fr", 1.0)


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


class ScriptedModel:
    """Stands in for faster-whisper's model so the filter can be checked inside `transcribe`."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments
        self.calls: list[dict[str, Any]] = []
        self.audio: list[np.ndarray] = []

    def transcribe(self, audio: np.ndarray, **options: Any) -> tuple[Any, SimpleNamespace]:
        self.calls.append(options)
        self.audio.append(audio)
        info = SimpleNamespace(language="en", language_probability=0.97, duration_after_vad=2.5)
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
    assert result.rejected == ("stock hallucination: 'Thanks for watching!'",)
    assert (result.language, result.language_probability, result.speech_duration) == ("en", 0.97, 2.5)
    options = scripted.calls[0]
    assert options["vad_filter"] is True and options["condition_on_previous_text"] is False


def test_only_hallucinations_means_no_speech(speech: np.ndarray) -> None:
    whisper = WhisperTranscriber("unused", device="cpu")
    whisper._model = ScriptedModel([make_segment(" Thank you.", **UNSURE)])  # type: ignore[assignment]
    result = whisper.transcribe(speech)
    assert result.no_speech and result.text == ""
    assert result.rejected == ("unsure stock phrase: 'Thank you.'",)


def test_missing_cuda_libraries_at_first_use_say_what_to_install(speech: np.ndarray) -> None:
    class NoCublas:
        def transcribe(self, audio: np.ndarray, **options: Any) -> None:
            raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")

    whisper = WhisperTranscriber("unused", device="cpu")
    whisper._model = NoCublas()  # type: ignore[assignment]
    with pytest.raises(SttUnavailable, match="ALAN_DEVICE=cpu") as caught:
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


def test_default_beam_size_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stt, "resolve_device", lambda device: ("cuda", "float16"))
    assert WhisperTranscriber("small", device="auto").beam_size == 5
    assert WhisperTranscriber("small", device="auto", beam_size=2).beam_size == 2


def test_a_size_name_that_cannot_be_downloaded_says_how_to_get_it(tmp_path: Path) -> None:
    # HF_HUB_OFFLINE is set for the tests, standing in for a machine with no internet.
    with pytest.raises(SttUnavailable, match="internet"):
        WhisperTranscriber("tiny", device="cpu", download_root=tmp_path).load()


def test_an_unknown_size_name_lists_the_known_ones() -> None:
    with pytest.raises(SttUnavailable, match=r"Unknown Whisper model 'huge-v9'.*large-v3"):
        WhisperTranscriber("huge-v9", device="cpu").load()
