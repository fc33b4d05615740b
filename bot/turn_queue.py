"""Fair scheduling of conversation turns: in order within a chat, chats in parallel, a bounded queue.

The engine speaks one reply at a time (one TTS model), so turns wait their go here. Within one chat (a key)
turns run strictly in arrival order; different chats interleave, at most `concurrency` at once. Past
`max_waiting` queued turns new ones are refused at once (`QueueFull`) rather than piling up for minutes,
and whoever has to wait is told so through `on_wait`. With `max_per_chat`, one chat can't have more than that
many turns waiting either, so that a chat flooding the bot doesn't fill the queue and lock every other out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


BUSY = "I'm talking with a lot of people right now. Please try again in a minute."
CHAT_BUSY = "I still have a few of your messages to answer: please wait for those before sending more."


class QueueFull(Exception):
    def __init__(self, message: str = BUSY) -> None:
        super().__init__(message)


class TurnQueue:
    def __init__(self, *, concurrency: int = 1, max_waiting: int = 20, max_per_chat: int | None = None) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self.max_waiting = max_waiting
        self.max_per_chat = max_per_chat
        self._running_chats: set[str] = set()
        self._admitted = 0  # turns accepted and not finished, running ones included
        self._running = 0
        self._chat_locks: dict[str, asyncio.Lock] = {}
        self._chat_users: dict[str, int] = {}
        self._notifications: set[asyncio.Future[None]] = set()

    def _notify(self, message: Awaitable[None]) -> None:
        task = asyncio.ensure_future(message)
        self._notifications.add(task)
        task.add_done_callback(self._notification_done)

    def _notification_done(self, task: asyncio.Future[None]) -> None:
        self._notifications.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not tell a waiting user about the queue: %s", task.exception())

    @property
    def waiting(self) -> int:
        return self._admitted - self._running

    def waiting_in(self, chat: str) -> int:
        return self._chat_users.get(chat, 0) - (chat in self._running_chats)

    async def run(
        self,
        chat: str,
        job: Callable[[], Awaitable[T]],
        *,
        on_wait: Callable[[int], Awaitable[None]] | None = None,
    ) -> T:
        """Run `job` when it is this chat's turn and a slot is free. Raises `QueueFull` at once if full."""
        if self.waiting >= self.max_waiting:
            log.warning("turn queue full (%d waiting): refusing a turn for chat %s", self.waiting, chat)
            raise QueueFull()
        if self.max_per_chat is not None and self.waiting_in(chat) >= self.max_per_chat:
            log.warning("chat %s has %d turns waiting: refusing another", chat, self.waiting_in(chat))
            raise QueueFull(CHAT_BUSY)
        self._admitted += 1
        lock = self._chat_locks.setdefault(chat, asyncio.Lock())
        self._chat_users[chat] = self._chat_users.get(chat, 0) + 1
        try:
            if on_wait is not None and (lock.locked() or self._slots.locked()):
                # Told in the background: awaiting the message first would let a later turn of this chat
                # take the lock ahead of this one.
                self._notify(on_wait(self.waiting))
            async with lock, self._slots:  # asyncio locks wake waiters in FIFO order
                self._running += 1
                self._running_chats.add(chat)
                try:
                    return await job()
                finally:
                    self._running -= 1
                    self._running_chats.discard(chat)
        finally:
            self._admitted -= 1
            self._chat_users[chat] -= 1
            if not self._chat_users[chat]:  # forget idle chats so the maps don't grow forever
                del self._chat_users[chat], self._chat_locks[chat]
