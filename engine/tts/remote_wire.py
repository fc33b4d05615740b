"""How a speech synthesizer is spoken to over HTTP: what the speech service (`alan speech serve`) and its client
(`engine/tts/remote.py`) send each other. Neither side needs the other's code, only this module.

Requests and small answers are JSON; payloads (CSM's Mimi codes) travel as base64 inside them. A spoken text comes
back as one binary stream of records, so audio starts to play while the rest is still being made:

    record = kind (1 byte) + length (4 bytes, big-endian) + body
    b"A"  audio: float32 little-endian mono samples at the synthesizer's sample rate
    b"P"  the end: the payload of everything sent, as JSON (`null` when the backend keeps none)
    b"E"  a failure: {"kind": …, "message": …}; the stream ends there

A stream that stops without its `P` or `E` record was cut off (the speech replica died, the network failed):
the client treats that as the synthesizer being unavailable, never as a finished sentence.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import SpeechTooLongError, TtsUnavailableError
from engine.speech_synthesizer import ContextTurn, SpeechPayload, VoicePrompt

AUDIO = b"A"
END = b"P"
FAILURE = b"E"
RECORD_HEADER = struct.Struct(">cI")
# Far above a chunk of audio (seconds of float32 at 24 kHz are ~100 KB): a bigger length is a broken stream.
MAX_RECORD_BYTES = 64 * 1024 * 1024

# The kinds of failure both sides agree on, and the exception each one is on the client's side.
TOO_LONG = "too_long"  # the text or the voice can't fit: a message for the person
UNAVAILABLE = "unavailable"  # the model can't load or run: a message for the operator
BAD_REQUEST = "bad_request"  # the request itself was malformed: a bug on the calling side


class WireError(ValueError):
    """What arrived does not follow this protocol."""


def payload_to_json(payload: SpeechPayload | None) -> dict[str, str] | None:
    if payload is None:
        return None
    return {"tag": payload.tag, "data": base64.b64encode(payload.data).decode("ascii")}


def payload_from_json(value: Any) -> SpeechPayload | None:
    if value is None:
        return None
    try:
        return SpeechPayload(str(value["tag"]), base64.b64decode(value["data"], validate=True))
    except (KeyError, TypeError, ValueError) as error:
        raise WireError(f"not a payload: {error}") from error


def voice_to_json(voice: VoicePrompt | None) -> dict[str, Any] | None:
    if voice is None:
        return None
    return {"key": voice.key, "transcript": voice.transcript, "payload": payload_to_json(voice.payload)}


def voice_from_json(value: Any) -> VoicePrompt | None:
    if value is None:
        return None
    try:
        payload = payload_from_json(value["payload"])
        if payload is None:
            raise WireError("a voice without its payload")
        return VoicePrompt(str(value["key"]), str(value["transcript"]), payload)
    except (KeyError, TypeError) as error:
        raise WireError(f"not a voice: {error}") from error


def context_to_json(context: Sequence[ContextTurn]) -> list[dict[str, Any]]:
    return [{"speaker": t.speaker, "text": t.text, "payload": payload_to_json(t.payload)} for t in context]


def context_from_json(value: Any) -> list[ContextTurn]:
    if not isinstance(value, list):
        raise WireError("the context must be a list")
    try:
        return [ContextTurn(str(t["speaker"]), str(t["text"]), payload_from_json(t.get("payload"))) for t in value]
    except (KeyError, TypeError, AttributeError) as error:
        raise WireError(f"not a context turn: {error}") from error


def speech_request(text: str, voice: VoicePrompt | None, context: Sequence[ContextTurn]) -> dict[str, Any]:
    """The JSON body of `/stream` and `/fit`: what to say, in which voice, after which conversation."""
    return {"text": text, "voice": voice_to_json(voice), "context": context_to_json(context)}


def read_speech_request(body: Any) -> tuple[str, VoicePrompt | None, list[ContextTurn]]:
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise WireError("a speech request needs a text")
    return body["text"], voice_from_json(body.get("voice")), context_from_json(body.get("context", []))


def record(kind: bytes, body: bytes) -> bytes:
    return RECORD_HEADER.pack(kind, len(body)) + body


def audio_record(samples: np.ndarray) -> bytes:
    return record(AUDIO, np.ascontiguousarray(samples, dtype="<f4").tobytes())


def failure_body(error: BaseException) -> dict[str, str]:
    """The failure `error` is on the wire: its kind, and a message that is safe to show where it would be shown."""
    if isinstance(error, SpeechTooLongError):
        return {"kind": TOO_LONG, "message": str(error)}
    if isinstance(error, TtsUnavailableError):
        return {"kind": UNAVAILABLE, "message": str(error)}
    if isinstance(error, ValueError):  # WireError, or a payload of another model: the caller's mistake
        return {"kind": BAD_REQUEST, "message": str(error)}
    return {"kind": UNAVAILABLE, "message": f"the speech service failed ({type(error).__name__}: {error})"}


def failure_error(body: Any, where: str) -> Exception:
    """The exception a failure record (or an error answer) stands for on the client's side."""
    kind = body.get("kind") if isinstance(body, dict) else None
    message = str(body.get("message", "")) if isinstance(body, dict) else str(body)
    if kind == TOO_LONG:
        return SpeechTooLongError(message)
    return TtsUnavailableError(f"The speech service at {where} failed: {message}")
