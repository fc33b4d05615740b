"""`/link`, `/link CODE` and `/unlink` on Telegram, and the button that confirms a link.

A code is a secret: it is only shown in a private chat with the bot. `/link CODE` shows whose code it is and links
only when the person presses "Link" (their account's second step, after asking for the code on the other one).
"""

from __future__ import annotations

import logging

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import ChatType
from telegram.ext import ContextTypes

from bot.link_text import code_message, linked_message, offer_message, status_line, unlinked_message
from bot.telegram.common import TelegramServices, answer_press, participant
from bot.telegram.send import Replier
from engine.errors import TurnError
from engine.store.links import normalise

log = logging.getLogger(__name__)

PRIVATE_ONLY = "Link codes are private: send /link to me in a private chat."
VOIDED = (
    "Link codes are private, and everyone here could read that one, so it no longer works. Ask for a new code "
    "with /link on your other account, and send it to me in a private chat."
)
UNLINK_PRIVATE = "Send /unlink to me in a private chat."


class LinkCommands:
    def __init__(self, services: TelegramServices) -> None:
        self.services = services

    async def link(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message, user = update.effective_message, update.effective_user
        assert message is not None and user is not None
        replier = self.services.replier(context.bot, message)
        if message.chat.type != ChatType.PRIVATE:
            if context.args:  # a code read by the whole group: nobody there may use it
                await self.services.conversation.void_link_code("".join(context.args))
                await replier.text(VOIDED)
            else:
                await replier.text(PRIVATE_ONLY)
            return
        who = participant(user, message.chat)
        conversation = self.services.conversation
        if not context.args:
            code = await conversation.link_code(who)
            status = status_line(await conversation.linked_accounts(who))
            await replier.text(code_message(code, "Discord", "/link") + (f"\n\n{status}" if status else ""))
            return
        code = normalise("".join(context.args))[:20]  # the button carries it: Telegram allows 64 bytes
        account = await conversation.link_offer(who, code)  # a wrong code: LinkError, told by the guard
        buttons = InlineKeyboardMarkup(
            [[InlineKeyboardButton("Link", callback_data=f"link:yes:{code[:40]}"),
              InlineKeyboardButton("Cancel", callback_data="link:no:")]]
        )  # fmt: skip
        await replier.text(offer_message(account), markup=buttons)

    async def unlink(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message, user = update.effective_message, update.effective_user
        assert message is not None and user is not None
        replier = self.services.replier(context.bot, message)
        if message.chat.type != ChatType.PRIVATE:  # the answer names the linked accounts
            await replier.text(UNLINK_PRIVATE)
            return
        accounts = await self.services.conversation.unlink(participant(user, message.chat))
        await replier.text(unlinked_message(accounts))

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE, rest: str) -> None:
        """`link:yes:<code>` or `link:no:`, pressed under an offer in a private chat."""
        query, user = update.callback_query, update.effective_user
        assert query is not None and user is not None
        prompt = query.message
        if not isinstance(prompt, Message) or prompt.chat.type != ChatType.PRIVATE:
            await answer_press(query, "This button has expired.", show_alert=True)
            return
        answer, _, code = rest.partition(":")
        replier = Replier(context.bot, prompt.chat_id, None, self.services.options.retry)
        if answer != "yes":
            await answer_press(query)
            await replier.edit(prompt, "Nothing was linked.")
            return
        try:
            account = await self.services.conversation.link(participant(user, prompt.chat), code)
        except TurnError as error:  # expired meanwhile, used, or too many tries: said where the button was
            await answer_press(query)
            await replier.edit(prompt, str(error))
            return
        await answer_press(query, "Linked")
        await replier.edit(prompt, linked_message(account))
