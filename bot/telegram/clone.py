"""The /clone conversation: a clip, its transcript checked by the user, their consent, a stored voice.

    /clone [NAME] (replying to a voice note, or followed by one)
      → "I heard: …"      [That's right] [Cancel]   (or the user sends the exact words as text)
      → consent statement  [I confirm …]  [Cancel]
      → voice saved under NAME (default "my voice") and made active.

CSM copies a voice best when the transcript is exactly what is said, hence the check. The state lives in
memory per (chat, user) and expires after `clone_timeout_s`: a restart only means starting again. By webhook,
with several processes, the chat stays with the process that keeps it until then (`TelegramServices.keeps_state`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import ChatAction, ChatType
from telegram.ext import ContextTypes

from bot.telegram.common import TelegramServices, answer_press, participant
from bot.telegram.lane_services import ChatLostError
from bot.telegram.media import NOT_AUDIO, download, find_audio
from bot.telegram.send import Replier, chat_action
from engine.errors import BadInputError, StorageUnavailableError, TurnError, VoiceNameTakenError
from engine.participant import Participant
from engine.visible_text import visible_text
from engine.voices import CONSENT_STATEMENT, EMPTY_TRANSCRIPT, MAX_UPLOAD_SECONDS, CloneDraft, check_voice_name

log = logging.getLogger(__name__)

DEFAULT_NAME = "my voice"
MAX_TRANSCRIPT_CHARS = 1000
ASK_FOR_CLIP = (
    "Let's clone a voice. Send me a voice note or an audio file of one person speaking clearly for 10–30 "
    "seconds, with little background noise. Only clone your own voice, or one you have permission to use."
)
STILL_WAITING = "I'm waiting for a voice note to clone. Send one, or tap Cancel."
# In groups the bot sees only messages meant for it (privacy mode): replies to it, mentions and commands.
IN_GROUP = " (Here in the group, send it as a reply to this message, so that I get it.)"
EXPIRED = "This has expired: start again with /clone."
NOT_YOURS = "Only the person cloning their voice can press this."


@dataclass
class CloneSession:
    user_id: int
    token: str  # in the buttons' callback data, so an old prompt's buttons can't act on a new session
    name: str | None  # None: "my voice", or the next free "my voice N"
    expires: float
    stage: Literal["clip", "transcript", "consent"] = "clip"
    draft: CloneDraft | None = None
    transcript: str | None = None
    owner: int | None = None  # the account it was begun for (`Conversation.clone_owner`)


def _buttons(*rows: tuple[str, str]) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(label, callback_data=data)] for label, data in rows])


class CloneFlow:
    def __init__(self, services: TelegramServices) -> None:
        self.services = services
        self._sessions: dict[tuple[int, int], CloneSession] = {}
        self._saved: deque[str] = deque(maxlen=100)  # tokens of sessions consented to, for double taps
        services.keeps_state_with(self.in_progress)

    # --- state ---

    def session(self, chat_id: int, user_id: int) -> CloneSession | None:
        now = time.monotonic()
        for key in [key for key, session in self._sessions.items() if session.expires < now]:
            del self._sessions[key]
        return self._sessions.get((chat_id, user_id))

    def in_progress(self, chat: str) -> bool:
        """Whether someone's clone in this chat is under way (the chat as `chat_lanes.lane_key` names it)."""
        now = time.monotonic()
        return any(str(chat_id) == chat and s.expires >= now for (chat_id, _), s in self._sessions.items())

    def forget_user(self, user_id: int) -> None:
        for key in [key for key in self._sessions if key[1] == user_id]:
            del self._sessions[key]

    def wants(self, message: Message, addressed: bool) -> bool:
        """Whether this message belongs to the user's clone in progress rather than to the conversation."""
        if message.from_user is None:
            return False
        session = self.session(message.chat_id, message.from_user.id)
        if session is None:
            return False
        is_command = bool(message.text and message.text.startswith("/"))
        if message.chat.type != ChatType.PRIVATE and not addressed:
            return False  # in a group, what isn't a reply to the bot (or mentions it) is for the others
        if session.stage == "clip":  # the clip; anything else said to the bot gets a reminder
            return find_audio(message) is not None or (addressed and not is_command)
        return session.stage == "transcript" and bool(message.text) and not is_command

    # --- steps ---

    async def start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/clone [NAME]: on a replied-to clip at once, or wait for the next one."""
        message, user = update.effective_message, update.effective_user
        assert message is not None and user is not None
        name = check_voice_name(" ".join(context.args or [])) if context.args else None
        who = participant(user, message.chat)
        if name is not None and await self.services.conversation.voice_name_taken(who, name):
            raise BadInputError(f"You already have a voice called “{name}”: choose another name, or see /voices.")
        expires = time.monotonic() + self.services.options.clone_timeout_s
        session = CloneSession(user.id, secrets.token_hex(4), name, expires)
        session.owner = await self.services.conversation.clone_owner(who)
        self._sessions[(message.chat_id, user.id)] = session
        replied = message.reply_to_message
        if find_audio(replied) is not None:
            assert replied is not None
            await self._take_clip(context, message, replied, session)
            return
        if replied is not None and replied.document is not None:
            raise BadInputError(NOT_AUDIO)
        ask = ASK_FOR_CLIP + (IN_GROUP if message.chat.type != ChatType.PRIVATE else "")
        await self.services.replier(context.bot, message).text(ask, markup=self._cancel_only(session))

    async def cancel(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/cancel: drop this user's clone in progress."""
        message, user = update.effective_message, update.effective_user
        assert message is not None and user is not None
        cancelled = self._sessions.pop((message.chat_id, user.id), None) is not None
        await self.services.replier(context.bot, message).text(
            "Cancelled: no voice was saved." if cancelled else "There's nothing to cancel."
        )

    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message, user = update.effective_message, update.effective_user
        assert message is not None and user is not None
        session = self.session(message.chat_id, user.id)
        if session is None:
            return
        replier = self.services.replier(context.bot, message)
        if session.stage == "clip":
            if find_audio(message) is None:
                await replier.text(NOT_AUDIO if message.document else STILL_WAITING, markup=self._cancel_only(session))
                return
            await self._take_clip(context, message, message, session)
        elif session.stage == "transcript" and message.text:
            words = re.sub(rf"@{re.escape(context.bot.username)}\b", "", message.text, flags=re.IGNORECASE)
            transcript = visible_text(words)
            if not transcript:  # only invisible characters: say so rather than wait in silence
                raise BadInputError(EMPTY_TRANSCRIPT)
            if len(transcript) > MAX_TRANSCRIPT_CHARS:
                raise BadInputError(
                    "That transcript is too long for a 30-second clip: send just the words in the clip."
                )
            session.transcript = transcript
            await self._ask_consent(replier, session)

    async def _take_clip(
        self, context: ContextTypes.DEFAULT_TYPE, command: Message, clip: Message, session: CloneSession
    ) -> None:
        attachment = find_audio(clip)
        assert attachment is not None
        services = self.services
        replier = services.replier(context.bot, command)

        async def prepare() -> CloneDraft:
            async with chat_action(
                context.bot, command.chat_id, services.options.chat_action_every_s, ChatAction.TYPING
            ):
                data = await download(
                    context.bot,
                    attachment,
                    max_seconds=MAX_UPLOAD_SECONDS,
                    max_bytes=services.max_bytes,
                    policy=services.options.retry,
                )
                return await services.conversation.prepare_clone(data)

        try:
            # Through the turn scheduler: transcribing and the length check use the speech models.
            draft = await services.in_turn(command.chat_id, replier, prepare)
        except TurnError as error:
            await replier.text(f"{error} Send another clip, or tap Cancel.", markup=self._cancel_only(session))
            return
        if self._sessions.get((command.chat_id, session.user_id)) is not session:
            return  # cancelled, expired or restarted while the clip was being prepared
        session.draft, session.stage = draft, "transcript"
        self._touch(session)
        how = "reply to this message with" if command.chat.type != ChatType.PRIVATE else "send me"
        await replier.text(
            f"Here's what I heard:\n\n“{draft.transcript.strip()}”\n\nIf that is exactly what is said, tap "
            f"“That's right”. If not, {how} the exact words: the closer the transcript, the better the voice.",
            markup=_buttons(
                ("✅ That's right", f"clone:ok:{session.token}"), ("Cancel", f"clone:cancel:{session.token}")
            ),
        )

    async def _ask_consent(self, replier: Replier, session: CloneSession) -> None:
        session.stage = "consent"
        self._touch(session)
        await replier.text(
            f"One last thing. Please confirm:\n\n“{CONSENT_STATEMENT}”",
            markup=_buttons(
                ("✅ I confirm: my voice, or I have permission", f"clone:consent:{session.token}"),
                ("Cancel", f"clone:cancel:{session.token}"),
            ),
        )

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE, action: str, token: str) -> None:
        query = update.callback_query
        assert query is not None and isinstance(query.message, Message)
        prompt = query.message
        session = next((s for s in self._sessions.values() if s.token == token), None)
        if session is None or self.session(prompt.chat_id, session.user_id) is not session:
            if token in self._saved:  # a second tap on the consent button, already at work
                await answer_press(query)
            else:
                await answer_press(query, EXPIRED, show_alert=True)
            return
        if query.from_user.id != session.user_id:
            await answer_press(query, NOT_YOURS, show_alert=True)
            return
        # The state changes before anything is awaited, so that a double tap finds it done and is ignored.
        replier = Replier(context.bot, prompt.chat_id, None, self.services.options.retry)
        if action == "cancel":
            del self._sessions[(prompt.chat_id, session.user_id)]  # pressed again, it has expired
            await answer_press(query)
            await replier.edit(prompt, "Cancelled: no voice was saved.")
        elif action == "ok" and session.stage == "transcript" and session.draft is not None:
            session.transcript, session.stage = session.draft.transcript, "consent"
            await answer_press(query)
            await replier.edit(prompt, f"Transcript confirmed:\n\n“{session.transcript.strip()}”")
            await self._ask_consent(replier, session)
        elif action == "consent" and session.stage == "consent":
            del self._sessions[(prompt.chat_id, session.user_id)]  # one save per consent, even if pressed twice
            self._saved.append(session.token)
            await answer_press(query)
            await replier.edit(prompt, f"Consent recorded:\n\n“{CONSENT_STATEMENT}”")
            await self._save(update, context, replier, session)
        else:
            log.debug("ignored clone button %s at stage %s", action, session.stage)
            await answer_press(query)

    async def _save(
        self, update: Update, context: ContextTypes.DEFAULT_TYPE, replier: Replier, session: CloneSession
    ) -> None:
        assert update.effective_user is not None and update.effective_chat is not None
        assert session.draft is not None and session.transcript is not None
        draft, transcript, services = session.draft, session.transcript, self.services
        who = participant(update.effective_user, update.effective_chat)

        async def save() -> str:
            async with chat_action(
                context.bot, replier.chat_id, services.options.chat_action_every_s, ChatAction.TYPING
            ):
                name = session.name or await self._free_name(who)
                try:
                    await services.conversation.save_clone(who, name, draft, transcript, owner=session.owner)
                except VoiceNameTakenError as error:
                    raise BadInputError(f"{error} Start again with /clone and another name.") from error
                return name

        try:
            name = await services.in_turn(replier.chat_id, replier, save)
        except TurnError as error:
            await replier.text(f"{error} Start again with /clone when you're ready.")
            return
        except ChatLostError:
            # Its update waits in the inbox to be handled again, by whichever process holds the chat next (this
            # one, most likely: see `keeps_state`): the consent stays pending for that, rather than "expired".
            # Not if the person was forgotten meanwhile: their clip is not kept in memory one moment more.
            if await self._still_theirs(who, session):
                self._sessions.setdefault((replier.chat_id, session.user_id), session)
                with contextlib.suppress(ValueError):
                    self._saved.remove(session.token)
            raise
        await replier.text(f"Saved “{name}”. From now on I answer you in this voice. Use /voices to switch.")

    async def _still_theirs(self, who: Participant, session: CloneSession) -> bool:
        """Whether the account the clone was begun for is still there (no /forget since, in any process)."""
        if session.owner is None:
            return False
        try:
            return await self.services.conversation.still_clone_owner(who, session.owner)
        except StorageUnavailableError:
            return False

    async def _free_name(self, who: Participant) -> str:
        taken = {voice.name for voice in await self.services.conversation.voices(who)}
        for number in range(1, 1000):
            name = DEFAULT_NAME if number == 1 else f"{DEFAULT_NAME} {number}"
            if name not in taken:
                return name
        raise BadInputError("You have a great many voices already: delete one, or name this one with /clone NAME.")

    def _touch(self, session: CloneSession) -> None:
        """Each step the user takes gives them the full timeout again for the next."""
        session.expires = time.monotonic() + self.services.options.clone_timeout_s

    @staticmethod
    def _cancel_only(session: CloneSession) -> InlineKeyboardMarkup:
        return _buttons(("Cancel", f"clone:cancel:{session.token}"))
