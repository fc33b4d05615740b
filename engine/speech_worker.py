"""Runs a speech model's synchronous calls (loading it, Mimi encodes) off the event loop, one at a time.

A model load takes seconds to minutes and an encode of a long clip a while; one thread runs them in order, so two
loads never race and the event loop serves every chat meanwhile. Speaking itself goes through the speech service
(`engine/tts/speech_service.py`), which has its own thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class SpeechWorker:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alan-tts")

    async def call(self, function: Callable[..., T], *args: object) -> T:
        """Run `function(*args)` on the speech thread and wait for its result."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
