"""aLAN on Telegram: voice notes (and text) in, voice notes out.

`serve(settings, conversation, scheduler)` runs until cancelled: long polling by default, a webhook when
`ALAN_TELEGRAM_WEBHOOK_URL` is set. Updates are handled concurrently, and each turn takes its place in the
`TurnScheduler` (one at a time per chat, in order; chats in parallel). Every handler is guarded, so a bad file,
an engine error or a Bot API failure gets an answer in the chat and the bot goes on with the next update.

The other modules of `bot.telegram` are listed in its `__init__`.
"""

from __future__ import annotations

import asyncio
import logging
import re

from telegram import Message, MessageEntity, Update
from telegram.constants import ChatType
from telegram.error import InvalidToken, NetworkError
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from alan.scheduler import SchedulerFullError, TurnScheduler
from alan.settings import Settings
from bot.telegram.clone import CloneFlow
from bot.telegram.commands import COMMANDS, Commands
from bot.telegram.common import TelegramOptions, TelegramServices, UpdateDropped, participant, say_quietly
from bot.telegram.lane_services import LaneServices
from bot.telegram.media import NOT_AUDIO, UNSUPPORTED, check_before_download, download, find_audio
from bot.telegram.recovery import follow_up_unanswered
from bot.telegram.send import chat_action, with_retries
from bot.telegram.turn import answer_turn
from bot.telegram.webhook import Webhook, start_webhook
from engine.conversation import Conversation
from engine.errors import TurnError

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message", "callback_query"]
GROUP_CHATS = (ChatType.GROUP, ChatType.SUPERGROUP)
REFUSAL = (
    "Sorry, I'm a private companion and only talk with people my owner has allowed. If you know them, ask "
    "them to add your Telegram user id: {user_id}."
)


class TelegramUnavailableError(Exception):
    """Telegram can't be used with these settings; the message says why (never with the token)."""


def command_target(message: Message) -> str | None:
    """The bot a leading /command names (`/start@somebot` → "somebot"); None without a command or a name."""
    for entity, text in message.parse_entities([MessageEntity.BOT_COMMAND]).items():
        if entity.offset == 0:
            _, _, target = text.partition("@")
            return target or None
    return None


def for_another_bot(message: Message, username: str) -> bool:
    """A command addressed to another bot by name: not ours to answer, in a group or a private chat."""
    target = command_target(message)
    return target is not None and target.lower() != username.lower()


def is_addressed(message: Message, bot_id: int, username: str) -> bool:
    """Whether a message is meant for the bot: always in a private chat; in groups, a mention or a reply.

    Never a command that names another bot (`/start@otherbot`), wherever it is sent.
    """
    if for_another_bot(message, username):
        return False
    if message.chat.type == ChatType.PRIVATE:
        return True
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and replied.from_user.id == bot_id:
        return True
    kinds = [MessageEntity.MENTION, MessageEntity.TEXT_MENTION, MessageEntity.BOT_COMMAND]
    found = {**message.parse_entities(kinds), **message.parse_caption_entities(kinds)}
    for entity, text in found.items():
        if entity.type == MessageEntity.TEXT_MENTION and entity.user is not None and entity.user.id == bot_id:
            return True
        if entity.type == MessageEntity.MENTION and text[1:].lower() == username.lower():
            return True
        # A command with no @bot suffix, in a group, is for every bot there; ours answers it too. (One naming
        # another bot was turned away above.)
        if entity.type == MessageEntity.BOT_COMMAND and entity.offset == 0:
            return True
    return False


def without_mention(text: str, username: str) -> str:
    return re.sub(rf"@{re.escape(username)}\b", "", text, flags=re.IGNORECASE).strip()


class Router:
    """The handlers for ordinary messages and the allowlist gate; commands live in `Commands`."""

    def __init__(self, services: TelegramServices, clones: CloneFlow) -> None:
        self.services = services
        self.clones = clones
        self.allowed = services.settings.telegram_allowed_user_ids

    async def gate(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Runs before every handler: drops what isn't from a person, refuses who isn't on the allowlist."""
        user = update.effective_user
        if user is None or (update.message is None and update.callback_query is None):
            raise ApplicationHandlerStop  # channel posts, edits: nothing aLAN answers
        if not self.allowed or user.id in self.allowed:
            return
        message = update.message
        if update.callback_query is not None or (
            message is not None and is_addressed(message, context.bot.id, context.bot.username)
        ):
            log.info("refused a Telegram user who is not on the allowlist")
            await self.services.tell(update, context, REFUSAL.format(user_id=user.id))
        raise ApplicationHandlerStop

    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.from_user is None:
            return
        addressed = is_addressed(message, context.bot.id, context.bot.username)
        if self.clones.wants(message, addressed):
            await self.clones.on_message(update, context)
            return
        if filters.StatusUpdate.ALL.check_update(update):
            return
        if not addressed:
            if message.chat.type in GROUP_CHATS:
                await self.overhear(context, message)
            return
        services = self.services
        replier = services.replier(context.bot, message)
        who = participant(message.from_user, message.chat)
        attachment = find_audio(message)
        if attachment is None and message.text is None:
            await replier.text(NOT_AUDIO if message.document else UNSUPPORTED)
            return
        if attachment is not None:  # refuse a too long or too large file at once, before it waits its turn
            check_before_download(
                attachment, max_seconds=services.settings.max_audio_seconds, max_bytes=services.max_bytes
            )
        text = without_mention(message.text, context.bot.username) if message.text is not None else None

        async def turn() -> None:
            async with chat_action(context.bot, message.chat_id, services.options.chat_action_every_s):
                audio = None
                if attachment is not None:
                    audio = await download(
                        context.bot,
                        attachment,
                        max_seconds=services.settings.max_audio_seconds,
                        max_bytes=services.max_bytes,
                        policy=services.options.retry,
                    )
                with_text = await services.conversation.replies_with_text(who)
                await answer_turn(
                    services.conversation,
                    who,
                    replier,
                    audio=audio,
                    text=text,
                    with_text=with_text,
                    follow_up_min_seconds=services.options.follow_up_min_seconds,
                )

        # Nothing above awaited: updates reach the queue in the order they arrived.
        await services.in_turn(message.chat_id, replier, turn)

    async def overhear(self, context: ContextTypes.DEFAULT_TYPE, message: Message) -> None:
        """Keep a group message that wasn't for aLAN in the group's conversation, unanswered and unacknowledged.

        (Which messages a bot receives in a group at all depends on its privacy mode: see the README.) It takes
        its place in the chat's line like a turn, so the conversation keeps the order in which things were said.
        Nothing is said in the group when one can't be kept: it wasn't said to aLAN. The log says why.
        """
        assert message.from_user is not None
        services = self.services
        who = participant(message.from_user, message.chat)
        attachment = find_audio(message)
        if attachment is None and message.text is None:
            return  # a photo, a sticker: nothing to keep

        async def keep() -> None:
            await services.may_store()  # its sender may have been forgotten while it waited in line
            if attachment is None:
                await services.conversation.overhear(who, text=message.text)
                return
            check_before_download(
                attachment, max_seconds=services.settings.max_audio_seconds, max_bytes=services.max_bytes
            )
            audio = await download(
                context.bot,
                attachment,
                max_seconds=services.settings.max_audio_seconds,
                max_bytes=services.max_bytes,
                policy=services.options.retry,
            )
            await services.conversation.overhear(who, audio=audio)

        async def keep_quietly() -> None:
            try:
                await keep()
            except TurnError as error:
                log.info("a message in group %s was not kept in its conversation: %s", message.chat_id, error)
            except UpdateDropped as dropped:
                log.info("%s: a message in group %s is not kept here", dropped, message.chat_id)
            except Exception:
                log.exception("keeping a message of group %s in its conversation failed", message.chat_id)

        try:
            # In line now, run in the background: the group's order is kept, and no update handler waits on it.
            services.track(services.scheduler.submit(str(message.chat_id), keep_quietly, light=True))
        except SchedulerFullError:
            if attachment is not None:  # transcribing waits for the speech models: this much queued, it is skipped
                log.info("group %s has too much waiting: a voice message was not kept", message.chat_id)
                return
            await keep_quietly()  # words cost nothing to keep: out of line rather than lost

    async def unknown_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE, commands: Commands) -> None:
        message = update.message
        if message is None:
            return
        if for_another_bot(message, context.bot.username):
            # python-telegram-bot's CommandHandler already skips these; they land here, and must stay unanswered.
            log.debug("ignored a command addressed to another bot")
            return
        if is_addressed(message, context.bot.id, context.bot.username):
            await commands.unknown(update, context)

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Last resort for errors outside the guarded handlers (the guard catches the rest)."""
        log.error("error while processing a Telegram update", exc_info=context.error)
        if isinstance(update, Update) and update.effective_message is not None:
            replier = self.services.replier(context.bot, update.effective_message)
            await say_quietly(replier, "Sorry, something went wrong on my side. Please try again.")


def build_application(settings: Settings, services: TelegramServices) -> Application:
    """The python-telegram-bot application with aLAN's handlers, pointed at `telegram_api_url`."""
    if settings.telegram_token is None:
        raise TelegramUnavailableError("TELEGRAM_TOKEN is not set")
    options = services.options
    api = settings.telegram_api_url
    application = (
        Application.builder()
        .token(settings.telegram_token.get_secret_value())
        .base_url(f"{api}/bot")
        .base_file_url(f"{api}/file/bot")
        .read_timeout(options.read_timeout_s)
        .connect_timeout(options.connect_timeout_s)
        .get_updates_read_timeout(options.read_timeout_s)  # PTB adds the long-poll time itself
        .concurrent_updates(64)  # turns are bounded and ordered by the TurnScheduler, not here
        .build()
    )
    clones = CloneFlow(services)
    commands = Commands(services, clones)
    router = Router(services, clones)
    guard = services.guard
    only_messages = filters.UpdateType.MESSAGE
    application.add_handler(TypeHandler(Update, router.gate), group=-1)
    handlers = {
        "start": commands.start,
        "help": commands.help,
        "clone": clones.start,
        "voices": commands.voices,
        "voice": commands.voice,
        "text": commands.text,
        "memory": commands.memories.memory,
        "link": commands.links.link,
        "unlink": commands.links.unlink,
        "reset": commands.reset,
        "forget": commands.forget,
        "cancel": clones.cancel,  # not in the menu: the buttons cancel, but people type it too
    }
    for name, callback in handlers.items():
        application.add_handler(CommandHandler(name, guard(callback), filters=only_messages))

    async def unknown(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await router.unknown_command(update, context, commands)

    application.add_handler(MessageHandler(filters.COMMAND & only_messages, guard(unknown)))
    application.add_handler(MessageHandler(only_messages, guard(router.on_message)))
    application.add_handler(CallbackQueryHandler(guard(commands.on_button)))
    application.add_error_handler(router.on_error)
    return application


async def serve(
    settings: Settings,
    conversation: Conversation,
    scheduler: TurnScheduler | None = None,
    *,
    options: TelegramOptions | None = None,
) -> None:
    """Run the Telegram bot until cancelled, its turns taking their go from `scheduler` (shared with the others)."""
    # By webhook, several processes may serve one bot: the updates go through the shared inbox (`chat_lanes`).
    kind = LaneServices if settings.telegram_webhook_url else TelegramServices
    services = kind(settings, conversation, options or TelegramOptions(), scheduler)
    application = build_application(settings, services)
    await _initialize(application, services.options)
    webhook: Webhook | None = None
    try:
        try:
            await with_retries(
                lambda: application.bot.set_my_commands(COMMANDS), services.options.retry, "setMyCommands"
            )
        except Exception as error:
            log.warning("could not register the Telegram command menu: %s", error)
        await application.start()
        if isinstance(services, LaneServices):
            # It follows up what was left unanswered itself, chat by chat, where no other process is answering.
            webhook = await start_webhook(application, services, settings, ALLOWED_UPDATES, services.options.retry)
        else:
            # Before the first update is taken: a follow-up goes ahead of anything new from its chat.
            await follow_up_unanswered(application.bot, services)
            assert application.updater is not None
            await application.updater.start_polling(
                timeout=services.options.poll_timeout_s,
                allowed_updates=ALLOWED_UPDATES,
                bootstrap_retries=-1,
                # PTB retries by itself; its default callback logs a full traceback for every network blip.
                error_callback=lambda error: log.warning("polling Telegram failed (%s); retrying", error),
            )
        log.info("Telegram: @%s is listening (%s)", application.bot.username, "webhook" if webhook else "long polling")
        await asyncio.Event().wait()  # until cancelled
    finally:
        await _stop(application, services, webhook)


async def _initialize(application: Application, options: TelegramOptions) -> None:
    """getMe and friends; retried while Telegram is unreachable, fatal if the token is refused."""
    delay = options.retry.backoff_s
    while True:
        try:
            await application.initialize()
            return
        except InvalidToken:
            # PTB's message contains the token itself: replace it.
            raise TelegramUnavailableError("Telegram refused TELEGRAM_TOKEN: check it with @BotFather.") from None
        except NetworkError as error:
            log.warning("Telegram is not reachable (%s); retrying in %.0f s", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)


async def _stop(application: Application, services: TelegramServices, webhook: Webhook | None) -> None:
    if webhook is not None:
        await webhook.cleanup()
    if application.updater is not None and application.updater.running:
        await application.updater.stop()
    if application.running:
        try:
            # Lets the answers in progress finish; past the grace period they are cancelled (what was said
            # of them is stored), so that a stop never waits on a long queue.
            await asyncio.wait_for(application.stop(), services.options.stop_grace_s)
        except TimeoutError:
            log.warning("Telegram stopped with answers still in progress")
    await services.close()
    await application.shutdown()
