"""What ties a handler's work to the inbox update it handles (webhook mode: see `chat_lanes`).

The lanes run each update's handlers in a task whose context holds the update's `Work` (`CURRENT`). Through it,
`LaneServices` learns two things the handlers already tell `TelegramServices`, without the handlers changing:

- when the update's turn gets its go and begins (`in_turn`): from then on its words may be stored, so a process
  taking over after this one died must not simply handle it again (`ChatLanes` checks what was stored);
- what the handlers left running for it (`track`: a group message being kept in the background, a queue
  notice): the update counts as handled only once that is done too, so that a process stopping meanwhile leaves
  it in the inbox for the next one.

Outside a lane's task (long polling, the follow-ups after a restart) both are plain `TelegramServices`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bot.telegram.common import TelegramServices
from bot.telegram.send import Replier

T = TypeVar("T")


class Work:
    """The inbox update a lane's task is handling: told when its turn begins, keeping what it left running."""

    def __init__(self, row_id: int, update_id: int, on_start: Callable[[int], Awaitable[None]]) -> None:
        self.row_id = row_id
        self.update_id = update_id
        self.started = False
        self._on_start = on_start
        self._tasks: set[asyncio.Task[Any]] = set()

    async def begin(self) -> None:
        """Its turn has its go (once: a handler runs one turn per update)."""
        if not self.started:
            self.started = True
            await self._on_start(self.row_id)

    def keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settled(self) -> None:
        """Wait until everything the handlers left running for this update is done (whatever its outcome)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))


CURRENT: contextvars.ContextVar[Work | None] = contextvars.ContextVar("telegram_inbox_work", default=None)


class LaneServices(TelegramServices):
    """`TelegramServices` that report a turn's start, and the work left running, to the update being handled."""

    async def in_turn(self, chat_id: int, replier: Replier, job: Callable[[], Awaitable[T]]) -> T:
        work = CURRENT.get()
        if work is None:
            return await super().in_turn(chat_id, replier, job)

        async def begun() -> T:
            await work.begin()
            return await job()

        return await super().in_turn(chat_id, replier, begun)

    def track(self, task: asyncio.Task[Any]) -> None:
        super().track(task)
        work = CURRENT.get()
        if work is not None:
            work.keep(task)
