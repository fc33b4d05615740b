"""Runs the synchronous speech synthesiser off the event loop, one job at a time, streaming its audio back.

CSM holds one model on one device: two syntheses at once would only slow each other down (and fight over GPU
memory), so every TTS job, Mimi encodes included, goes through one worker thread in order. Audio chunks cross
back to the event loop as they are made, so a bot can start playing before the sentence is finished.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import numpy as np

T = TypeVar("T")


class ClosableAudioStream(Protocol):
    def __iter__(self) -> Iterator[np.ndarray]: ...
    def close(self) -> None: ...


_DONE = object()


class SpeechWorker:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alan-tts")

    async def call(self, function: Callable[..., T], *args: object) -> T:
        """Run `function(*args)` on the speech thread and wait for its result."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def stream(self, start: Callable[[], ClosableAudioStream]) -> AsyncIterator[np.ndarray]:
        """Yield the chunks of the audio stream that `start()` opens on the speech thread.

        Closing this iterator early (the listener interrupted) stops generation at the next chunk: the
        stream is closed on the speech thread, so the model stops working instead of finishing unheard audio.
        Errors raised while generating are raised here.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                if stop.is_set():  # cancelled while waiting behind another job: don't even start
                    return
                stream = start()
                try:
                    for chunk in stream:
                        loop.call_soon_threadsafe(queue.put_nowait, chunk)
                        if stop.is_set():
                            break
                finally:
                    stream.close()
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            except BaseException as error:  # handed to the consumer, who decides what the user hears
                loop.call_soon_threadsafe(queue.put_nowait, error)

        job = loop.run_in_executor(self._executor, produce)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            stop.set()
            # Wait for the thread to let go of the stream even if cancelled again meanwhile (a bot shutting down
            # cancels twice): the caller reads the stream's final state right after this.
            cancelled = False
            while not job.done():
                try:
                    await asyncio.shield(job)
                except asyncio.CancelledError:
                    cancelled = True  # passed on once the thread is done, not swallowed
                except Exception:
                    break  # already reported through the queue, or the consumer has gone
            if cancelled:
                raise asyncio.CancelledError

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
