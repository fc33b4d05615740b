"""One scheduler for every conversation turn of the app: in order within a chat, fair across chats, bounded.

The engine has one speech model, so every platform's turns compete for the same few slots; a queue per platform
would let Telegram and Discord each believe they own them. This scheduler is built once (in `alan/`) and handed
to every platform, so the bounds and the fairness hold for the whole app.

- Within one chat (a string key; platforms prefix theirs, e.g. `discord-voice:<guild>`) turns run strictly in
  arrival order, one at a time: a reply must not overtake the one before it, and history writes must not race.
- Across chats, the next turn to start when a slot frees up is taken round-robin: a chat takes a place at the
  back of the rotation when it gets a turn to wait while idle, and again when its running turn ends with more
  waiting. So a chat that has just had its go lines up behind every chat already waiting, and one chat with many
  queued turns can't starve another (not even a steady stream of new chats can starve a busy one, which "newcomers
  first" would allow).
- At most `concurrency` turns run at once. It can be raised while running: the batched speech service that will
  take its requests from here can then let more turns through as its batches grow.
- Past `max_waiting` waiting turns, or `max_per_chat` waiting in one chat, a turn is refused at once
  (`SchedulerFullError`, whose text is for the user) rather than piling up for minutes; a turn that can start
  right away is never refused for the total, as it doesn't wait. Whoever has to wait is told through `on_wait`.
- A `light` turn (words heard in a group, not necessarily said to aLAN) takes its place in line like any other, so a
  group's conversation keeps its order, but counts toward none of those bounds: a group's chatter must not make the
  bot refuse the next person who speaks to it. Light turns are bounded on their own, `max_light_per_chat` waiting.
- `submit` puts a turn in line at once and runs it in the background, for a caller that must not wait on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY = "I'm talking with a lot of people right now. Please try again in a minute."
CHAT_BUSY = "I still have a few of your messages to answer: please wait for those before sending more."


class SchedulerFullError(Exception):
    """A turn refused because too many are waiting; `str()` is the message to show the user."""

    def __init__(self, message: str = BUSY) -> None:
        super().__init__(message)


class _Turn:
    """One admitted turn: `go` resolves when it may start; `started` says the scheduler has counted it running."""

    __slots__ = ("entered", "go", "light", "started")

    def __init__(self, go: asyncio.Future[None], light: bool = False) -> None:
        self.go = go
        self.started = False
        self.light = light
        self.entered = False  # its runner has begun (it then cleans up after itself)


class _Chat:
    """A chat with turns running or waiting; dropped as soon as it has neither, so idle chats cost nothing."""

    __slots__ = ("running", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[_Turn] = deque()
        self.running = False


class TurnScheduler:
    """Runs turns in order within a chat and round-robin across chats, at most `concurrency` at once.

    Invariants, restored after every change: a chat is in `_chats` iff it has a turn running or waiting; it is in
    `_ready` (the rotation) iff it has a turn waiting and none running; and `_ready` is only non-empty while every
    slot is taken. A job must not run another turn of its own chat (it would wait for itself).
    """

    def __init__(
        self,
        *,
        concurrency: int = 1,
        max_waiting: int = 20,
        max_per_chat: int | None = None,
        max_light_per_chat: int = 50,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self._concurrency = concurrency
        self.max_waiting = max_waiting
        self.max_per_chat = max_per_chat
        self.max_light_per_chat = max_light_per_chat
        self._light_waiting = 0
        self._chats: dict[str, _Chat] = {}
        self._ready: OrderedDict[str, None] = OrderedDict()  # the rotation: chats whose next turn may start
        self._waiting = 0
        self._running = 0
        self._notifications: set[asyncio.Future[None]] = set()  # kept referenced: asyncio holds tasks weakly

    @property
    def concurrency(self) -> int:
        """How many turns may run at once (across all chats)."""
        return self._concurrency

    @concurrency.setter
    def concurrency(self, value: int) -> None:
        # Raising it starts waiting turns at once; lowering it lets running turns finish, then starts fewer.
        if value < 1:
            raise ValueError(f"concurrency must be at least 1, not {value}")
        self._concurrency = value
        self._dispatch()

    @property
    def waiting(self) -> int:
        """Turns admitted and not started yet, all chats together."""
        return self._waiting

    @property
    def running(self) -> int:
        """Turns running now (given their go), all chats together."""
        return self._running

    def waiting_in(self, chat: str) -> int:
        """Turns of `chat` admitted and not started yet (its running one not included)."""
        state = self._chats.get(chat)
        return len(state.waiting) if state is not None else 0

    async def run(
        self,
        chat: str,
        job: Callable[[], Awaitable[T]],
        *,
        on_wait: Callable[[int], Awaitable[None]] | None = None,
        max_per_chat: int | None = None,
        light: bool = False,
    ) -> T:
        """Run `job` when it is this chat's turn and its go comes up, and return (or raise) what it does.

        `max_per_chat` replaces the scheduler's own per-chat bound for this turn (for a `light` one, the bound on
        light turns): platforms differ in what a "chat" is (a Telegram chat is one person's; a Discord server's
        voice channel is everyone's in it).

        The turn takes its place in line before `run` first suspends, so turns of one chat run in the order their
        `run` calls started. Raises `SchedulerFullError` at once if the turn would have to wait and the scheduler
        or the chat has too many waiting already. If it has to wait, `on_wait(position)` is started in the
        background with the number of turns waiting, this one included; its failure is only logged. Cancelling
        the caller while it waits takes the turn out of line; while the job runs, cancels the job.
        """
        turn = self._enter(chat, max_per_chat, light)
        return await self._run_entered(chat, turn, job, on_wait)

    def submit(self, chat: str, job: Callable[[], Awaitable[T]], *, light: bool = False) -> asyncio.Task[T]:
        """Put a turn in line now (raising `SchedulerFullError` now if it can't be) and run it in the background.

        Its place is taken before this returns, so a caller that hands the work off still keeps its order.
        """
        turn = self._enter(chat, None, light)
        task = asyncio.create_task(self._run_entered(chat, turn, job, None), name=f"turn-{chat}")
        task.add_done_callback(lambda done: self._never_ran(chat, turn, done))
        return task

    def _never_ran(self, chat: str, turn: _Turn, task: asyncio.Task[Any]) -> None:
        """A submitted task cancelled before its first step never ran `_run_entered`'s clean-up: do it here."""
        if not task.cancelled() or turn.entered:
            return
        if turn.started:
            self._finish(chat)
        else:
            self._withdraw(chat, turn)
            if not turn.go.done():
                turn.go.cancel()  # `_dispatch` skips a turn whose go is done

    async def _run_entered(
        self,
        chat: str,
        turn: _Turn,
        job: Callable[[], Awaitable[T]],
        on_wait: Callable[[int], Awaitable[None]] | None,
    ) -> T:
        turn.entered = True
        if not turn.started:
            if on_wait is not None:
                # Told in the background: awaiting the message first would hold this turn's caller back for
                # nothing, and a slow platform must not delay its go.
                self._notify(on_wait, self._waiting - self._light_waiting)
            try:
                await turn.go
            except asyncio.CancelledError:
                if turn.started:  # its go came, but it was cancelled before it could start the job
                    self._finish(chat)
                else:
                    self._withdraw(chat, turn)
                raise
        try:
            return await job()
        finally:
            self._finish(chat)

    def _enter(self, chat: str, max_per_chat: int | None = None, light: bool = False) -> _Turn:
        """Admit a turn of `chat` (or raise `SchedulerFullError`), put it in line and start it if it may."""
        state = self._chats.get(chat)
        per_chat = self.max_per_chat if max_per_chat is None else max_per_chat
        must_wait = state is not None or self._running >= self._concurrency
        waiting_here = [turn for turn in state.waiting if turn.light == light] if state is not None else []
        if light:
            if len(waiting_here) >= (self.max_light_per_chat if max_per_chat is None else max_per_chat):
                log.warning("chat %s has %d light turns waiting: refusing another", chat, len(waiting_here))
                raise SchedulerFullError(CHAT_BUSY)
        else:
            if must_wait and self._waiting - self._light_waiting >= self.max_waiting:
                log.warning("turn scheduler full (%d waiting): refusing a turn for chat %s", self._waiting, chat)
                raise SchedulerFullError()
            if per_chat is not None and len(waiting_here) >= per_chat:
                log.warning("chat %s has %d turns waiting: refusing another", chat, len(waiting_here))
                raise SchedulerFullError(CHAT_BUSY)
        if state is None:
            state = self._chats[chat] = _Chat()
        turn = _Turn(asyncio.get_running_loop().create_future(), light)
        state.waiting.append(turn)
        self._waiting += 1
        self._light_waiting += light
        if not state.running and len(state.waiting) == 1:
            self._ready[chat] = None  # an idle chat joins the back of the rotation
        self._dispatch()
        return turn

    def _dispatch(self) -> None:
        """Start the head turn of the chats at the front of the rotation while slots are free."""
        while self._running < self._concurrency and self._ready:
            chat = next(iter(self._ready))
            state = self._chats[chat]
            turn = state.waiting.popleft()
            self._waiting -= 1
            self._light_waiting -= turn.light
            if turn.go.done():
                # Its caller was cancelled and hasn't run its cleanup yet (it will find the turn gone): skip it,
                # and let the chat's next turn, if any, have the go in its place.
                if not state.waiting:
                    del self._ready[chat], self._chats[chat]
                continue
            del self._ready[chat]
            state.running = True
            self._running += 1
            turn.started = True
            turn.go.set_result(None)

    def _finish(self, chat: str) -> None:
        """A running turn of `chat` is over: free its slot and line the chat up again if it has more waiting."""
        state = self._chats[chat]
        state.running = False
        self._running -= 1
        if state.waiting:
            self._ready[chat] = None  # behind every chat already waiting: that is the round-robin
        else:
            del self._chats[chat]  # forget idle chats so the map doesn't grow forever
        self._dispatch()

    def _withdraw(self, chat: str, turn: _Turn) -> None:
        """Take a waiting turn out of line (its caller was cancelled), unless `_dispatch` already skipped it."""
        state = self._chats.get(chat)
        if state is None or turn not in state.waiting:
            return
        state.waiting.remove(turn)
        self._waiting -= 1
        self._light_waiting -= turn.light
        if not state.waiting:
            self._ready.pop(chat, None)
            if not state.running:
                del self._chats[chat]

    def _notify(self, on_wait: Callable[[int], Awaitable[None]], position: int) -> None:
        try:
            task = asyncio.ensure_future(on_wait(position))
        except Exception:  # e.g. not a coroutine function after all: telling is best effort, the turn goes on
            log.warning("could not tell a waiting user about the queue", exc_info=True)
            return
        self._notifications.add(task)
        task.add_done_callback(self._notification_done)

    def _notification_done(self, task: asyncio.Future[None]) -> None:
        self._notifications.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not tell a waiting user about the queue: %s", task.exception())
