"""What ties a handler's work to the inbox update it handles (webhook mode: see `chat_lanes`).

The lanes run each update's handlers in a task whose context holds the update's `Work` (`CURRENT`). Through it,
`LaneServices` learns two things the handlers already tell `TelegramServices`, without the handlers changing:

- when the update's turn gets its go and begins (`in_turn`): from then on its words may be stored, so a process
  taking over after this one died must not simply handle it again (`ChatLanes` checks what was stored). A turn
  whose update is gone from the inbox by then (`/forget` ran while it waited) does not run: it would store the
  forgotten person's words again;
- what the handlers left running for it (`track`: a group message being kept in the background, a queue
  notice): the update counts as handled only once that is done too, so that a process stopping meanwhile leaves
  it in the inbox for the next one.

Outside a lane's task (long polling, the follow-ups after a restart) both are plain `TelegramServices`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from telegram import Update
from telegram.ext import ContextTypes

from bot.telegram.common import Handler, TelegramServices
from bot.telegram.send import Replier

log = logging.getLogger(__name__)

T = TypeVar("T")


class ForgottenError(Exception):
    """The update's row left the inbox before its turn began (`/forget`): the turn is dropped, without a word."""


class Work:
    """The inbox update a lane's task is handling: told when its turn begins, keeping what it left running."""

    def __init__(self, row_id: int, update_id: int, on_start: Callable[[int], Awaitable[bool]]) -> None:
        self.row_id = row_id
        self.update_id = update_id
        self.started = False
        self.gone = False  # its row was gone from the inbox when its turn began
        self._on_start = on_start
        self._tasks: set[asyncio.Task[Any]] = set()

    async def begin(self) -> bool:
        """Its turn has its go (noted once: a handler runs one turn per update). False: the row is gone, the turn
        must not run."""
        if not self.started:
            self.started = True
            self.gone = not await self._on_start(self.row_id)
        return not self.gone

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
            if not await work.begin():
                raise ForgottenError(work.update_id)
            return await job()

        return await super().in_turn(chat_id, replier, begun)

    def guard(self, handler: Handler) -> Handler:
        """`TelegramServices.guard`, and a turn dropped for `/forget` ends quietly: the person asked for silence."""

        @wraps(handler)
        async def dropping(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
            try:
                await handler(update, context)
            except ForgottenError:
                log.info("update %d was forgotten (/forget) before its turn began: it is not handled", update.update_id)

        return super().guard(dropping)

    def track(self, task: asyncio.Task[Any]) -> None:
        super().track(task)
        work = CURRENT.get()
        if work is not None:
            work.keep(task)
