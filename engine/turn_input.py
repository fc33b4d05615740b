"""What enters a turn: a person's text, checked, or their audio, decoded for the models and kept for the store."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from engine.audio import Samples, decode_audio, encode_ogg_opus, is_ogg_opus
from engine.errors import AudioError, AudioTooLongError, BadInputError
from engine.turn_memory import HeardAudio
from engine.visible_text import visible_text
from engine.voices import CLIP_RATE

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 4000


def read_text(text: str | None) -> str:
    """The message as the words it shows; `BadInputError` when there are none or far too many."""
    text = visible_text(text)  # zero-width and control characters alone are no message
    if not text:
        raise BadInputError("There's nothing to answer: send me a voice message or some text.")
    if len(text) > MAX_TEXT_CHARS:
        raise BadInputError(f"That message is too long for me: please keep it under {MAX_TEXT_CHARS} characters.")
    return text


async def decode_input(audio: bytes | Samples, max_seconds: float, max_bytes: int) -> HeardAudio:
    """The audio as samples for the models and as the bytes to store: a voice note as it came, PCM encoded once.

    A file is decoded at `CLIP_RATE` (full band for the synthesizer's context; the recognizer resamples);
    samples keep their own rate. Audio that can't be used is a `BadInputError` saying why.
    """
    if isinstance(audio, Samples):
        if audio.seconds > max_seconds:
            raise BadInputError(str(AudioTooLongError(max_seconds)))
        samples = np.asarray(audio.audio, dtype=np.float32)
        stored = await asyncio.to_thread(encode_ogg_opus, samples, audio.sample_rate)
        return HeardAudio(samples, audio.sample_rate, stored)
    try:
        samples = await asyncio.to_thread(decode_audio, audio, CLIP_RATE, max_seconds=max_seconds, max_bytes=max_bytes)
    except AudioError as error:
        log.info("rejected audio: %s", error)
        raise BadInputError(str(error)) from error
    data = bytes(audio)
    stored = data if is_ogg_opus(data) else await asyncio.to_thread(encode_ogg_opus, samples, CLIP_RATE)
    return HeardAudio(samples, CLIP_RATE, stored)
