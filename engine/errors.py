"""Errors the engine reports when a dependency (a model, a server) is missing or broken.

Each message is written for the person running aLAN: it says what is wrong *and* how to fix it, so the bots
and `alan doctor` can show it as it is, without a traceback.
"""

from __future__ import annotations


class EngineUnavailable(Exception):
    """A part of the engine cannot work until the operator fixes something; the message says what."""


class SttUnavailable(EngineUnavailable):
    """The speech-to-text model cannot be found or loaded (or the requested device is missing)."""


class LlmUnavailable(EngineUnavailable):
    """The language model cannot answer: its server is down, refuses our key, lacks the model, or timed out."""


class TtsUnavailableError(EngineUnavailable):
    """The speech synthesizer cannot be loaded or run; the message is the operator's fix."""


class SpeechTooLongError(ValueError):
    """A text (or a voice's reference clip) can't fit in what the synthesizer can speak in one go."""
