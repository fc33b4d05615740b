"""Listening through whichever speech-to-text backend is configured, its failures told in the person's words."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from engine.audio import resample
from engine.errors import ServiceUnavailableError, SttUnavailableError
from engine.speech_to_text import SpeechToText, Transcript

log = logging.getLogger(__name__)

STT_DOWN = "I can't listen right now: my speech recognition isn't available. Please type instead."


async def transcribe(
    stt: SpeechToText,
    samples: np.ndarray,
    sample_rate: int,
    *,
    language: str | None = None,
    language_hint: str | None = None,
) -> Transcript:
    """`language` forces it; `language_hint` (the person's usual language) applies when detection is unsure.

    Raises `ServiceUnavailableError` (the operator's fix as its detail) when the recognizer can't load or run.
    """
    audio = await asyncio.to_thread(resample, samples, sample_rate, stt.sample_rate)  # a long clip takes a while
    try:
        return await stt.transcribe_async(audio, language, language_hint)
    except SttUnavailableError as error:
        log.error("speech recognition unavailable: %s", error)
        raise ServiceUnavailableError(STT_DOWN, str(error)) from error


async def load(stt: SpeechToText) -> None:
    """Load the recognizer now (it loads on first use otherwise); raises `ServiceUnavailableError` if it can't."""
    try:
        await stt.load_async()
    except SttUnavailableError as error:
        log.error("speech recognition unavailable: %s", error)
        raise ServiceUnavailableError(STT_DOWN, str(error)) from error
