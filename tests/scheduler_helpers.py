"""What the turn scheduler's tests share: jobs the test starts and finishes, and checks that nothing is left behind.

No test depends on timing: jobs start and finish only when the test lets them (`Jobs`), and every "what ran
next" is read from the order the jobs started in. The one timeout (`NEXT_START_LIMIT_S`) only keeps a broken
scheduler from hanging the suite.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from alan.scheduler import TurnScheduler

NEXT_START_LIMIT_S = 5.0


class Jobs:
    """Jobs named by the test: each records its start and then waits until the test releases it."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.running: set[str] = set()
        self.most_at_once = 0
        self._starts: asyncio.Queue[str] = asyncio.Queue()
        self._release: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def job(self, name: str) -> Callable[[], Awaitable[str]]:
        async def job() -> str:
            self.started.append(name)
            self.running.add(name)
            self.most_at_once = max(self.most_at_once, len(self.running))
            self._starts.put_nowait(name)
            try:
                await self._release[name].wait()
            finally:
                self.running.discard(name)
            self.finished.append(name)
            return name

        return job

    def release(self, name: str) -> None:
        self._release[name].set()

    async def next_start(self) -> str:
        """The name of the next job to start (waiting for it if none has started since the last call)."""
        return await asyncio.wait_for(self._starts.get(), NEXT_START_LIMIT_S)

    def starts_pending(self) -> int:
        return self._starts.qsize()


async def submit(
    scheduler: TurnScheduler,
    chat: str,
    job: Callable[[], Awaitable[Any]],
    **kwargs: Any,
) -> asyncio.Task[Any]:
    """Start `scheduler.run` in a task and yield once, so the turn has taken its place (or started) on return."""
    task = asyncio.create_task(scheduler.run(chat, job, **kwargs))
    await asyncio.sleep(0)
    return task


def assert_idle(scheduler: TurnScheduler) -> None:
    """Nothing counted and nothing remembered: idle chats must not stay in the scheduler's maps."""
    assert scheduler.waiting == 0 and scheduler.running == 0
    assert not scheduler._chats and not scheduler._ready


async def notifications_done(scheduler: TurnScheduler) -> None:
    await asyncio.gather(*list(scheduler._notifications), return_exceptions=True)
