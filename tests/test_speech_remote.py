"""Speech over HTTP: the speech service's API (alan/speech_api.py) and its client (engine/tts/remote.py).

The service runs the real synthesizers — the tone backend and the tiny CSM with its batched speech service —
behind uvicorn; the client is what the bots use with ALAN_SPEECH_URL. Ray Serve's own part (replicas, a replica
dying) is tests/test_speech_ray.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from engine.errors import SpeechTooLongError, TtsUnavailableError
from engine.participant import Participant
from engine.speech_synthesizer import ContextTurn, SpeechPayload, SynthesizerOptions, VoicePrompt
from engine.tts import remote_wire as wire
from engine.tts.codes import SAMPLES_PER_FRAME
from engine.tts.csm_synthesizer import CsmSynthesizer
from engine.tts.remote import RemoteSynthesizer
from engine.tts.tone import ToneStream, ToneSynthesizer
from tests.fakes.local_server import LocalServer
from tests.speech_service_harness import free_port, speech_service


def clip(seconds: float = 2.0, pitch: float = 220.0, rate: int = 24_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)


async def collect(stream: object) -> np.ndarray:
    chunks = [chunk.samples async for chunk in stream]  # type: ignore[attr-defined]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


@pytest.fixture
def tone_url() -> Iterator[str]:
    with speech_service(ToneSynthesizer()) as url:
        yield url


@pytest.fixture
def csm_url(tiny_speech, tiny_csm_dir: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    served = CsmSynthesizer(str(tiny_csm_dir), "cpu", SynthesizerOptions(max_batch=2), load=lambda: tiny_speech)
    with speech_service(served) as url:
        yield url


def csm_client(url: str, tiny_csm_dir: Path, **timeouts: float) -> RemoteSynthesizer:
    return RemoteSynthesizer(url, CsmSynthesizer(str(tiny_csm_dir), "cpu"), **timeouts)


# The tone backend: deterministic, so what comes over the wire must be exactly what it makes here -------------


async def test_the_tone_backend_over_http_makes_exactly_what_it_makes_in_process(tone_url: str) -> None:
    local, remote = ToneSynthesizer(), RemoteSynthesizer(tone_url, ToneSynthesizer())
    try:
        payload = await remote.encode(clip(), 24_000)
        assert payload == await local.encode(clip(), 24_000)
        voice = VoicePrompt("voice-1", "a clip", payload)
        here, there = local.stream("Hello there.", voice, []), remote.stream("Hello there.", voice, [])
        expected, received = await collect(here), await collect(there)
        np.testing.assert_array_equal(received, expected)
        assert there.spoken(received.size) == here.spoken(expected.size) == payload
        assert remote.join([payload, payload]) == local.join([payload, payload])
        assert await remote.max_reference_seconds("a clip") == await local.max_reference_seconds("a clip")
        assert await remote.fit_context(voice, [ContextTurn("ann", "hi")], "Hello.") == []
    finally:
        await remote.aclose()


# The tiny CSM: its speech service behind the API, payloads and budgets answered by the model ----------------


async def test_csm_over_http_speaks_encodes_and_plans_with_the_served_model(
    csm_url: str, tiny_csm_dir: Path, tiny_speech
) -> None:  # type: ignore[no-untyped-def]
    remote = csm_client(csm_url, tiny_csm_dir)
    local = CsmSynthesizer(str(tiny_csm_dir), "cpu", load=lambda: tiny_speech)
    try:
        await remote.load()
        payload = await remote.encode(clip(1.6), 24_000)
        assert payload is not None and payload.tag == f"csm:{tiny_csm_dir}"
        assert payload == await local.encode(clip(1.6), 24_000)  # Mimi's encoder is deterministic
        voice = VoicePrompt("voice-1", "one two three", payload)
        context = [ContextTurn("ann", f"sentence number {n} of what ann said", payload) for n in range(12)]
        assert await remote.fit_context(voice, context, "Hello.") == await local.fit_context(voice, context, "Hello.")
        assert await remote.max_reference_seconds("one two") == await local.max_reference_seconds("one two")

        stream = remote.stream("Hello there.", voice, context[-2:])
        audio = await collect(stream)
        assert audio.size > 0 and audio.size % SAMPLES_PER_FRAME == 0
        spoken = stream.spoken(audio.size)
        assert spoken is not None and spoken.tag == payload.tag
        frames = audio.size // SAMPLES_PER_FRAME
        assert len(spoken.data) == frames * tiny_speech.num_codebooks * 2  # int16 codes, one row per frame
        assert stream.spoken(audio.size - 1) is None  # cut short: the service can't say what was heard
        assert remote.join([payload, spoken]) == SpeechPayload(payload.tag, payload.data + spoken.data)
    finally:
        await remote.aclose()
        await local.aclose()


async def test_a_text_too_long_is_the_persons_message_not_an_outage(csm_url: str, tiny_csm_dir: Path) -> None:
    remote = csm_client(csm_url, tiny_csm_dir)
    try:
        with pytest.raises(SpeechTooLongError):
            await collect(remote.stream("word " * 3000, None, []))
        with pytest.raises(SpeechTooLongError):
            await remote.fit_context(None, [], "word " * 3000)
    finally:
        await remote.aclose()


@pytest.fixture
async def served(csm_url: str, tiny_csm_dir: Path, store, whisper, ollama):  # type: ignore[no-untyped-def]
    """The real conversation engine speaking through the service (the tiny CSM behind it), and its client."""
    from engine.conversation import Conversation
    from engine.llm import OllamaChat
    from tests.engine_harness import LLM_MODEL

    remote = csm_client(csm_url, tiny_csm_dir)
    llm = OllamaChat(LLM_MODEL, ollama.host, first_token_timeout=30, token_timeout=30)
    conversation = Conversation(store, whisper, remote, llm, max_audio_seconds=60, max_audio_bytes=20 * 1024**2)
    try:
        yield conversation, remote
    finally:
        await conversation._keeper.aclose()
        await remote.aclose()


ANN = Participant("telegram", "1", "telegram:1", "Ann")


async def test_a_conversation_speaks_through_the_service(served, store, ollama) -> None:  # type: ignore[no-untyped-def]
    from engine.events import ReplySentence, SpeechChunk, SpeechUnavailable, TurnFinished

    conversation, remote = served
    for said in ("Hi there.", "How are you?"):
        ollama.script("Hello.", " Nice to hear you.")
        events = [event async for event in conversation.turn(ANN, text=said, speak=True)]
        assert not [e for e in events if isinstance(e, SpeechUnavailable)]
        assert [e.text for e in events if isinstance(e, ReplySentence)] == ["Hello.", "Nice to hear you."]
        assert sum(e.audio.size for e in events if isinstance(e, SpeechChunk)) > 0
        assert [e for e in events if isinstance(e, TurnFinished)]
    # aLAN's replies were kept with the served model's codes, so the next turn hears them as context.
    kept = store.recent_turns(store.user("telegram", "1").id, "telegram:1")
    assert [turn.speech_model for turn in kept if turn.role == "assistant"] == [remote.tag, remote.tag]


async def test_a_reply_cut_short_through_the_service_keeps_what_was_heard_as_context(
    served, tiny_speech, store, ollama
) -> None:  # type: ignore[no-untyped-def]
    from engine.events import SpeechChunk

    conversation, remote = served
    ollama.script("Hello there, this is a rather long first sentence.", " And a second one.")
    turn = conversation.turn(ANN, text="Hi.", speak=True)
    heard = 0
    async for event in turn:
        if isinstance(event, SpeechChunk):
            heard = event.audio.size
            break  # Ann talks over it: the rest of the reply is never made
    await turn.aclose()
    assert heard > 0
    [reply] = [t for t in store.recent_turns(store.user("telegram", "1").id, "telegram:1") if t.role == "assistant"]
    # The service only makes the payload of whole sentences: what Ann heard was encoded instead, as her own words
    # are, so the reply's voice is in the next turn's context.
    assert reply.speech_model == remote.tag and reply.speech
    assert reply.text == "Hello there, this is a rather long first sentence."
    assert len(reply.speech) == heard // SAMPLES_PER_FRAME * tiny_speech.num_codebooks * 2  # a row per frame heard


# Failures: each is "the voice is unavailable", with the operator's fix, never a hang --------------------------


async def test_a_service_that_is_not_there_says_how_to_start_it() -> None:
    remote = RemoteSynthesizer(f"http://127.0.0.1:{free_port()}/speech", ToneSynthesizer())
    try:
        with pytest.raises(TtsUnavailableError, match="alan speech serve"):
            await remote.load()
        with pytest.raises(TtsUnavailableError):
            await collect(remote.stream("Hello.", None, []))
    finally:
        await remote.aclose()


async def test_a_service_with_another_model_is_refused(tone_url: str) -> None:
    remote = RemoteSynthesizer(tone_url, ToneSynthesizer("another"))
    try:
        with pytest.raises(TtsUnavailableError, match="ALAN_TTS_MODEL"):
            await remote.load()
    finally:
        await remote.aclose()


class BrokenSpeech(LocalServer):
    """Answers `/info` as the tone service does, then streams one chunk and breaks off, or goes quiet."""

    def __init__(self, then: str) -> None:
        self.then = then

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/info", self._info)
        app.router.add_post("/stream", self._stream)

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response({"tag": ToneSynthesizer().tag, "capabilities": {}})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(wire.audio_record(np.zeros(4800, dtype=np.float32)))
        if self.then == "quiet":
            await asyncio.sleep(30)
        else:  # half a record, then the connection drops, as when the replica's process dies
            await response.write(wire.audio_record(np.zeros(4800, dtype=np.float32))[:100])
            assert request.transport is not None
            request.transport.abort()
        return response


@pytest.mark.parametrize("then", ["break off", "quiet"])
async def test_a_stream_that_breaks_off_or_goes_quiet_is_unavailable_after_what_arrived(then: str) -> None:
    async with BrokenSpeech(then) as server:
        remote = RemoteSynthesizer(server.host, ToneSynthesizer(), next_chunk_timeout=1.0)
        received: list[int] = []
        try:
            with pytest.raises(TtsUnavailableError, match="mid-sentence"):
                async for chunk in remote.stream("Hello.", None, []):
                    received.append(chunk.samples.size)
        finally:
            await remote.aclose()
    assert received == [4800]


class SlowTones(ToneSynthesizer):
    """The tone backend, a chunk every 20 ms, noting when a stream is closed: to see a hang-up reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def stream(self, text: str, voice: VoicePrompt | None, context: object) -> ToneStream:  # type: ignore[override]
        self.loop = asyncio.get_running_loop()
        made = super().stream(text, voice, [])
        inner = made._chunks

        async def slowly() -> AsyncIterator[object]:
            try:
                async for chunk in inner:
                    await asyncio.sleep(0.02)
                    yield chunk
            finally:
                self.closed.set()

        made._chunks = slowly()  # type: ignore[assignment]
        return made


async def test_a_listener_who_interrupts_stops_the_service_speaking() -> None:
    served = SlowTones()
    with speech_service(served) as url:
        remote = RemoteSynthesizer(url, ToneSynthesizer())
        try:
            stream = remote.stream("A long sentence. " * 40, None, [])
            async for _ in stream:
                break
            await stream.aclose()
            assert served.loop is not None
            closed = asyncio.run_coroutine_threadsafe(asyncio.wait_for(served.closed.wait(), 10), served.loop)
            await asyncio.wrap_future(closed)  # the service's stream was closed: it stopped making audio
            assert stream.spoken(4800) is None
        finally:
            await remote.aclose()


async def test_malformed_requests_get_a_400_never_a_crash(tone_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{tone_url}/stream", data=b"not json") as response:
            assert response.status == 400 and (await response.json())["kind"] == wire.BAD_REQUEST
        async with http.post(f"{tone_url}/stream", json={"voice": None}) as response:
            assert response.status == 400
        async with http.post(f"{tone_url}/encode", params={"rate": "24000"}, data=b"abc") as response:
            assert response.status == 400
        async with http.post(f"{tone_url}/fit", json={"text": "hi", "context": [{"speaker": 1}]}) as response:
            assert response.status == 400
        voice = {"key": "v", "transcript": "t", "payload": {"tag": "tone:tone", "data": "%%%"}}
        async with http.post(f"{tone_url}/stream", json={"text": "hi", "voice": voice}) as response:
            assert response.status == 400
        async with http.get(f"{tone_url}/info") as response:  # and it still serves
            assert response.status == 200 and json.loads(await response.text())["tag"] == "tone:tone"


# alan doctor with ALAN_SPEECH_URL: the service is asked, not the local model cache ----------------------------


def test_doctor_checks_the_speech_service_and_its_model(tone_url: str, clean_env: Path) -> None:
    from alan.doctor import Status, check_tts_model
    from alan.settings import load_settings

    ready = check_tts_model(load_settings(speech_url=tone_url, tts_backend="tone", tts_model="tone"))
    assert ready.status is Status.OK and tone_url in ready.detail
    other = check_tts_model(load_settings(speech_url=tone_url, tts_backend="tone", tts_model="another"))
    assert other.status is Status.FAILED and "ALAN_TTS_MODEL" in other.fix
    gone = check_tts_model(load_settings(speech_url=f"http://127.0.0.1:{free_port()}/speech", tts_backend="tone"))
    assert gone.status is Status.FAILED and "alan speech serve" in gone.fix


class NoModel(ToneSynthesizer):
    """A synthesizer whose model can't load (weights missing, a gated repository): what a replica then answers."""

    async def load(self) -> None:
        raise TtsUnavailableError("Could not load the model: accept its licence and set HF_TOKEN.")


async def test_a_replica_whose_model_cant_load_passes_on_the_operators_fix() -> None:
    with speech_service(NoModel()) as url:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/info") as response:
            assert response.status == 503 and (await response.json())["kind"] == wire.UNAVAILABLE
        remote = RemoteSynthesizer(url, ToneSynthesizer())
        try:
            with pytest.raises(TtsUnavailableError, match="set HF_TOKEN"):
                await remote.load()
        finally:
            await remote.aclose()
