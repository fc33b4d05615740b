"""The speech models a conversation uses, loaded once on first use, off the event loop.

Loading CSM takes seconds to minutes (a download on first run), so the app starts at once and loads models
when the first turn needs them; a model that can't load becomes one clear message, and the next turn tries
again (the operator may have fixed it meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.events import ServiceUnavailable
from engine.speech_worker import SpeechWorker

if TYPE_CHECKING:  # PyTorch and transformers load with the models, not with every `alan` command
    import numpy as np
    import torch

    from engine.stt import SpeechToText, Transcript
    from engine.tts import CsmSpeech

log = logging.getLogger(__name__)

TTS_DOWN = "I can't speak right now: my voice model isn't available. I'll answer in text."
STT_DOWN = "I can't listen right now: my speech recognition isn't available. Please type instead."


class SpeechModels:
    def __init__(
        self,
        stt: SpeechToText,
        load_tts: Callable[[], CsmSpeech],
        tts_model_name: str,
        worker: SpeechWorker | None = None,
    ) -> None:
        self.stt = stt
        self.tts_model_name = tts_model_name
        self.worker = worker or SpeechWorker()
        self._load_tts = load_tts
        self._tts: CsmSpeech | None = None
        self._tts_loading: asyncio.Future[CsmSpeech] | None = None

    async def tts(self) -> CsmSpeech:
        """The loaded CSM model; raises `ServiceUnavailable` (with the operator's fix as detail) if it can't load."""
        if self._tts is not None:
            return self._tts
        # One load shared by every waiting turn, and shielded: a turn cancelled while it waits must not throw
        # away a load that took minutes (the next turn would start it all over).
        if self._tts_loading is None:
            self._tts_loading = asyncio.ensure_future(self.worker.call(self._load_tts))
        loading = self._tts_loading
        try:
            self._tts = await asyncio.shield(loading)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # missing weights, gated repo, out of memory: all "no voice"
            if self._tts_loading is loading:
                self._tts_loading = None  # the next turn tries again: the operator may have fixed it
            log.error("speech synthesis model %s failed to load: %s", self.tts_model_name, error)
            raise ServiceUnavailable(TTS_DOWN, _tts_fix(self.tts_model_name, error)) from error
        return self._tts

    def forget_cached(self, voice_cache_key: str | None = None) -> None:
        """Drop a deleted voice from the model's memory caches, or (no key) everything cached about anyone."""
        if self._tts is not None:
            self._tts.forget_cached(voice_cache_key)

    async def load_stt(self) -> None:
        """Load Whisper now (it loads on first use otherwise); raises `ServiceUnavailable` if it can't load."""
        from engine.errors import SttUnavailable

        load = getattr(self.stt, "load_async", None)  # the SpeechToText protocol has no separate load step
        if load is None:
            return
        try:
            await load()
        except SttUnavailable as error:
            log.error("speech recognition unavailable: %s", error)
            raise ServiceUnavailable(STT_DOWN, str(error)) from error

    async def transcribe(
        self, audio_16k: np.ndarray, language: str | None = None, language_hint: str | None = None
    ) -> Transcript:
        """`language` forces it; `language_hint` (the person's usual language) applies when detection is unsure."""
        from engine.errors import SttUnavailable

        try:
            return await self.stt.transcribe_async(audio_16k, language, language_hint)
        except SttUnavailable as error:
            log.error("speech recognition unavailable: %s", error)
            raise ServiceUnavailable(STT_DOWN, str(error)) from error

    async def encode(self, audio_24k: np.ndarray) -> torch.Tensor:
        """Mimi codes of 24 kHz audio, computed on the speech thread."""
        tts = await self.tts()
        return await self.worker.call(tts.encode_audio, audio_24k)


def _tts_fix(model: str, error: BaseException) -> str:
    return (
        f"Could not load the CSM model {model!r} ({type(error).__name__}: {error}). Set ALAN_TTS_MODEL to a local "
        "folder, or accept the licence of sesame/csm-1b on Hugging Face and log in with `hf auth login`; "
        "`alan doctor` checks it."
    )
