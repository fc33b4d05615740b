"""The slash commands other than /clone and /memory (memory_commands.py), and the inline buttons of all but /clone's
(/voices choices, /forget confirmation; /memory clear's are passed on)."""

from __future__ import annotations

import logging

from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.ext import ContextTypes

from bot.telegram.clone import CloneFlow
from bot.telegram.common import TelegramServices, answer_press, participant
from bot.telegram.link_commands import LinkCommands
from bot.telegram.memory_commands import MemoryCommands
from bot.telegram.send import Replier

log = logging.getLogger(__name__)

COMMANDS = [
    BotCommand("start", "What aLAN is and what it stores"),
    BotCommand("help", "How to talk with aLAN"),
    BotCommand("clone", "Clone a voice from a voice note: /clone [NAME]"),
    BotCommand("voices", "List and choose your voices"),
    BotCommand("voice", "Answer me in one of my voices: /voice NAME"),
    BotCommand("text", "Also send the answers as text: /text on|off"),
    BotCommand("memory", "What I remember about you: /memory [forget N|clear|off|on]"),
    BotCommand("link", "Be one person to me on Telegram and Discord: /link [CODE]"),
    BotCommand("unlink", "Stop sharing voices and memory with your linked account"),
    BotCommand("reset", "Forget our conversation (keeps your voices and my memory)"),
    BotCommand("forget", "Delete everything stored about you"),
]

START = """Hi {name}! I'm aLAN, a voice companion. Send me a voice note, or just type, and I'll answer with \
voice notes, remembering what we talked about.

What I store: what you say to me and my answers (as text and audio), so that I remember our conversation; \
short facts you tell me about yourself, so that I remember them in later conversations (see them with /memory, \
or turn that off with /memory off); your settings; and any voice you clone with /clone (the clip, its transcript \
and your consent). It stays on the server that runs me.

/reset clears our conversation here (your voices and what I remember stay). /forget deletes everything I have \
stored about you. /help shows all I can do."""

HELP = """Talk to me with voice notes, audio files (MP3, M4A, WAV, OGG), video notes or text: I answer with \
voice notes.

/clone [NAME] — make a voice from a clip of you speaking (reply to a voice note, or send one after)
/voices — list your voices and pick one
/voice NAME — answer me in that voice
/text on|off — also send my answers (and what I heard) as text
/memory — what I remember about you; /memory forget N, /memory clear, /memory off, /memory on
/link — get a code to link this account with your Discord one (send /link CODE there); /link CODE — use one
/unlink — stop sharing voices and memory with your linked account
/reset — forget our conversation here, keep your voices and what I remember
/forget — delete everything I have stored about you
/start — what I am and what I store

In a group, mention me (@{username}) or reply to one of my messages."""

FORGET_QUESTION = (
    "This deletes everything I have stored about you: our conversations everywhere, what I remember about you, "
    "your cloned voices and your settings. It can't be undone. Are you sure?"
)
FORGOTTEN = "Done: I deleted everything I had stored about you. If you talk to me again, I start from scratch."


class Commands:
    def __init__(self, services: TelegramServices, clones: CloneFlow) -> None:
        self.services = services
        self.clones = clones
        self.memories = MemoryCommands(services)
        self.links = LinkCommands(services)

    def _where(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> tuple[Message, Replier]:
        message = update.effective_message
        assert message is not None
        return message, self.services.replier(context.bot, message)

    async def start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        _, replier = self._where(update, context)
        user = update.effective_user
        await replier.text(START.format(name=user.first_name if user else "there"))

    async def help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        _, replier = self._where(update, context)
        await replier.text(HELP.format(username=context.bot.username))

    async def unknown(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message, replier = self._where(update, context)
        command = (message.text or "").split()[0].split("@")[0]
        await replier.text(f"I don't know {command}. Here's what I can do: /help")

    async def text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message, replier = self._where(update, context)
        assert update.effective_user is not None
        who = participant(update.effective_user, message.chat)
        choice = (context.args or [""])[0].lower()
        if choice in ("on", "off"):
            await self.services.conversation.set_reply_with_text(who, choice == "on")
            await replier.text(
                "I'll send my answers as text too, and what I heard."
                if choice == "on"
                else "From now on I answer with voice notes only."
            )
            return
        state = "on" if await self.services.conversation.replies_with_text(who) else "off"
        await replier.text(f"Text with my answers is {state}. Use /text on or /text off to change it.")

    async def reset(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message, replier = self._where(update, context)
        assert update.effective_user is not None
        who = participant(update.effective_user, message.chat)

        async def reset() -> int:
            return await self.services.conversation.reset(who)

        # In the queue, so a turn still being answered is stored before it is cleared.
        count = await self.services.in_turn(message.chat_id, replier, reset)
        here = "this group's conversation" if who.shared else "our conversation here"
        kept = "Your voices, and what I remember about you, are kept."
        await replier.text(f"Done: I've forgotten {here} ({count} messages). {kept}")

    async def forget(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        _, replier = self._where(update, context)
        assert update.effective_user is not None
        uid = update.effective_user.id
        buttons = InlineKeyboardMarkup(
            [
                [InlineKeyboardButton("Yes, delete everything", callback_data=f"forget:yes:{uid}")],
                [InlineKeyboardButton("No, keep it", callback_data=f"forget:no:{uid}")],
            ]
        )
        await replier.text(FORGET_QUESTION, markup=buttons)

    async def voices(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message, replier = self._where(update, context)
        assert update.effective_user is not None
        text, markup = await self._voice_menu(update, message)
        await replier.text(text, markup=markup)

    async def voice(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not context.args:
            await self.voices(update, context)
            return
        message, replier = self._where(update, context)
        assert update.effective_user is not None
        who = participant(update.effective_user, message.chat)
        voice = await self.services.conversation.use_voice(who, " ".join(context.args))
        await replier.text(f"From now on I answer you in the voice “{voice.name}”.")

    async def _voice_menu(self, update: Update, message: Message) -> tuple[str, InlineKeyboardMarkup | None]:
        assert update.effective_user is not None
        listing = await self.services.conversation.voices(participant(update.effective_user, message.chat))
        if not listing:
            return "You have no voices of your own yet. Send /clone to make one from a voice note.", None
        rows = [
            [InlineKeyboardButton(f"{'✓ ' if voice.active else ''}{voice.name}", callback_data=f"voice:{voice.id}")]
            for voice in listing
        ]
        return "Your voices (✓ = the one I answer you in here). Tap one to switch:", InlineKeyboardMarkup(rows)

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Inline buttons: `voice:<id>`, `forget:yes|no:<user id>`, `memory:clear|keep:<user id>`, `clone:…`."""
        query = update.callback_query
        assert query is not None
        kind, _, rest = (query.data or "").partition(":")
        if kind == "clone":
            action, _, token = rest.partition(":")
            await self.clones.on_button(update, context, action, token)
        elif kind == "voice" and rest.isdigit() and isinstance(query.message, Message):
            await self._choose_voice(update, context, query.message, int(rest))
        elif kind == "forget" and isinstance(query.message, Message):
            await self._forget(update, context, query.message, rest)
        elif kind == "memory" and isinstance(query.message, Message):
            await self.memories.on_button(update, context, query.message, rest)
        elif kind == "link":
            await self.links.on_button(update, context, rest)
        else:
            await answer_press(query, "This button has expired.", show_alert=True)

    async def _choose_voice(
        self, update: Update, context: ContextTypes.DEFAULT_TYPE, menu: Message, voice_id: int
    ) -> None:
        query, user = update.callback_query, update.effective_user
        assert query is not None and user is not None
        who = participant(user, menu.chat)
        voice = next((v for v in await self.services.conversation.voices(who) if v.id == voice_id), None)
        if voice is None:
            await answer_press(query, "That isn't one of your voices (or it was deleted).", show_alert=True)
            return
        await self.services.conversation.use_voice(who, voice.name)
        await answer_press(query, f"Now speaking as “{voice.name}”")
        text, markup = await self._voice_menu(update, menu)
        await Replier(context.bot, menu.chat_id, None, self.services.options.retry).edit(menu, text, markup=markup)

    async def _forget(self, update: Update, context: ContextTypes.DEFAULT_TYPE, prompt: Message, rest: str) -> None:
        answered = await self.services.asker_answered(update, context, prompt, rest)
        if answered is None:
            return
        answer, user, replier = answered
        if answer != "yes":
            await replier.edit(prompt, "Nothing was deleted.")
            return
        who = participant(user, prompt.chat)

        async def forget() -> None:
            await self.services.conversation.forget(who)

        # In the queue: a turn of this chat still running would otherwise store its reply after the deletion.
        await self.services.in_turn(prompt.chat_id, replier, forget)
        self.clones.forget_user(user.id)
        await replier.edit(prompt, FORGOTTEN)
