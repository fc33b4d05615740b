"""What ties a handler's work to the inbox update it handles (webhook mode: see `chat_lanes`).

The lanes run each update's handlers in a task whose context holds the update's `Work` (`CURRENT`). Through it,
`LaneServices` learns two things the handlers already tell `TelegramServices`, without the handlers changing:

- when the update's turn, or the group message being kept, gets its go (`may_store`): from then on its words may
  be stored, so a process taking over after this one died must not simply handle it again (`ChatLanes` checks
  what was stored). One whose update is gone from the inbox by then (`/forget` ran while it waited in line) does
  not run: it would store the forgotten person's words again. Nor does one whose chat this process no longer
  holds (its lease lapsed while the turn waited): the update stays in the inbox for the chat's holder, which
  would answer it too;
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

from bot.telegram.common import Handler, TelegramServices, UpdateDropped
from bot.telegram.send import Replier
from engine.store.inbox import Begun

log = logging.getLogger(__name__)

T = TypeVar("T")


class ForgottenError(UpdateDropped):
    """The update's row left the inbox before its turn began (`/forget`): the person asked for silence."""


class ChatLostError(UpdateDropped):
    """The chat's lease was no longer this process's as the update's turn was to begin: it stays in the inbox."""


class Work:
    """The inbox update a lane's task is handling: told when its turn begins, keeping what it left running."""

    def __init__(self, row_id: int, update_id: int, on_start: Callable[[int], Awaitable[Begun]]) -> None:
        self.row_id = row_id
        self.update_id = update_id
        self.begun: Begun | None = None  # None until a turn (or a kept message) of it was to begin
        self._on_start = on_start
        self._tasks: set[asyncio.Task[Any]] = set()

    async def begin(self) -> Begun:
        """Its turn has its go: noted once (a handler runs one turn per update), and what was found."""
        if self.begun is None:
            self.begun = await self._on_start(self.row_id)
        return self.begun

    @property
    def left_for_another(self) -> bool:
        """Not handled here: the row stays in the inbox for whoever holds the chat now."""
        return self.begun is Begun.ELSEWHERE

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

    async def may_store(self) -> None:
        work = CURRENT.get()
        if work is None:
            return
        begun = await work.begin()
        if begun is Begun.FORGOTTEN:
            raise ForgottenError(f"update {work.update_id} was forgotten (/forget) before its turn began")
        if begun is Begun.ELSEWHERE:
            raise ChatLostError(f"update {work.update_id} waited while this process lost its chat: left to its holder")

    async def in_turn(self, chat_id: int, replier: Replier, job: Callable[[], Awaitable[T]]) -> T:
        async def begun() -> T:
            await self.may_store()
            return await job()

        return await super().in_turn(chat_id, replier, begun)

    def guard(self, handler: Handler) -> Handler:
        """`TelegramServices.guard`, and a turn dropped (`may_store`) ends quietly: after `/forget` the person asked
        for silence; a chat lost is answered by the process that holds it."""

        @wraps(handler)
        async def dropping(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
            try:
                await handler(update, context)
            except UpdateDropped as dropped:
                log.info("%s: it is not handled here", dropped)

        return super().guard(dropping)

    def track(self, task: asyncio.Task[Any]) -> None:
        super().track(task)
        work = CURRENT.get()
        if work is not None:
            work.keep(task)
