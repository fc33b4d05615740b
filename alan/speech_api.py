"""The speech service's HTTP API: one speech synthesizer (CSM and its batched speech service) for many aLAN processes.

`alan speech serve` runs it as a Ray Serve deployment, one replica per GPU (alan/speech_deployment.py); the bots
reach it at ALAN_SPEECH_URL through `engine/tts/remote.py`. The protocol is `engine/tts/remote_wire.py`. Every
request to one replica goes to the same synthesizer, so sentences from every process that lands there share its
frame loop, as sentences from one process's chats do in-process.

The synthesizer a replica serves is set once with `serve_synthesizer` (Ray Serve copies the FastAPI app into each
replica, so the app can't carry it: it lives in this module, one per process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engine.errors import SpeechTooLongError, TtsUnavailableError
from engine.speech_synthesizer import SpeechSynthesizer
from engine.tts import remote_wire as wire

log = logging.getLogger(__name__)

# The largest clip `/encode` takes: 10 minutes of float32 at 48 kHz, far above any reference clip or utterance.
MAX_ENCODE_BYTES = 10 * 60 * 48_000 * 4

_served: SpeechSynthesizer | None = None
# Tells the other replicas to forget too (see speech_deployment.py); None where this process is the only one.
_share_forget: Callable[[str | None], Awaitable[None]] | None = None
_forgotten = 0  # forget requests applied here: from callers, and from other replicas


def serve_synthesizer(
    synthesizer: SpeechSynthesizer | None, share_forget: Callable[[str | None], Awaitable[None]] | None = None
) -> None:
    """Make `synthesizer` the one this process's API speaks with (None: none, every request answers 503);
    `share_forget` passes a forget request on to the other replicas."""
    global _served, _share_forget, _forgotten
    _served, _share_forget, _forgotten = synthesizer, share_forget, 0


def apply_forget(voice_key: str | None) -> None:
    """Drop what this replica caches of a deleted voice (None: of everyone), and count it."""
    global _forgotten
    _synthesizer().forget(voice_key)
    _forgotten += 1


def _synthesizer() -> SpeechSynthesizer:
    if _served is None:
        raise TtsUnavailableError("this speech replica has no synthesizer yet: it is still starting")
    return _served


def _failure(error: BaseException) -> JSONResponse:
    body = wire.failure_body(error)
    status = {wire.TOO_LONG: 422, wire.BAD_REQUEST: 400}.get(body["kind"], 503)
    if status == 503:
        log.error("speech request failed: %s", body["message"])
    return JSONResponse(body, status_code=status)


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError) as error:
        raise wire.WireError(f"the body is not JSON: {error}") from error


async def info() -> Response:
    """What this replica speaks with; loads the model first, so a healthy answer means it can speak."""
    synthesizer = _synthesizer()
    await synthesizer.load()
    # Which replica answered: the operator's way to match a bot's log line to a replica's.
    replica = {"host": socket.gethostname(), "pid": os.getpid(), "forgotten": _forgotten}
    return JSONResponse({"tag": synthesizer.tag, "capabilities": asdict(synthesizer.capabilities), "replica": replica})


async def encode(request: Request, rate: int) -> Response:
    """The payload of a clip (float32 samples at `rate` Hz in the body)."""
    if not 8_000 <= rate <= 192_000:
        raise wire.WireError(f"a sample rate of {rate} Hz")
    body = await request.body()
    if len(body) % 4 or len(body) > MAX_ENCODE_BYTES:
        raise wire.WireError(f"{len(body)} bytes are not float32 samples of a clip this service takes")
    payload = await _synthesizer().encode(np.frombuffer(body, dtype="<f4").copy(), rate)
    return JSONResponse({"payload": wire.payload_to_json(payload)})


async def fit(request: Request) -> Response:
    """How many of the newest context turns fit with the voice and the text."""
    text, voice, context = wire.read_speech_request(await _json(request))
    kept = await _synthesizer().fit_context(voice, context, text)
    return JSONResponse({"kept": len(kept)})


async def reference(request: Request) -> Response:
    """The longest reference clip that leaves room for a reply, for this transcript."""
    body = await _json(request)
    if not isinstance(body, dict) or not isinstance(body.get("transcript"), str):
        raise wire.WireError("a transcript is needed")
    seconds = await _synthesizer().max_reference_seconds(body["transcript"])
    return JSONResponse({"seconds": seconds})


async def stream(request: Request) -> Response:
    """Speak a text: audio records as they are made, then the payload of what was said (see remote_wire)."""
    text, voice, context = wire.read_speech_request(await _json(request))
    synthesizer = _synthesizer()

    async def records() -> AsyncIterator[bytes]:
        # Problems once speaking has begun can only go in the stream: the status line has already gone out. If the
        # caller hangs up (the listener interrupted), Starlette cancels this generator and `aclosing` stops the
        # synthesizer's work at its next chunk.
        sent = 0
        spoken = synthesizer.stream(text, voice, context)
        try:
            async with contextlib.aclosing(spoken):
                async for chunk in spoken:
                    sent += len(chunk.samples)
                    yield wire.audio_record(chunk.samples)
        except Exception as error:
            if not isinstance(error, SpeechTooLongError):
                log.exception("speaking failed")
            yield wire.record(wire.FAILURE, json.dumps(wire.failure_body(error)).encode())
            return
        end = wire.payload_to_json(spoken.spoken(sent))
        yield wire.record(wire.END, json.dumps(end).encode())

    return StreamingResponse(records(), media_type="application/octet-stream")


async def forget(request: Request) -> Response:
    """Drop what this replica caches of a deleted voice (`voice_key` null: of everyone)."""
    body = await _json(request)
    key = body.get("voice_key") if isinstance(body, dict) else None
    if key is not None and not isinstance(key, str):
        raise wire.WireError("voice_key must be a string or null")
    apply_forget(key)
    if _share_forget is not None:
        await _share_forget(key)  # answered once every replica will drop it too
    return Response(status_code=204)


def speech_api() -> FastAPI:
    """The API, served by uvicorn or mounted as a Ray Serve deployment's ingress."""
    api = FastAPI(title="aLAN speech", docs_url=None, redoc_url=None, openapi_url=None)
    api.add_api_route("/info", info, methods=["GET"])
    api.add_api_route("/encode", encode, methods=["POST"])
    api.add_api_route("/fit", fit, methods=["POST"])
    api.add_api_route("/reference", reference, methods=["POST"])
    api.add_api_route("/stream", stream, methods=["POST"])
    api.add_api_route("/forget", forget, methods=["POST"])
    # Every endpoint's failures are answered here, in the protocol's words (remote_wire.failure_body): the ones a
    # request can meet (a malformed request, a text too long, no model) without a traceback in the log.
    for expected in (wire.WireError, SpeechTooLongError, TtsUnavailableError):
        api.add_exception_handler(expected, _expected)
    api.add_exception_handler(Exception, _unexpected)
    return api


async def _expected(request: Request, error: Exception) -> Response:
    return _failure(error)


async def _unexpected(request: Request, error: Exception) -> Response:
    """Anything else a synthesizer raised (out of GPU memory, a payload of another model): the protocol's failure
    answer, so the caller reads what went wrong, not a bare 500 page."""
    log.exception("speech request %s failed", request.url.path)
    return _failure(error)
