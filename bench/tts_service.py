"""The speech service under load: N simultaneous requests against the same requests one after another.

Every request speaks with the same (prefix-cached) voice and history and its own text and seed, guards off, so
each makes exactly `frames` frames. The service records how long each frame step took and how many requests it
served: a stream's ms per frame at N is the mean step time while N requests were in flight (Mimi decodes
included), the aggregate frames/s N over that.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass

from bench.csm_setup import TEXTS
from engine.tts.csm import CsmSpeech, SpeechRequest
from engine.tts.sampling import SamplingConfig
from engine.tts.speech_service import SpeechService
from engine.tts.streaming_decode import StreamConfig
from engine.tts.types import Segment

GUARDS_OFF = StreamConfig(first_chunk_frames=5, silence_dbfs=None, repeat_frames=None)


@dataclass
class Load:
    """One weight mode's figures."""

    sequential_fps: float  # frames/s of requests one after another
    stream_ms: dict[int, float]  # N -> a stream's ms per frame with N in flight
    ttfa_alone_s: float = float("nan")  # time to first audio of a request on an idle service
    ttfa_busy_s: float = float("nan")  # … of one arriving while 7 others speak

    def speedup(self, count: int) -> float:
        return count * 1000 / self.stream_ms[count] / self.sequential_fps

    def slowdown(self, count: int) -> float:
        return self.stream_ms[count] / self.stream_ms[1]


class ServiceBench:
    def __init__(self, speech: CsmSpeech, voice: Segment, history: list[Segment], max_batch: int = 8) -> None:
        self.speech, self.voice, self.history = speech, voice, history
        # Whole prompts between two frames: the N requests join on N consecutive frames, so N of them speak
        # together soon (with 64-position chunks, 8 would take 20+ frames to all be in). The cost of chunking
        # shows in the time to first audio of a request arriving while others speak (`ttfa`), which uses 64.
        self.service = SpeechService(speech, max_batch=max_batch, prefill_chunk=2048, cuda_graphs=True)

    def request(self, index: int, frames: int) -> SpeechRequest:
        return self.speech.plan_request(self.voice, self.history, TEXTS[index % len(TEXTS)], 0,
                                        voice_cache_key="bench-voice", sampling=SamplingConfig(seed=index),
                                        streaming=GUARDS_OFF, max_frames=frames)  # fmt: skip

    async def speak(self, request: SpeechRequest, heard: asyncio.Event | None = None,
                    stop: asyncio.Event | None = None) -> float:  # fmt: skip
        """Time to first audio; `heard` is set then; the request is cancelled (barge-in) once `stop` is set."""
        start, first = time.perf_counter(), float("nan")
        async with contextlib.aclosing(self.service.stream(request, lambda codes, reason: None)) as chunks:
            async for _ in chunks:
                if first != first:  # nan: the first chunk
                    first = time.perf_counter() - start
                    if heard is not None:
                        heard.set()
                if stop is not None and stop.is_set():
                    break
        return first

    def steps(self, count: int) -> list[float]:
        steps = self.service.stats.step_seconds.get(count, [])
        if not steps:
            raise RuntimeError(f"no frame step ran with {count} requests in flight: make the replies longer")
        return steps

    def measure(self, sizes: tuple[int, ...], frames: int, *, sequential: int) -> Load:
        """`sequential` requests one after another, then each N of `sizes` at once."""
        self.service.stats.step_seconds.clear()
        for index in range(sequential):
            asyncio.run(self.speak(self.request(index, frames)))
        alone = statistics.mean(self.steps(1))
        stream_ms = {1: 1000 * alone}
        for count in sizes:
            if count == 1:
                continue
            self.service.stats.step_seconds.clear()

            async def together(count: int = count) -> None:
                # each request joins a frame after the one before: `count` frames more keep N in flight `frames`
                await asyncio.gather(*(self.speak(self.request(index, frames + count)) for index in range(count)))

            asyncio.run(together())
            stream_ms[count] = 1000 * statistics.mean(self.steps(count))
        return Load(1 / alone, stream_ms)

    def ttfa(self, load: Load, speaking: int = 7) -> None:
        """Time to first audio alone, and arriving while `speaking` others are mid-sentence (all cached voice)."""
        self.service.prefill_chunk = 64  # as served: a newcomer's prompt in chunks between the others' frames
        load.ttfa_alone_s = asyncio.run(self.speak(self.request(speaking, 6)))

        async def busy() -> float:
            heard = [asyncio.Event() for _ in range(speaking)]
            stop = asyncio.Event()
            others = [asyncio.create_task(self.speak(self.request(index, 200), heard[index], stop))
                      for index in range(speaking)]  # fmt: skip
            await asyncio.gather(*(event.wait() for event in heard))  # all of them speaking
            try:
                return await self.speak(self.request(speaking, 6))
            finally:
                stop.set()
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)

        load.ttfa_busy_s = asyncio.run(busy())

    def close(self) -> None:
        self.service.close()
        self.service.join(60)
