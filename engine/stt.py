"""Speech to text with faster-whisper (CTranslate2), with silence and hallucinations kept out of the chat.

Whisper always writes *something*: given silence, noise or a cough it tends to produce its stock phrases
("Thank you.", "Thanks for watching!", " you", "Subtitles by …"). In a voice chat each of those would become
a turn that aLAN answers, so every transcript goes through three gates:

1. Silero VAD (the copy shipped inside faster-whisper) on the whole clip: no speech → the model never runs.
2. faster-whisper's own VAD filter (`vad_filter=True`) so only the speech parts reach the model, and
   Whisper's own "silent segment" rule.
3. The segment filter of `engine.stt_filter`: segments Whisper itself is unsure of, repetition loops (also
   across segments), non-speech annotations and the stock hallucination phrases are dropped.

What is left is the turn; if nothing is left the result says `no_speech=True` with empty text.

A short clip ("sí", "vale") says too little for Whisper to tell its language; a caller that knows the
person's language passes it as `language_hint`, used only when detection is unsure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from engine.errors import SttUnavailableError
from engine.heap import freeze_long_lived
from engine.speech_to_text import Transcript
from engine.stt_decoding import (
    DEFAULT_BEAM_SIZE,
    DEFAULT_TEMPERATURES,
    TOKENS_PER_SPEECH_SECOND,
    choose_language,
    token_cap,
)
from engine.stt_filter import RepetitionGuard, rejection_reason, silero_evidence

if TYPE_CHECKING:  # faster-whisper pulls in ctranslate2 and onnxruntime: import them only when needed
    from faster_whisper import WhisperModel
    from faster_whisper.transcribe import Segment
    from faster_whisper.vad import VadOptions

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # Whisper's only input rate
Device = Literal["auto", "cpu", "cuda"]

# Best first; the first one CTranslate2 supports on the device is used (an old GPU may lack float16).
_COMPUTE_PREFERENCES: dict[str, tuple[str, ...]] = {
    "cuda": ("float16", "int8_float16", "int8_float32", "float32"),
    "cpu": ("int8", "int8_float32", "float32"),
}

# Files a local CTranslate2 Whisper folder must hold (the doctor checks the same ones).
WHISPER_FILES: tuple[str, ...] = ("model.bin", "config.json", "tokenizer.json")


def resolve_device(device: Device | str) -> tuple[str, str]:
    """Pick `(device, compute_type)`: CUDA in float16 when a GPU is there (or asked for), else CPU int8."""
    import ctranslate2

    if device not in ("auto", "cpu", "cuda"):
        raise SttUnavailableError(f"Unknown device {device!r}: set ALAN_DEVICE to auto, cpu or cuda.")
    gpus = ctranslate2.get_cuda_device_count()
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    elif device == "cuda" and gpus == 0:
        raise SttUnavailableError(
            "ALAN_DEVICE=cuda but CTranslate2 sees no CUDA GPU (check the NVIDIA driver and CUDA 12 / cuDNN 9 "
            "libraries), or set ALAN_DEVICE=auto or cpu."
        )
    supported = ctranslate2.get_supported_compute_types(device)
    for compute_type in _COMPUTE_PREFERENCES[device]:
        if compute_type in supported:
            return device, compute_type
    return device, "default"


class WhisperTranscriber:
    """faster-whisper behind `SpeechToText`. The model loads on first use (or `load()`), once.

    `model` is a size ("small", "large-v3", …) or hub id of a CTranslate2 conversion (downloaded on first
    use into `download_root` or the Hugging Face cache), or a local folder holding a converted model.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model: str = "small",
        device: Device | str = "auto",
        *,
        download_root: str | Path | None = None,
        local_files_only: bool = False,
        cpu_threads: int | None = None,
        beam_size: int = DEFAULT_BEAM_SIZE,
        temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES,
        tokens_per_speech_second: float | None = TOKENS_PER_SPEECH_SECOND,
        vad_options: VadOptions | None = None,
        segment_filter: Callable[[Segment], str | None] | None = None,
    ) -> None:
        self.model_name = model
        self.requested_device = device
        self.download_root = str(download_root) if download_root is not None else None
        self.local_files_only = local_files_only
        # CTranslate2 defaults to 4 threads; on a small box that oversubscribes the cores the TTS needs too.
        self.cpu_threads = cpu_threads if cpu_threads is not None else min(os.cpu_count() or 4, 8)
        self.beam_size = beam_size
        self.temperatures = temperatures
        # None: no cap beyond the model's own (what faster-whisper does by default).
        self.tokens_per_speech_second = tokens_per_speech_second
        self._vad_options = vad_options
        # Why a segment is not speech (None: keep it). Tests with random weights relax it: such a model is
        # never confident, yet its output must still flow through the pipeline. None: `rejection_reason`,
        # given Silero's speech evidence.
        self.segment_filter = segment_filter
        self._model: WhisperModel | None = None
        self._device: str | None = None
        self._compute_type: str | None = None
        self._load_lock = threading.Lock()

    # --- loading ---

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def device(self) -> str:
        """The device actually used ("cpu" or "cuda"); resolves "auto" without loading the model."""
        if self._device is None:
            self._device, self._compute_type = resolve_device(self.requested_device)
        return self._device

    @property
    def compute_type(self) -> str:
        if self._compute_type is None:
            self._device, self._compute_type = resolve_device(self.requested_device)
        return self._compute_type

    def load(self) -> WhisperModel:
        """Load the model now (idempotent, thread-safe); raises `SttUnavailableError` with the fix on failure."""
        with self._load_lock:
            if self._model is None:
                self._model = self._load()
                freeze_long_lived()  # the model lives as long as the process (engine/heap.py)
        return self._model

    async def load_async(self) -> None:
        await asyncio.to_thread(self.load)

    def _load(self) -> WhisperModel:
        from faster_whisper import WhisperModel

        source = self.model_name
        local = Path(source).expanduser()
        if local.is_dir():
            missing = [name for name in WHISPER_FILES if not (local / name).is_file()]
            if missing:
                raise SttUnavailableError(
                    f"Whisper model folder {local} lacks {', '.join(missing)}: it must be a CTranslate2 "
                    "conversion with its tokenizer, e.g. `ct2-transformers-converter --model openai/whisper-small "
                    "--output_dir DIR --copy_files tokenizer.json preprocessor_config.json`, or a download of "
                    "Systran/faster-whisper-small."
                )
            source = str(local)
        elif _looks_like_path(source):
            raise SttUnavailableError(
                f"Whisper model folder {local} does not exist. Set ALAN_STT_MODEL to a size such as 'small' "
                "(downloaded on first start) or to a folder with a CTranslate2 Whisper model."
            )
        try:
            if not local.is_dir() and not self.local_files_only:
                source = self._download_with_progress(source)
            model = WhisperModel(
                source,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=self.cpu_threads,
                download_root=self.download_root,
                local_files_only=self.local_files_only,
            )
        except SttUnavailableError:
            raise
        except Exception as error:  # hub, file and CTranslate2 errors all mean "this model can't be used"
            raise SttUnavailableError(_load_failure_message(self.model_name, error)) from error
        log.info("Whisper %r loaded on %s (%s)", self.model_name, self.device, self.compute_type)
        return model

    def _download_with_progress(self, size_or_id: str) -> str:
        """Fetch a hub model showing progress bars (faster-whisper's own download hides them).

        The first start downloads hundreds of MB; a silent minute looks like a hang.
        """
        from faster_whisper.utils import _MODELS
        from huggingface_hub import snapshot_download

        from engine.model_files import WHISPER_PATTERNS, HubModel, warn_before_download

        repo_id = size_or_id if "/" in size_or_id else _MODELS.get(size_or_id)
        if repo_id is None:
            raise SttUnavailableError(
                f"Unknown Whisper model {size_or_id!r}: use one of {', '.join(_MODELS)}, a hub id of a "
                "CTranslate2 conversion, or a local folder."
            )
        warn_before_download(HubModel("whisper", size_or_id, repo_id), self.download_root)
        return snapshot_download(repo_id, allow_patterns=list(WHISPER_PATTERNS), cache_dir=self.download_root)

    # --- transcription ---

    def transcribe(
        self, audio: np.ndarray, language: str | None = None, language_hint: str | None = None
    ) -> Transcript:
        """Transcribe float32 mono 16 kHz audio. Blocking: use `transcribe_async` from the event loop.

        `language` forces the language; `language_hint` (the person's usual language) is used only when
        Whisper's own detection is unsure, as it is on a clip of a word or two.
        """
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        samples = _as_mono_float32(audio)
        duration = len(samples) / SAMPLE_RATE
        if len(samples) == 0:
            return Transcript.nothing(0.0, language)
        vad = self._vad_options or VadOptions()
        # VAD first: Silero costs a few ms per second of audio, the model far more, and faster-whisper would
        # still run language detection (and often hallucinate) on an all-silent clip.
        speech_chunks = get_speech_timestamps(samples, vad)
        if not speech_chunks:
            return Transcript.nothing(duration, language)
        speech_seconds = sum(chunk["end"] - chunk["start"] for chunk in speech_chunks) / SAMPLE_RATE

        model = self.load()
        if self.segment_filter is not None:
            judge = self.segment_filter
        else:
            evidence = silero_evidence(samples, SAMPLE_RATE)
            judge = lambda segment: rejection_reason(segment, evidence)  # noqa: E731
        guard = RepetitionGuard()
        kept: list[str] = []
        rejected: list[tuple[str, str]] = []
        try:
            probability: float | None = None
            if language is None and language_hint and model.model.is_multilingual:
                language, probability = choose_language(model, samples, vad, language_hint)
            segments, info = model.transcribe(
                samples,
                language=language,
                vad_filter=True,
                vad_parameters=vad,
                beam_size=self.beam_size,
                temperature=list(self.temperatures),
                max_new_tokens=token_cap(speech_seconds, self.tokens_per_speech_second),
                # Each turn stands alone: conditioning on earlier text lets one hallucination breed more.
                condition_on_previous_text=False,
            )
            for segment in segments:  # a generator: decoding happens while iterating
                text = segment.text.strip()
                reason = judge(segment)
                if reason is None and guard.repeated(text):
                    reason = "repeated segment"
                if reason is None:
                    kept.append(text)
                else:
                    rejected.append((reason, text))
        except RuntimeError as error:
            # CTranslate2 loads cuBLAS/cuDNN on the first GPU run, so a missing CUDA library shows up here.
            if _is_cuda_library_error(error):
                raise SttUnavailableError(_CUDA_LIBRARY_HINT.format(error=error)) from error
            # Anything else (out of GPU memory, a corrupt model file) is still "can't listen now", not a crash.
            log.exception("Whisper failed on %.1f s of audio", duration)
            raise SttUnavailableError(
                f"Speech recognition failed: {error}. Check the log; `alan doctor` checks the model."
            ) from error
        if guard.is_loop(kept):  # each segment passed alone, but together they are one phrase going round
            rejected.extend(("repetition across segments", text) for text in kept)
            kept = []
        text = " ".join(" ".join(kept).split())
        transcript = Transcript(
            text=text,
            language=info.language,
            language_probability=float(info.language_probability if probability is None else probability),
            duration=duration,
            speech_duration=float(info.duration_after_vad),
            no_speech=not text,
            rejected=tuple(rejected),
        )
        if transcript.rejected:
            # Only the reasons: the dropped texts are the person's words, which never go to the logs.
            log.debug("Dropped %d Whisper segment(s): %s", len(rejected), list(transcript.rejection_reasons))
        return transcript

    async def transcribe_async(
        self, audio: np.ndarray, language: str | None = None, language_hint: str | None = None
    ) -> Transcript:
        """`transcribe` in a worker thread, so the bots' event loop keeps serving while Whisper runs."""
        return await asyncio.to_thread(self.transcribe, audio, language, language_hint)


def _looks_like_path(name: str) -> bool:
    # "small" and "Systran/faster-whisper-small" are hub names; "./models/x", "/opt/x", "~/x", "C:\x" are not.
    return name.startswith((".", "/", "~", "\\")) or os.sep in name.replace("/", "", 1) or ":" in name


_CUDA_LIBRARY_HINT = (
    "Whisper could not use the GPU ({error}). faster-whisper needs CUDA 12 cuBLAS and cuDNN 9: install them "
    "(e.g. `pip install nvidia-cublas-cu12 nvidia-cudnn-cu12` and put their lib folders on LD_LIBRARY_PATH), "
    "or set ALAN_DEVICE=cpu."
)


def _is_cuda_library_error(error: BaseException) -> bool:
    text = str(error).lower()
    return any(name in text for name in ("libcublas", "libcudnn", "cublas", "cudnn", "cuda driver"))


def _load_failure_message(model: str, error: BaseException) -> str:
    if _is_cuda_library_error(error):
        return _CUDA_LIBRARY_HINT.format(error=error)
    cause = f"{type(error).__name__}: {error}".strip()
    return (
        f"Could not load the Whisper model {model!r} ({cause}). A size such as 'small' or a hub id of a "
        "CTranslate2 conversion (e.g. Systran/faster-whisper-small) is downloaded from Hugging Face on first "
        "use, which needs internet access once. Offline, download or convert the model elsewhere, copy the "
        "folder here and set ALAN_STT_MODEL to its path."
    )


def _as_mono_float32(audio: np.ndarray) -> np.ndarray:
    samples = np.asarray(audio)
    if samples.ndim == 2 and 1 in samples.shape:  # (n, 1) or (1, n)
        samples = samples.reshape(-1)
    if samples.ndim != 1:
        raise ValueError(f"Expected mono audio (1-D), got shape {samples.shape}; mix it down first.")
    if np.issubdtype(samples.dtype, np.integer):  # PCM integers: scale to [-1, 1) as Whisper expects
        samples = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
    elif samples.dtype != np.float32:
        samples = samples.astype(np.float32)
    return samples
