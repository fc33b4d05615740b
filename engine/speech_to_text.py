"""The speech-to-text seam: what the conversation needs from any speech recognizer.

`engine.stt.WhisperTranscriber` (faster-whisper with Silero VAD and the hallucination filter) is the backend
today; a new one is a class with these methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Transcript:
    """One utterance. `no_speech` is True when nothing in it should become a turn (then `text` is "")."""

    text: str
    language: str | None
    language_probability: float
    duration: float  # seconds of audio given
    speech_duration: float  # seconds VAD judged to be speech
    no_speech: bool
    # Dropped segments as (reason, text). The texts are the person's words: log only `rejection_reasons`.
    rejected: tuple[tuple[str, str], ...] = field(default=())

    @property
    def rejection_reasons(self) -> tuple[str, ...]:
        """Why each dropped segment was dropped, without its words: what may go to the logs."""
        return tuple(reason for reason, _ in self.rejected)

    @classmethod
    def nothing(
        cls, duration: float, language: str | None = None, rejected: tuple[tuple[str, str], ...] = ()
    ) -> Transcript:
        return cls("", language, 0.0, duration, 0.0, True, rejected)


@runtime_checkable
class SpeechToText(Protocol):
    """Turns one utterance into text.

    Contract:
    - `sample_rate` is the rate `transcribe_async` wants (callers resample to it); audio is float32 mono.
    - `transcribe_async(audio, language, language_hint)` returns a `Transcript`; `no_speech` (and empty text)
      when nothing in the audio should become a turn: silence, noise, a hallucinated stock phrase. `language`
      forces the language; `language_hint` (the person's usual language) applies only when detection is unsure.
    - `load_async()` loads the model now (otherwise the first call does).
    - Every failure to load or run raises `engine.errors.SttUnavailableError` whose message is the operator's fix.
    """

    sample_rate: int

    async def load_async(self) -> None: ...

    async def transcribe_async(
        self, audio: np.ndarray, language: str | None = None, language_hint: str | None = None
    ) -> Transcript: ...
