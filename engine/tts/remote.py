"""A speech synthesizer on another machine: the speech service at ALAN_SPEECH_URL (`alan speech serve`).

The bots keep the same `SpeechSynthesizer` they use in-process; each call becomes one HTTP request
(`engine/tts/remote_wire.py`), and a spoken sentence streams its audio back as it is made. What needs no model
stays here: the synthesizer's tag and capabilities and how its payloads join come from the same backend built
locally and never loaded (`local`), and the service is checked to speak with that very backend and model before
it is used, so a payload is never given to a model that didn't make it.

Every failure to reach the service, a replica that dies mid-sentence, or a stream that goes quiet for too long is a
`TtsUnavailableError`: the conversation then goes on in text, as it does when a local model fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import numpy as np

from engine.errors import TtsUnavailableError
from engine.speech_synthesizer import AudioChunk, ContextTurn, SpeechPayload, SpeechSynthesizer, VoicePrompt
from engine.urls import without_credentials

from . import remote_wire as wire

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
# A sentence's first audio may wait behind a full batch, or for a replica that is still loading its model.
FIRST_AUDIO_TIMEOUT_S = 180.0
# Then chunks come every fraction of a second; a minute without one means the replica is gone.
NEXT_CHUNK_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 120.0  # encode, fit, reference: one model call each


class RemoteSynthesizer:
    """`SpeechSynthesizer` over HTTP. `local` is the same backend and model as the service's, built, not loaded."""

    def __init__(
        self,
        url: str,
        local: SpeechSynthesizer,
        *,
        first_audio_timeout: float = FIRST_AUDIO_TIMEOUT_S,
        next_chunk_timeout: float = NEXT_CHUNK_TIMEOUT_S,
    ) -> None:
        self.url = url.rstrip("/")
        self.shown_url = without_credentials(self.url)  # for messages and logs: a password in the URL stays out
        self.tag = local.tag
        self.capabilities = local.capabilities
        self.first_audio_timeout = first_audio_timeout
        self.next_chunk_timeout = next_chunk_timeout
        self._local = local
        self._session: aiohttp.ClientSession | None = None
        self._checked = False
        self._pending: set[asyncio.Task[None]] = set()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No pool limit: every sentence in flight is one open request, and the service batches them.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def unavailable(self, what: str, error: BaseException | str) -> TtsUnavailableError:
        # Checked again on the next call: the service may come back, or be redeployed with another model.
        self._checked = False
        detail = error if isinstance(error, str) else f"{type(error).__name__}: {error}".rstrip(": ")
        return TtsUnavailableError(
            f"The speech service at {self.shown_url} {what} ({detail}). Start it on the GPU node with "
            "`alan speech serve`, or unset ALAN_SPEECH_URL to speak in this process; `alan doctor` checks it."
        )

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; its JSON answer, or the failure it stands for."""
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S)
        try:
            async with self._http().request(method, f"{self.url}{path}", timeout=timeout, **kwargs) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise self.unavailable("can't be reached", error) from error
        try:
            body = json.loads(text) if text else None
        except ValueError:  # not the service's own answer: a proxy's error page, say
            raise self.unavailable("answered with something else", f"HTTP {status}: {text[:200]}") from None
        if status >= 400:
            error = wire.failure_error(body, self.shown_url)  # SpeechTooLongError for the person, or unavailable
            if isinstance(error, TtsUnavailableError):
                self._checked = False
            raise error
        return body

    async def load(self) -> None:
        if self._checked:
            return
        info = await self._call("GET", "/info")
        served = info.get("tag") if isinstance(info, dict) else None
        if served != self.tag:
            raise TtsUnavailableError(
                f"The speech service at {self.shown_url} speaks with {served!r}, but this process is set up for "
                f"{self.tag!r}: give both the same ALAN_TTS_BACKEND and ALAN_TTS_MODEL (stored speech is tagged "
                "with its model, and a model only ever reads its own)."
            )
        self._checked = True
        log.info("speech service at %s ready (%s)", self.shown_url, served)

    async def encode(self, audio: np.ndarray, sample_rate: int) -> SpeechPayload | None:
        await self.load()
        body = np.ascontiguousarray(audio, dtype="<f4").tobytes()
        answer = await self._call("POST", "/encode", params={"rate": str(int(sample_rate))}, data=body)
        try:
            return wire.payload_from_json(answer["payload"])
        except (KeyError, TypeError, wire.WireError) as error:
            raise self.unavailable("answered an encode with something else", error) from error

    async def fit_context(
        self, voice: VoicePrompt | None, context: Sequence[ContextTurn], text: str
    ) -> list[ContextTurn]:
        await self.load()
        answer = await self._call("POST", "/fit", json=wire.speech_request(text, voice, context))
        kept = answer.get("kept") if isinstance(answer, dict) else None
        if not isinstance(kept, int) or not 0 <= kept <= len(context):
            raise self.unavailable("answered a fit with something else", f"kept={kept!r}")
        return list(context[len(context) - kept :]) if kept else []

    async def max_reference_seconds(self, transcript: str) -> float:
        await self.load()
        answer = await self._call("POST", "/reference", json={"transcript": transcript})
        try:
            return float(answer["seconds"])
        except (KeyError, TypeError, ValueError) as error:
            raise self.unavailable("answered a reference question with something else", error) from error

    def stream(self, text: str, voice: VoicePrompt | None, context: Sequence[ContextTurn]) -> RemoteSynthesisStream:
        return RemoteSynthesisStream(self, wire.speech_request(text, voice, context))

    def join(self, payloads: Sequence[SpeechPayload]) -> SpeechPayload | None:
        return self._local.join(payloads)  # the backend's own rule, which needs no model

    def forget(self, voice_key: str | None = None) -> None:
        # Fire and forget: a deleted voice's cache is memory on the replica, and the caller can't wait here.
        try:
            task = asyncio.get_running_loop().create_task(self._forget(voice_key))
        except RuntimeError:  # no loop: nothing was ever spoken from this process
            return
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _forget(self, voice_key: str | None) -> None:
        try:
            await self._call("POST", "/forget", json={"voice_key": voice_key})
        except TtsUnavailableError as error:
            log.warning("could not tell the speech service to forget a voice: %s", error)

    async def aclose(self) -> None:
        if self._pending:
            _, late = await asyncio.wait(self._pending, timeout=5.0)
            for task in late:  # the service is not answering: give up on them, not on closing
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await self._local.aclose()


class _ServiceAnsweredError(Exception):  # never escapes: carries the service's failure past the transport's handlers
    def __init__(self, error: Exception) -> None:
        self.error = error


class RemoteSynthesisStream:
    """One text spoken by the speech service; see `SynthesisStream`."""

    def __init__(self, synthesizer: RemoteSynthesizer, request: dict[str, Any]) -> None:
        self._synthesizer = synthesizer
        self._request = request
        self._received = 0  # samples
        self._payload: SpeechPayload | None = None  # of everything received, once the stream ended
        self._chunks = self._run()

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._chunks

    async def aclose(self) -> None:
        await self._chunks.aclose()

    async def _run(self) -> AsyncIterator[AudioChunk]:
        synthesizer = self._synthesizer
        await synthesizer.load()
        rate = synthesizer.capabilities.sample_rate
        # Only the connection has a fixed limit: a stream lasts as long as the sentence, each chunk has its own.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
        try:
            async with synthesizer._http().post(
                f"{synthesizer.url}/stream", json=self._request, timeout=timeout
            ) as response:
                try:
                    if response.status != 200:
                        try:
                            failure = await response.json(content_type=None)
                        except ValueError:  # not the service's own answer: a proxy's error page, say
                            failure = {"message": f"HTTP {response.status}: {(await response.text())[:200]}"}
                        raise _ServiceAnsweredError(wire.failure_error(failure, synthesizer.shown_url))
                    wait = synthesizer.first_audio_timeout
                    while True:
                        kind, body = await self._record(response.content, wait)
                        wait = synthesizer.next_chunk_timeout
                        if kind == wire.AUDIO:
                            samples = np.frombuffer(body, dtype="<f4")
                            self._received += samples.size
                            yield AudioChunk(samples, rate)
                        elif kind == wire.END:
                            self._payload = wire.payload_from_json(json.loads(body))
                            return
                        elif kind == wire.FAILURE:
                            raise _ServiceAnsweredError(wire.failure_error(json.loads(body), synthesizer.shown_url))
                        else:
                            raise wire.WireError(f"a record of kind {kind!r}")
                finally:
                    # Stopped early (the listener interrupted): drop the connection, so the service hears the
                    # hang-up and stops speaking, instead of draining the rest of the sentence into the pool.
                    if not response.content.at_eof():
                        response.close()
        except _ServiceAnsweredError as failed:  # the service's own answer: the person's message, or the operator's
            raise failed.error from None
        except asyncio.IncompleteReadError as error:
            log.warning("the speech service's stream broke off after %d samples", self._received)
            raise synthesizer.unavailable("stopped mid-sentence (its replica may have died)", error) from error
        except (aiohttp.ClientError, OSError, ValueError) as error:  # ValueError: WireError, bad JSON
            # Before TimeoutError: aiohttp's connect timeout is both, and is "not reached", not "went quiet".
            raise synthesizer.unavailable("failed mid-sentence", error) from error
        except TimeoutError as error:
            raise synthesizer.unavailable("went quiet mid-sentence", "no audio in time") from error

    @staticmethod
    async def _record(content: aiohttp.StreamReader, wait: float) -> tuple[bytes, bytes]:
        async with asyncio.timeout(wait):
            kind, length = wire.RECORD_HEADER.unpack(await content.readexactly(wire.RECORD_HEADER.size))
            if length > wire.MAX_RECORD_BYTES:
                raise wire.WireError(f"a record of {length} bytes")
            return kind, await content.readexactly(length)

    def spoken(self, samples: int) -> SpeechPayload | None:
        # The service sends the payload of the whole sentence once it is spoken. A sentence the listener cut short
        # gets none here (the service only knows what it made, not what was heard): the conversation encodes the
        # audio that was heard instead (`TurnMemory.store_reply`).
        if self._payload is None or samples <= 0 or samples < self._received:
            return None
        return self._payload
