"""The speech service: every request in flight in one frame loop, each as if it were alone.

fp32 greedy on the tiny CSM: requests of mixed prompt lengths, running together, joining late, with a neighbour
cancelled mid-stream, each make exactly the codes and audio the solo loop makes for them; conversations of
several chats speaking at once are batched together.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.conversation import Conversation, Participant
from engine.events import SpeechChunk
from engine.tts.csm import CsmSpeech
from engine.tts.sampling import SamplingConfig
from engine.tts.speech_service import SpeechService
from engine.tts.streaming_decode import StreamConfig
from engine.tts.types import Segment
from tests.fakes.ollama_server import FakeOllama

GREEDY = SamplingConfig.greedy()
NO_GUARDS = StreamConfig(silence_dbfs=None, repeat_frames=None)
PROMPTS = [
    ([], "Hello there."),
    ([Segment(1, "How are you doing today, my friend?")], "I am fine, thank you for asking me."),
    ([Segment(1, "Hi."), Segment(0, "Hello."), Segment(1, "What is the weather like today?")], "Sunny and warm."),
]


def request(speech: CsmSpeech, prompt: int, frames: int):  # type: ignore[no-untyped-def]
    history, text = PROMPTS[prompt]
    return speech.plan_request(None, history, text, 0, sampling=GREEDY, streaming=NO_GUARDS, max_frames=frames)


def alone(speech: CsmSpeech, prompt: int, frames: int) -> tuple[torch.Tensor, np.ndarray]:
    history, text = PROMPTS[prompt]
    stream = speech.stream(None, history, text, 0, sampling=GREEDY, streaming=NO_GUARDS, max_frames=frames)
    audio = np.concatenate(list(stream))
    return stream.result.codes, audio


async def listen(service: SpeechService, req, stop_after: int | None = None) -> tuple[torch.Tensor, np.ndarray]:  # type: ignore[no-untyped-def]
    finished: list[torch.Tensor] = []
    chunks = []
    async with contextlib.aclosing(service.stream(req, lambda codes, reason: finished.append(codes))) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            if stop_after is not None and len(chunks) >= stop_after:
                break  # barge-in
    return finished[0], np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


async def test_requests_together_make_what_each_makes_alone(tiny_speech: CsmSpeech) -> None:
    service = SpeechService(tiny_speech, max_batch=4)
    try:
        late = asyncio.create_task(asyncio.sleep(0.05))
        together = [asyncio.create_task(listen(service, request(tiny_speech, prompt, 20))) for prompt in (0, 1)]
        await late
        together.append(asyncio.create_task(listen(service, request(tiny_speech, 2, 20))))  # joins mid-stream
        results = await asyncio.gather(*together)
    finally:
        service.close()
    for prompt, (codes, audio) in zip((0, 1, 2), results, strict=True):
        solo_codes, solo_audio = alone(tiny_speech, prompt, 20)
        assert torch.equal(codes, solo_codes), prompt
        assert np.allclose(audio, solo_audio, atol=1e-5), prompt
    assert service.stats.largest_batch >= 2


async def test_a_cancelled_neighbour_leaves_the_others_undisturbed(tiny_speech: CsmSpeech) -> None:
    service = SpeechService(tiny_speech, max_batch=4)
    try:
        first, interrupted, third = await asyncio.gather(
            listen(service, request(tiny_speech, 0, 30)),
            listen(service, request(tiny_speech, 1, 30), stop_after=1),
            listen(service, request(tiny_speech, 2, 30)),
        )
    finally:
        service.close()
    assert torch.equal(first[0], alone(tiny_speech, 0, 30)[0])
    assert torch.equal(third[0], alone(tiny_speech, 2, 30)[0])
    codes, audio = interrupted
    assert 0 < len(codes) < 30 and len(audio) == len(codes) * 1920  # only what was heard
    assert torch.equal(codes, alone(tiny_speech, 1, 30)[0][: len(codes)])


async def test_several_chats_speaking_at_once_are_batched_together(
    csm_conversation: Conversation, ollama: FakeOllama
) -> None:
    conversation = csm_conversation
    ollama.default_reply = "This reply is long enough to keep the voice model busy for a while."

    async def turn(chat: int) -> int:
        who = Participant("telegram", str(chat), f"chat-{chat}", f"Person {chat}")
        events = [event async for event in conversation.turn(who, text="hello")]
        return sum(1 for event in events if isinstance(event, SpeechChunk))

    spoken = await asyncio.gather(*(turn(chat) for chat in range(3)))
    assert all(spoken)
    service = conversation._tts._service  # type: ignore[attr-defined]
    assert service is not None and service.stats.largest_batch >= 2


def test_a_service_closes_even_with_nothing_to_do(tiny_speech: CsmSpeech, tmp_path: Path) -> None:
    service = SpeechService(tiny_speech, max_batch=2)
    service.close()
    service._thread.join(timeout=5)
    assert not service._thread.is_alive()


async def test_a_listener_cancelled_twice_waits_for_the_service_to_let_go_then_stays_cancelled(
    tiny_speech: CsmSpeech,
) -> None:
    service = SpeechService(tiny_speech, max_batch=2)
    finished: list[torch.Tensor] = []
    playing = asyncio.Event()

    async def play() -> None:
        stream = service.stream(request(tiny_speech, 1, 200), lambda codes, reason: finished.append(codes))
        async with contextlib.aclosing(stream) as chunks:
            async for _ in chunks:
                playing.set()
                await asyncio.sleep(10)  # playing, until interrupted

    try:
        task = asyncio.create_task(play())
        await playing.wait()
        task.cancel()
        await asyncio.sleep(0.01)
        task.cancel()  # a second cancel while the service still holds the request (a bot shutting down)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert finished and len(finished[0]) < 200  # let go of, with the codes of what was heard, before it ended
    finally:
        service.close()


async def test_a_request_given_up_while_waiting_for_a_slot_ends_at_once(tiny_speech: CsmSpeech) -> None:
    service = SpeechService(tiny_speech, max_batch=1)
    try:
        first_chunk = asyncio.Event()

        async def speak() -> None:
            stream = service.stream(request(tiny_speech, 0, 200), lambda codes, reason: None)
            async with contextlib.aclosing(stream) as chunks:
                async for _ in chunks:
                    first_chunk.set()
                    await asyncio.sleep(30)  # listening, and holding the only slot, until the test ends it

        speaking = asyncio.create_task(speak())
        await first_chunk.wait()  # the first request holds the only slot
        waiting = asyncio.create_task(listen(service, request(tiny_speech, 1, 20)))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(waiting, timeout=5)  # not after the other request's 200 frames
        assert waiting.cancelled() and not speaking.done()
        speaking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await speaking
    finally:
        service.close()


async def test_a_request_given_up_behind_anothers_prefill_ends_at_once(
    tiny_speech: CsmSpeech, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = SpeechService(tiny_speech, max_batch=4)
    stalled = threading.Event()

    def stall() -> None:  # the oldest newcomer's prompt never gets through
        stalled.set()
        time.sleep(0.01)

    monkeypatch.setattr(service, "_prefill_chunk", stall)
    first = asyncio.create_task(listen(service, request(tiny_speech, 0, 20)))
    behind = None
    try:
        assert await asyncio.to_thread(stalled.wait, 5)
        behind = asyncio.create_task(listen(service, request(tiny_speech, 1, 20)))
        await asyncio.sleep(0.2)
        assert len(service._prefilling) == 2  # taken in, behind the first one's prefill
        behind.cancel()
        done, _ = await asyncio.wait({behind}, timeout=5)  # not once the first's prompt is through: never, here
        assert behind in done and behind.cancelled() and len(service._prefilling) == 1
    finally:
        service.close()  # the stalled first request (and, were it still there, the one behind) end with it
        first.cancel()
        await asyncio.gather(*(task for task in (first, behind) if task is not None), return_exceptions=True)


async def test_a_model_failure_ends_the_requests_in_flight_and_the_service_goes_on(
    tiny_speech: CsmSpeech, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = SpeechService(tiny_speech, max_batch=2)
    real = service.batch.sample_frames
    failures = iter([RuntimeError("CUDA error: an illegal memory access was encountered")])

    def fail_once(last_hidden: torch.Tensor) -> torch.Tensor:
        error = next(failures, None)
        if error is not None:
            raise error
        return real(last_hidden)

    monkeypatch.setattr(service.batch, "sample_frames", fail_once)
    try:
        with pytest.raises(RuntimeError, match="speech failed: CUDA error"):
            await listen(service, request(tiny_speech, 0, 10))
        codes, _ = await listen(service, request(tiny_speech, 0, 10))  # the next request is served as ever
        assert torch.equal(codes, alone(tiny_speech, 0, 10)[0])
    finally:
        service.close()


async def test_a_closed_service_refuses_new_requests(tiny_speech: CsmSpeech) -> None:
    service = SpeechService(tiny_speech, max_batch=1)
    service.close()
    with pytest.raises(RuntimeError, match="has stopped"):
        await listen(service, request(tiny_speech, 0, 5))


async def test_a_long_prompt_is_prefilled_a_chunk_between_two_frames(tiny_speech: CsmSpeech) -> None:
    service = SpeechService(tiny_speech, max_batch=2, prefill_chunk=4)
    order: list[str] = []
    frame, chunk = service._frame, service._prefill_chunk

    def recorded_frame() -> None:
        order.append("F")
        frame()

    def recorded_chunk() -> None:
        order.append("P")
        chunk()

    service._frame, service._prefill_chunk = recorded_frame, recorded_chunk  # type: ignore[method-assign]
    try:
        first_chunk = asyncio.Event()
        results: list[tuple[torch.Tensor, np.ndarray]] = []

        async def playing() -> None:
            finished: list[torch.Tensor] = []
            stream = service.stream(request(tiny_speech, 0, 60), lambda codes, reason: finished.append(codes))
            async with contextlib.aclosing(stream) as chunks:
                async for _ in chunks:
                    first_chunk.set()
            results.append((finished[0], np.zeros(0)))

        task = asyncio.create_task(playing())
        await first_chunk.wait()
        late_codes, _ = await listen(service, request(tiny_speech, 2, 10))  # a prompt of many chunks of 4
        await task
    finally:
        service.close()
    assert torch.equal(late_codes, alone(tiny_speech, 2, 10)[0])  # chunked, its prompt makes the same codes
    assert torch.equal(results[0][0], alone(tiny_speech, 0, 60)[0])
    after_join = "".join(order[order.index("F") :])
    assert after_join.count("P") >= 5 and "PP" not in after_join  # never two chunks without a frame between


def test_the_service_is_sized_from_the_options_or_the_device(tiny_speech: CsmSpeech, tiny_csm_dir: Path) -> None:
    from engine.speech_synthesizer import SynthesizerOptions
    from engine.tts.csm_synthesizer import CsmSynthesizer
    from engine.tts.service_sizing import default_max_batch, slot_bytes

    config = tiny_speech.config
    head_dim = config.hidden_size // config.num_attention_heads
    expected = len(tiny_speech.loop.backbone.layers) * 2 * config.num_key_value_heads * 2048 * head_dim * 4
    assert slot_bytes(tiny_speech) == expected  # fp32 keys and values for the whole position budget
    if tiny_speech.device.type == "cpu":
        assert default_max_batch(tiny_speech) == 8

    async def sized(options: SynthesizerOptions) -> tuple[int, int]:
        synthesizer = CsmSynthesizer(str(tiny_csm_dir), "cpu", options, load=lambda: tiny_speech)
        service = await synthesizer.service()
        try:
            return service.max_batch, service.prefill_chunk
        finally:
            await synthesizer.aclose()

    assert asyncio.run(sized(SynthesizerOptions(max_batch=3, prefill_chunk=16))) == (3, 16)
    assert asyncio.run(sized(SynthesizerOptions()))[0] == default_max_batch(tiny_speech)


async def test_the_weight_mode_option_reaches_the_loaded_model(tiny_csm_dir: Path) -> None:
    from engine.speech_synthesizer import SynthesizerOptions
    from engine.tts.csm_synthesizer import CsmSynthesizer
    from engine.tts.weights import Int8Linear

    synthesizer = CsmSynthesizer(str(tiny_csm_dir), "cpu", SynthesizerOptions(weights="int8"))
    try:
        speech = await synthesizer.speech()
        assert isinstance(speech.model.lm_head, Int8Linear)
        service = await synthesizer.service()  # the batched loop runs on int8 weights too
        codes, audio = await listen(service, request(speech, 0, 8))
        assert codes.shape[0] == 8 and np.isfinite(audio).all()
    finally:
        await synthesizer.aclose()


def forced(frames: torch.Tensor, made: torch.Tensor, mode: str | None) -> torch.Tensor:
    """From each reply's 9th frame on, the model "says" the end frame (all zeros) or gets stuck on one frame."""
    if mode is None:
        return frames
    late = (made >= 8).unsqueeze(1)
    return torch.where(late, torch.zeros_like(frames) if mode == "eos" else torch.full_like(frames, 5), frames)


@pytest.mark.parametrize(
    ("streaming", "mode", "reason"),
    [
        (StreamConfig(silence_dbfs=None, repeat_frames=None), "eos", "eos"),
        (StreamConfig(silence_dbfs=None, repeat_frames=4), "stuck", "repeat"),
        (StreamConfig(repeat_frames=None, silence_dbfs=200.0, max_silence_frames=8), None, "silence"),
        (StreamConfig(silence_dbfs=None, repeat_frames=None, first_chunk_frames=3, chunk_frames=4), None, "max_frames"),
    ],
)
async def test_the_services_stopping_rules_end_each_reply_as_the_solo_loop_does(
    tiny_speech: CsmSpeech, streaming: StreamConfig, mode: str | None, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service decides stops on the device and reads them at chunk boundaries; what each listener gets, and
    why it ended, is still exactly the solo loop's."""
    service = SpeechService(tiny_speech, max_batch=4)
    batch = service.batch
    real_batch = batch.sample_frames
    monkeypatch.setattr(
        batch, "sample_frames", lambda hidden: forced(real_batch(hidden), batch.sampling.draws[: len(hidden)] - 1, mode)
    )
    outcomes: dict[int, tuple[torch.Tensor, str]] = {}

    async def one(prompt: int) -> np.ndarray:
        history, text = PROMPTS[prompt]
        req = tiny_speech.plan_request(None, history, text, 0, sampling=GREEDY, streaming=streaming, max_frames=30)
        chunks = []
        finish = lambda codes, reason: outcomes.__setitem__(prompt, (codes, reason))  # noqa: E731
        async with contextlib.aclosing(service.stream(req, finish)) as stream:
            async for chunk in stream:
                chunks.append(chunk)
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    try:
        heard = await asyncio.gather(*(one(prompt) for prompt in range(3)))
    finally:
        service.close()
    real_solo = tiny_speech.loop.sample_frame
    for prompt in range(3):
        made = iter(range(1000))
        monkeypatch.setattr(
            tiny_speech.loop, "sample_frame",
            lambda *args: forced(real_solo(*args).unsqueeze(0), torch.tensor([next(made)]), mode)[0],  # noqa: B023
        )  # fmt: skip
        history, text = PROMPTS[prompt]
        stream = tiny_speech.stream(None, history, text, 0, sampling=GREEDY, streaming=streaming, max_frames=30)
        solo_audio = list(stream)
        codes, stop = outcomes[prompt]
        assert stream.result.stop_reason == reason
        assert (stop, codes.shape[0]) == (reason, stream.result.codes.shape[0]), prompt
        assert torch.equal(codes, stream.result.codes), prompt
        expected = np.concatenate(solo_audio) if solo_audio else np.zeros(0, dtype=np.float32)
        assert np.allclose(heard[prompt], expected, atol=1e-5), prompt
