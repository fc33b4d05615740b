"""Talking back to Telegram reliably.

Every call to the Bot API can meet flood control (429 with `retry_after`) or a network hiccup (a timeout, a
5xx); both pass, so a call is retried: after the time Telegram asks for, or with a doubling backoff. Errors
that retrying can't fix (a bad request, a bot blocked by the user) are raised at once. Long texts are split
to fit Telegram's limits, and the "recording voice…" status, which lasts at most 5 s, is kept alive.

An upload is not sent again when its answer timed out after the request was written: Telegram has most
likely delivered it, and a resend would put the same voice note in the chat twice. Failures before the
request went out (no connection, a full pool, an upload cut short) and errors Telegram itself answered with
are retried as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
from telegram import Bot, InlineKeyboardMarkup, Message, ReplyParameters
from telegram.constants import ChatAction, MessageLimit
from telegram.error import BadRequest, NetworkError, RetryAfter
from telegram.warnings import PTBDeprecationWarning

from bot.text_split import split_text

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    backoff_s: float = 1.0  # the first wait after a network error; it doubles each time
    # A flood wait longer than this is not worth holding a conversation for: give up and say so.
    max_retry_after_s: float = 60.0


def retry_after_seconds(error: RetryAfter) -> float:
    # python-telegram-bot 22 returns an int with a deprecation warning, or a timedelta if PTB_TIMEDELTA is set.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


class MaybeDeliveredError(NetworkError):
    """A send whose request reached Telegram but whose answer never came: it was most likely delivered."""


def may_have_arrived(error: BaseException) -> bool:
    """Whether a failed Bot API call was most likely carried out by Telegram all the same.

    python-telegram-bot raises `TimedOut`/`NetworkError` *from* the httpx error, which tells the cases apart.
    Only a read timeout counts: the whole request was written and the server was working on it. Before that
    (ConnectTimeout, ConnectError, PoolTimeout), nothing was sent; a WriteTimeout/WriteError cut the upload
    short, and Telegram doesn't act on an incomplete request. A ReadError or RemoteProtocolError ("server
    disconnected") mostly means a pooled connection the server had already closed, so the request was never
    read: resending is the better bet there.
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, httpx.ReadTimeout):
            return True
        cause = cause.__cause__
    return False


async def with_retries(
    action: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str, *, resend_if_unsure: bool = True
) -> T:
    """Run one Bot API call, retrying flood control and transient network errors.

    With `resend_if_unsure=False` (uploads), a call that may have reached Telegram isn't made again: it
    raises `MaybeDeliveredError` instead.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return await action()
        except RetryAfter as error:
            wait = retry_after_seconds(error)
            if attempt == policy.attempts or wait > policy.max_retry_after_s:
                raise
            log.warning("%s: flood control, retrying in %.0f s", what, wait)
            await asyncio.sleep(wait)
        except BadRequest:
            raise  # a NetworkError subclass, but the same request would fail the same way
        except NetworkError as error:  # TimedOut included; a 5xx arrives as a NetworkError too
            if not resend_if_unsure and may_have_arrived(error):
                raise MaybeDeliveredError(f"no answer after the request was sent ({error})") from error
            if attempt == policy.attempts:
                raise
            wait = policy.backoff_s * 2 ** (attempt - 1)
            log.warning("%s failed (%s), retrying in %.1f s", what, error, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


@dataclass(frozen=True)
class UploadTimeouts:
    """Per-request timeouts for uploads, longer than for other calls: a voice note can be up to 1 MB on a slow
    uplink, and Telegram answers only once it has stored the file."""

    write_s: float = 120.0
    read_s: float = 60.0


class Replier:
    """Sends to one chat, quoting the message it answers (if that was deleted, the answer still goes)."""

    def __init__(
        self,
        bot: Bot,
        chat_id: int,
        reply_to: int | None,
        policy: RetryPolicy,
        uploads: UploadTimeouts = UploadTimeouts(),  # frozen: one shared default is safe
    ) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.reply_to = reply_to
        self.policy = policy
        self.uploads = uploads
        self.voice_forbidden = False  # found out during this turn: send audio files or text instead
        self.audio_forbidden = False

    def _quote(self) -> ReplyParameters | None:
        if self.reply_to is None:
            return None
        return ReplyParameters(self.reply_to, allow_sending_without_reply=True)

    async def text(self, text: str, *, markup: InlineKeyboardMarkup | None = None) -> Message | None:
        """Send `text` (split if long; the buttons go with the last piece). Returns the last message sent."""
        sent = None
        pieces = split_text(text, MessageLimit.MAX_TEXT_LENGTH)
        for number, piece in enumerate(pieces, 1):
            buttons = markup if number == len(pieces) else None

            def send(piece: str = piece, buttons: InlineKeyboardMarkup | None = buttons) -> Awaitable[Message]:
                return self.bot.send_message(self.chat_id, piece, reply_parameters=self._quote(), reply_markup=buttons)

            sent = await with_retries(send, self.policy, "sendMessage")
        return sent

    async def voice(self, ogg: bytes, seconds: float, caption: str | None, spoken: str | None = None) -> None:
        """Send a voice note; a caption too long for Telegram follows as a message instead.

        Where voice notes are forbidden (the user's privacy setting, or a group's rights) the audio goes as
        an audio file, or failing that `spoken` (the note's text) as a message, for the rest of this turn.
        """
        fits = caption is not None and len(caption) <= MessageLimit.CAPTION_LENGTH
        as_caption = caption if fits else None
        text = as_caption if caption else spoken  # what to write if no audio goes (a long caption follows anyway)
        if self.voice_forbidden:
            await self._audio_or_text(ogg, seconds, as_caption, text)
        else:

            def send() -> Awaitable[Message]:
                return self.bot.send_voice(self.chat_id, ogg, duration=max(1, round(seconds)), caption=as_caption,
                                           reply_parameters=self._quote(), filename="alan.ogg",
                                           **self._upload_timeouts())  # fmt: skip

            try:
                await self._upload(send, "sendVoice")
            except BadRequest as error:
                if not voice_forbidden(error):
                    raise
                log.info("voice notes are forbidden in chat %s (%s): sending audio instead", self.chat_id, error)
                self.voice_forbidden = True
                await self._audio_or_text(ogg, seconds, as_caption, text)
        if caption and not fits:
            await self.text(caption)

    async def _audio_or_text(self, ogg: bytes, seconds: float, caption: str | None, text: str | None) -> None:
        if not self.audio_forbidden:

            def send() -> Awaitable[Message]:
                return self.bot.send_audio(self.chat_id, ogg, duration=max(1, round(seconds)), caption=caption,
                                           reply_parameters=self._quote(), filename="alan.ogg",
                                           **self._upload_timeouts())  # fmt: skip

            try:
                await self._upload(send, "sendAudio")
                return
            except BadRequest as error:
                log.info("could not send audio to chat %s (%s): sending text instead", self.chat_id, error)
                self.audio_forbidden = True
        if text:
            await self.text(text)

    def _upload_timeouts(self) -> dict[str, float]:
        return {"write_timeout": self.uploads.write_s, "read_timeout": self.uploads.read_s}

    async def _upload(self, send: Callable[[], Awaitable[Message]], what: str) -> None:
        """Send an upload; one that most likely arrived although its answer didn't counts as sent."""
        try:
            await with_retries(send, self.policy, what, resend_if_unsure=False)
        except MaybeDeliveredError as error:
            # Telegram offers no way to check; a voice note twice is worse than the small chance of a gap.
            log.warning("%s to chat %s: %s; not sending it again", what, self.chat_id, error)

    async def edit(self, message: Message, text: str, *, markup: InlineKeyboardMarkup | None = None) -> None:
        """Change a message the bot sent (to replace its buttons with the outcome)."""

        def send() -> Awaitable[Message | bool]:
            return self.bot.edit_message_text(
                text, chat_id=message.chat_id, message_id=message.message_id, reply_markup=markup
            )

        try:
            await with_retries(send, self.policy, "editMessageText")
        except BadRequest as error:  # too old to edit, deleted: say it anew instead
            if not_modified(error):  # it already says this (a double tap): nothing to do
                return
            log.info("could not edit message %s (%s); sending instead", message.message_id, error)
            await self.text(text, markup=markup)


def voice_forbidden(error: BadRequest) -> bool:
    """Telegram's answer to a voice note where the user's privacy settings or a group's rights forbid them."""
    message = error.message.lower()
    return "voice_messages_forbidden" in message or "rights to send voice" in message


def not_modified(error: BadRequest) -> bool:
    return "message is not modified" in error.message.lower()


@contextlib.asynccontextmanager
async def chat_action(
    bot: Bot, chat_id: int, interval_s: float, action: ChatAction = ChatAction.RECORD_VOICE
) -> AsyncIterator[None]:
    """Show `action` ("recording voice…") in the chat for as long as the block runs.

    Telegram clears a chat action after 5 s or when the bot sends a message, so it is sent again every
    `interval_s`. It is only decoration: its failures are logged, never raised.
    """

    async def keep_alive() -> None:
        while True:
            try:
                await bot.send_chat_action(chat_id, action)
            except Exception as error:
                log.debug("chat action failed: %s", error)
            await asyncio.sleep(interval_s)

    task = asyncio.create_task(keep_alive(), name=f"chat-action-{chat_id}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
