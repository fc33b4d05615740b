"""Sesame CSM-1B behind the `SpeechSynthesizer` protocol: Mimi codes as payloads, one speech service, lazy load.

`CsmSpeech` (csm.py) is the synchronous engine; this adapter loads it on first use off the event loop (a load
takes seconds to minutes, a download on first run) and speaks every text through one `SpeechService`: a single
frame loop that runs every request in flight, from every chat, together. Loading and Mimi encodes (clips, what
people said) run on the `SpeechWorker` thread. The conversation's speakers and payloads become CSM segments: aLAN
is speaker 0, everyone else 1, 2, … in the order they first appear. Budget questions (what fits, how long a clip
may be) need only the tokenizer, which is thread-safe here: they run in a plain worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from engine.audio import resample
from engine.errors import TtsUnavailableError
from engine.heap import freeze_long_lived
from engine.speech_synthesizer import (
    ASSISTANT,
    AudioChunk,
    ContextTurn,
    SpeechPayload,
    SynthesizerCapabilities,
    SynthesizerOptions,
    VoicePrompt,
)
from engine.speech_worker import SpeechWorker

from .codes import SAMPLE_RATE, SAMPLES_PER_FRAME, codes_from_bytes, codes_to_bytes

if TYPE_CHECKING:  # PyTorch and transformers take seconds to import: only once the model loads (`alan forget` never)
    import torch

    from .csm import CsmSpeech
    from .speech_service import SpeechService
    from .types import Segment

log = logging.getLogger(__name__)

BOT_SPEAKER = 0


class CsmSynthesizer:
    """CSM-1B as a `SpeechSynthesizer`. `load` builds the engine (tests pass one over tiny models)."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        options: SynthesizerOptions | None = None,
        *,
        load: Callable[[], CsmSpeech] | None = None,
        worker: SpeechWorker | None = None,
    ) -> None:
        self.model = model
        self.tag = f"csm:{model}"
        self.capabilities = SynthesizerCapabilities(clones_voices=True, uses_context=True, sample_rate=SAMPLE_RATE)
        self.worker = worker or SpeechWorker()
        self.options = options or SynthesizerOptions()
        weights = self.options.weights
        self._load = load or (lambda: _load_csm(model, device, weights))
        self._speech: CsmSpeech | None = None
        self._service: SpeechService | None = None
        self._service_lock = asyncio.Lock()
        self._loading: asyncio.Future[CsmSpeech] | None = None

    async def speech(self) -> CsmSpeech:
        """The loaded engine; raises `TtsUnavailableError` with the operator's fix when it can't load."""
        if self._speech is not None:
            return self._speech
        # One load shared by every waiting turn, and shielded: a turn cancelled while it waits must not throw
        # away a load that took minutes (the next turn would start it all over).
        if self._loading is None:
            self._loading = asyncio.ensure_future(self.worker.call(self._load_for_good))
        loading = self._loading
        try:
            self._speech = await asyncio.shield(loading)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # missing weights, gated repo, out of memory: all "no voice"
            if self._loading is loading:
                self._loading = None  # the next call tries again: the operator may have fixed it
            log.error("speech synthesis model %s failed to load: %s", self.model, error)
            raise TtsUnavailableError(_load_fix(self.model, error)) from error
        return self._speech

    def _load_for_good(self) -> CsmSpeech:
        """Load the model (on the worker thread); it lives as long as the process, so out of the garbage
        collector's way it goes (engine/heap.py), once."""
        speech = self._load()
        log.info("speech model %s loaded on %s, %s weights", self.model, speech.device, speech.weights)
        freeze_long_lived()
        return speech

    async def load(self) -> None:
        await self.speech()

    # Payloads ------------------------------------------------------------------------------------------

    async def encode(self, audio: np.ndarray, sample_rate: int) -> SpeechPayload:
        speech = await self.speech()

        def encode() -> torch.Tensor:  # on the speech thread, resampling included: nothing heavy on the loop
            return speech.encode_audio(resample(audio, sample_rate, SAMPLE_RATE))

        return self._payload(await self.worker.call(encode))

    def _payload(self, codes: torch.Tensor) -> SpeechPayload:
        return SpeechPayload(self.tag, codes_to_bytes(codes.numpy()))

    def _codes(self, payload: SpeechPayload, num_codebooks: int) -> torch.Tensor:
        import torch

        if payload.tag != self.tag:
            raise ValueError(f"a payload of {payload.tag!r} given to {self.tag!r}")
        return torch.from_numpy(codes_from_bytes(payload.data, num_codebooks))

    def join(self, payloads: Sequence[SpeechPayload]) -> SpeechPayload | None:
        # Stored codes are row-major frames, so frames spoken back to back are their bytes back to back.
        return SpeechPayload(self.tag, b"".join(payload.data for payload in payloads)) if payloads else None

    def segments(
        self, speech: CsmSpeech, voice: VoicePrompt | None, context: Sequence[ContextTurn]
    ) -> tuple[Segment | None, list[Segment]]:
        """The voice and the context as CSM segments, each speaker with their own id (aLAN 0)."""
        from .types import Segment

        speakers = {ASSISTANT: BOT_SPEAKER}
        history = []
        for turn in context:
            speaker = speakers.setdefault(turn.speaker, len(speakers))
            codes = self._codes(turn.payload, speech.num_codebooks) if turn.payload is not None else None
            history.append(Segment(speaker, turn.text, codes))
        if voice is None:
            return None, history
        return Segment(BOT_SPEAKER, voice.transcript, self._codes(voice.payload, speech.num_codebooks)), history

    # What fits -----------------------------------------------------------------------------------------

    async def fit_context(
        self, voice: VoicePrompt | None, context: Sequence[ContextTurn], text: str
    ) -> list[ContextTurn]:
        speech = await self.speech()
        voice_segment, history = self.segments(speech, voice, context)
        kept, _ = await asyncio.to_thread(speech.plan_context, voice_segment, history, text, BOT_SPEAKER)
        return list(context[len(context) - len(kept) :]) if kept else []

    async def max_reference_seconds(self, transcript: str) -> float:
        speech = await self.speech()
        return await asyncio.to_thread(speech.max_reference_seconds, transcript, BOT_SPEAKER)

    # Speaking ------------------------------------------------------------------------------------------

    def stream(self, text: str, voice: VoicePrompt | None, context: Sequence[ContextTurn]) -> CsmSynthesisStream:
        return CsmSynthesisStream(self, text, voice, list(context))

    def forget(self, voice_key: str | None = None) -> None:
        if self._speech is not None:
            self._speech.forget_cached(voice_key)

    async def service(self) -> SpeechService:
        """The one speech service every stream goes through, started once with the loaded model (on the worker
        thread: its caches are allocated whole, which takes a moment); `TtsUnavailableError` if that fails."""
        speech = await self.speech()
        async with self._service_lock:
            if self._service is None:
                from .service_sizing import default_max_batch
                from .speech_service import SpeechService

                batch = self.options.max_batch or default_max_batch(speech)
                chunk, graphs = self.options.prefill_chunk, self.options.cuda_graphs
                try:
                    self._service = await self.worker.call(
                        lambda: SpeechService(speech, max_batch=batch, prefill_chunk=chunk, cuda_graphs=graphs)
                    )
                except Exception as error:  # out of memory for the caches, most likely
                    log.error("the speech service could not start: %s", error)
                    raise TtsUnavailableError(
                        f"The speech service could not start ({type(error).__name__}: {error}): its caches for "
                        f"{batch} sentences at once need more memory than the device has; set ALAN_TTS_MAX_BATCH "
                        "lower."
                    ) from error
                log.info("speech service: up to %d sentences at once", batch)
        return self._service

    async def aclose(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            service.close()
            # Let it finish its frame: a thread still inside PyTorch when the interpreter exits aborts the process.
            if not await asyncio.to_thread(service.join, 30.0):
                log.warning("the speech service did not stop within 30 s")
        self.worker.shutdown()


class CsmSynthesisStream:
    """One text spoken by CSM on the speech thread; see `SynthesisStream`."""

    def __init__(
        self, synthesizer: CsmSynthesizer, text: str, voice: VoicePrompt | None, context: list[ContextTurn]
    ) -> None:
        self._synthesizer = synthesizer
        self._text = text
        self._voice = voice
        self._context = context
        self._codes: torch.Tensor | None = None  # of what the listener got, once the service let go
        self._chunks = self._run()

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._chunks

    async def aclose(self) -> None:
        await self._chunks.aclose()

    async def _run(self) -> AsyncIterator[AudioChunk]:
        synthesizer = self._synthesizer
        speech = await synthesizer.speech()
        voice, history = synthesizer.segments(speech, self._voice, self._context)
        key = self._voice.key if self._voice is not None else None
        # The budget is checked here (only the tokenizer: a plain thread), so a text too long never queues.
        request = await asyncio.to_thread(speech.plan_request, voice, history, self._text, BOT_SPEAKER, key)

        def delivered(codes: torch.Tensor, reason: str) -> None:
            self._codes = codes

        service = await synthesizer.service()
        async with contextlib.aclosing(service.stream(request, delivered)) as chunks:
            async for chunk in chunks:
                yield AudioChunk(chunk, SAMPLE_RATE)

    def spoken(self, samples: int) -> SpeechPayload | None:
        # The model may have made a little more than was delivered: keep the codes of exactly what was heard.
        frames = samples // SAMPLES_PER_FRAME
        if self._codes is None or frames == 0:
            return None
        return self._synthesizer._payload(self._codes[:frames])


def _load_csm(model: str, device: str, weights: str) -> CsmSpeech:
    from engine.model_files import csm_model, warn_before_download

    from .csm import CsmSpeech

    warn_before_download(csm_model(model))  # transformers downloads a hub model it hasn't got, silently
    return CsmSpeech.load(model, device, weights=weights)


def _load_fix(model: str, error: BaseException) -> str:
    return (
        f"Could not load the CSM model {model!r} ({type(error).__name__}: {error}). Set ALAN_TTS_MODEL to a local "
        "folder, or accept the licence of sesame/csm-1b on Hugging Face and log in with `hf auth login`; "
        "`alan doctor` checks it."
    )
