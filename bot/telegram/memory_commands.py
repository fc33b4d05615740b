"""/memory on Telegram: what aLAN remembers about you (`/memory`), `forget N`, `clear` (asked first), `off`, `on`.

What is remembered is the person's own, so the list is shown only in a private chat: in a group, /memory says
where to ask, and the other actions answer without repeating a fact. Whatever writes takes its place in the
chat's turn line, like /reset, so it never lands in the middle of a turn being answered.
"""

from __future__ import annotations

import logging

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.ext import ContextTypes

from bot import memory_text
from bot.memory_text import TELEGRAM
from bot.telegram.common import TelegramServices, participant
from bot.telegram.send import Replier
from engine.participant import Participant

log = logging.getLogger(__name__)

USAGE = (
    "Use /memory to see what I remember about you, /memory forget N to forget fact N of that list, "
    "/memory clear to forget it all, and /memory off or /memory on to stop or start my remembering."
)
ONLY_IN_PRIVATE = (
    "What I remember about you is yours: I only show it in a private chat. Open a chat with @{username} and send "
    "/memory there."
)


class MemoryCommands:
    def __init__(self, services: TelegramServices) -> None:
        self.services = services

    async def memory(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        assert message is not None and update.effective_user is not None
        replier = self.services.replier(context.bot, message)
        who = participant(update.effective_user, message.chat)
        args = [arg.lower() for arg in context.args or []]
        action = args[0] if args else "list"
        if action == "list" and len(args) <= 1:
            await self._list(context, replier, who)
        elif action == "forget" and len(args) == 2 and args[1].isdigit():
            await self._forget(message, replier, who, int(args[1]))
        elif action == "clear" and len(args) == 1:
            await self._ask_to_clear(message, replier, who, update.effective_user.id)
        elif action in ("off", "on") and len(args) == 1:
            await self._switch(message, replier, who, action == "on")
        else:
            await replier.text(USAGE)

    async def _list(self, context: ContextTypes.DEFAULT_TYPE, replier: Replier, who: Participant) -> None:
        if who.shared:  # a group: everyone there would read it
            await replier.text(ONLY_IN_PRIVATE.format(username=context.bot.username))
            return
        listing = await self.services.conversation.memory(who)
        await replier.text(memory_text.listing_text(listing, TELEGRAM))

    async def _forget(self, message: Message, replier: Replier, who: Participant, number: int) -> None:
        async def forget() -> str:
            return await self.services.conversation.forget_fact(who, number)

        # A wrong number is a `BadInputError`: the guard tells its message.
        text = await self.services.in_turn(message.chat_id, replier, forget)
        await replier.text(memory_text.forgotten(None if who.shared else text))

    async def _switch(self, message: Message, replier: Replier, who: Participant, enabled: bool) -> None:
        async def switch() -> None:
            await self.services.conversation.set_memory_enabled(who, enabled)

        await self.services.in_turn(message.chat_id, replier, switch)
        await replier.text(memory_text.switched(enabled, TELEGRAM))

    async def _ask_to_clear(self, message: Message, replier: Replier, who: Participant, uid: int) -> None:
        count = len((await self.services.conversation.memory(who)).facts)
        if not count:  # nothing to lose: no question (a summary of older talks, if any, goes too)
            await self._clear(message.chat_id, replier, who)
            await replier.text(memory_text.cleared(0))
            return
        buttons = InlineKeyboardMarkup(
            [
                [InlineKeyboardButton("Yes, forget it all", callback_data=f"memory:clear:{uid}")],
                [InlineKeyboardButton("No, keep it", callback_data=f"memory:keep:{uid}")],
            ]
        )
        await replier.text(memory_text.clear_question(None if who.shared else count), markup=buttons)

    async def _clear(self, chat_id: int, replier: Replier, who: Participant) -> int:
        async def clear() -> int:
            return await self.services.conversation.clear_memory(who)

        return await self.services.in_turn(chat_id, replier, clear)

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE, prompt: Message, rest: str) -> None:
        """`memory:clear|keep:<user id>`, under the question `/memory clear` asked."""
        answered = await self.services.asker_answered(update, context, prompt, rest)
        if answered is None:
            return
        answer, user, replier = answered
        if answer != "clear":
            await replier.edit(prompt, "Nothing was forgotten.")
            return
        who = participant(user, prompt.chat)
        count = await self._clear(prompt.chat_id, replier, who)
        log.info("memory of a Telegram user cleared on request")
        await replier.edit(prompt, memory_text.cleared(None if who.shared else count))
