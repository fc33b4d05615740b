"""What every Telegram handler shares: the engine, the turn scheduler, the options, and the safety net.

`TelegramServices.guard` wraps each handler so that no update can crash the bot or end in silence: engine
errors (`TurnError`) and a full queue are told to the user as they are, Bot API failures that survived the
retries and unexpected bugs are logged (with a traceback for bugs) and answered with an apology.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

from telegram import Bot, CallbackQuery, Chat, Message, Update, User
from telegram.constants import ChatType
from telegram.error import BadRequest, TelegramError
from telegram.ext import ContextTypes

from alan.scheduler import SchedulerFullError, TurnScheduler
from alan.settings import Settings
from bot.telegram.media import download_limit
from bot.telegram.send import Replier, RetryPolicy, UploadTimeouts
from engine.conversation import Conversation, Participant
from engine.errors import TurnError

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[Update, ContextTypes.DEFAULT_TYPE], Awaitable[None]]

PLATFORM = "telegram"
APOLOGY = "Sorry, something went wrong on my side while answering that. Please try again in a moment."
TELEGRAM_TROUBLE = "Sorry, I couldn't get my answer through Telegram. Please try again in a moment."
WAITING = "I'm still answering an earlier message; yours is in the queue ({count} waiting). I'll get to it soon."


async def answer_press(query: CallbackQuery, text: str | None = None, *, show_alert: bool = False) -> None:
    """Answer a button press. Telegram takes an answer only once, within about 15 s: a press handled again later
    (its update kept in the inbox through a restart or a takeover) can't be answered any more, and is acted on all
    the same; that refusal is only logged."""
    try:
        await query.answer(text, show_alert=show_alert)
    except BadRequest as error:
        log.info("a button press could no longer be answered (%s); it is handled anyway", error)


class UpdateDropped(Exception):  # noqa: N818 (not an error: a decision, logged and kept quiet)
    """An update's turn (or kept message) must not run, and is dropped without a word (`LaneServices`)."""


@dataclass(frozen=True)
class TelegramOptions:
    """Tunables with production defaults; tests shorten the waits."""

    poll_timeout_s: float = 10.0  # getUpdates long-poll length
    read_timeout_s: float = 15.0  # for every other Bot API call
    connect_timeout_s: float = 10.0
    chat_action_every_s: float = 4.0  # a chat action fades after 5 s
    clone_timeout_s: float = 600.0  # an unfinished /clone is dropped after this
    # These two size the Telegram-only scheduler, made only when none is passed in (tests, Telegram embedded on
    # its own); under `alan run` every platform shares the app's, sized in alan/app.py `build_scheduler`.
    turn_concurrency: int = 2  # turns of different chats running at once (one speech service batches their sentences)
    max_waiting_turns: int = 20
    max_waiting_per_chat: int = 3  # so that one chat flooding the bot doesn't lock the others out
    # After the first voice note, the next ones gather at least this much audio, so that a long answer is a
    # few notes rather than one per sentence.
    follow_up_min_seconds: float = 8.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    uploads: UploadTimeouts = field(default_factory=UploadTimeouts)  # voice notes and audio files we send
    stop_grace_s: float = 20.0  # on shutdown, how long answers in progress may take to finish
    queue_notice_after_s: float = 1.0  # a turn still waiting this long is told it is in the queue


def participant(user: User, chat: Chat) -> Participant:
    """`user` in `chat`; a group chat is one conversation shared by everyone in it."""
    shared = chat.type in (ChatType.GROUP, ChatType.SUPERGROUP)
    return Participant(PLATFORM, str(user.id), str(chat.id), user.full_name, shared=shared)


class TelegramServices:
    def __init__(
        self,
        settings: Settings,
        conversation: Conversation,
        options: TelegramOptions,
        scheduler: TurnScheduler | None = None,
    ) -> None:
        self.settings = settings
        self.conversation = conversation
        self.options = options
        # The app's scheduler, shared with every platform; a Telegram-only one (tests, a bot on its own) otherwise.
        self.scheduler = scheduler or TurnScheduler(
            concurrency=options.turn_concurrency,
            max_waiting=options.max_waiting_turns,
            max_per_chat=options.max_waiting_per_chat,
        )
        self.max_bytes = download_limit(settings.telegram_api_url, settings.max_audio_bytes)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state_keepers: list[Callable[[str], bool]] = []

    def keeps_state_with(self, keeper: Callable[[str], bool]) -> None:
        """Register what tells whether a chat has a step in progress kept in this process's memory (a /clone
        waiting for its clip): by webhook, such a chat stays with this process until it is done (`chat_lanes`)."""
        self._state_keepers.append(keeper)

    def keeps_state(self, chat: str) -> bool:
        """Whether this process keeps something of `chat` in memory now (its key as `chat_lanes.lane_key` has it)."""
        return any(keeper(chat) for keeper in self._state_keepers)

    def replier(self, bot: Bot, message: Message) -> Replier:
        """Replies to `message`, in its chat."""
        return self.replier_to(bot, message.chat_id, message.message_id)

    def replier_to(self, bot: Bot, chat_id: int, reply_to: int | None = None) -> Replier:
        return Replier(bot, chat_id, reply_to, self.options.retry, self.options.uploads)

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        """Run in the background, keeping a reference (asyncio holds tasks weakly) until it is done."""
        self.track(asyncio.create_task(coroutine, name=name))

    def track(self, task: asyncio.Task[Any]) -> None:
        """Keep a reference to a background task until it is done (and cancel it on `close`)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def asker_answered(
        self, update: Update, context: ContextTypes.DEFAULT_TYPE, prompt: Message, rest: str
    ) -> tuple[str, User, Replier] | None:
        """A button under a question aLAN asked one person (data `<answer>:<their user id>`): the answer, who pressed
        it and a replier to edit the question with. None, with an alert, when someone else pressed it."""
        query, user = update.callback_query, update.effective_user
        assert query is not None and user is not None
        answer, _, uid = rest.partition(":")
        if uid != str(user.id):
            await answer_press(query, "Only the person who asked can answer this.", show_alert=True)
            return None
        await answer_press(query)
        return answer, user, Replier(context.bot, prompt.chat_id, None, self.options.retry)

    async def may_store(self) -> None:
        """Called as a turn, or a group message being kept, gets its go: before anything of it is stored. Raises
        `UpdateDropped` when it must not run (webhook mode: see `LaneServices`); here nothing stops it."""

    async def in_turn(self, chat_id: int, replier: Replier, job: Callable[[], Awaitable[T]]) -> T:
        """Run `job` in this chat's place in the scheduler (raises `SchedulerFullError`, a message for the user)."""

        started = asyncio.Event()

        async def notice(count: int) -> None:
            # A wait behind words being kept (a group's chatter) or a turn about to end is no wait worth a message.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(started.wait(), self.options.queue_notice_after_s)
                return
            await say_quietly(replier, WAITING.format(count=count))

        async def on_wait(count: int) -> None:
            # Told in the background: awaiting the message here would let a later update of the same chat
            # queue up first, and turns must run in the order they came.
            self.spawn(notice(count), name=f"queue-notice-{chat_id}")

        async def run() -> T:
            started.set()
            return await job()

        return await self.scheduler.run(
            str(chat_id), run, on_wait=on_wait, max_per_chat=self.options.max_waiting_per_chat
        )

    def guard(self, handler: Handler) -> Handler:
        """Wrap a handler so that every failure is logged and answered, and none escapes."""

        @wraps(handler)
        async def guarded(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
            try:
                await handler(update, context)
            except (TurnError, SchedulerFullError) as error:
                await self.tell(update, context, str(error))
            except TelegramError as error:
                log.warning("Bot API call failed while handling update %s: %s", update.update_id, error)
                await self.tell(update, context, TELEGRAM_TROUBLE)
            except Exception:
                log.exception("unexpected error while handling update %s", update.update_id)
                await self.tell(update, context, APOLOGY)

        return guarded

    async def tell(self, update: Update, context: ContextTypes.DEFAULT_TYPE, text: str) -> None:
        """Best effort: say `text` where the update came from; a failure here is only logged."""
        if update.callback_query is not None:
            try:
                await update.callback_query.answer()
            except Exception as error:
                log.debug("could not answer callback query: %s", error)
        message = update.effective_message
        if message is None:
            return
        replier = Replier(
            context.bot, message.chat_id, None if update.callback_query else message.message_id, self.options.retry
        )
        await say_quietly(replier, text)


async def say_quietly(replier: Replier, text: str) -> None:
    """Send a text, logging instead of raising if Telegram can't take it even after retries."""
    try:
        await replier.text(text)
    except Exception as error:
        log.warning("could not send a message to chat %s: %s", replier.chat_id, error)
