"""The conversation's settings and clearing: `/text`, `/listen`, `/reset`, `/forget`, from any platform.

A mixin of `Conversation`, kept apart so that each module reads in one sitting; it needs the conversation's store,
its synthesizer (whose caches `/forget` empties) and its way of finding the person.
"""

from __future__ import annotations

import asyncio
import logging

from engine.addressing import ListenMode
from engine.memory import MemoryKeeper
from engine.participant import Participant
from engine.speech_synthesizer import SpeechSynthesizer
from engine.store.models import User
from engine.store.repository import Store

log = logging.getLogger(__name__)


class ConversationSettings:
    _store: Store
    _tts: SpeechSynthesizer
    _keeper: MemoryKeeper

    async def _user(self, who: Participant) -> User:
        raise NotImplementedError

    async def replies_with_text(self, who: Participant) -> bool:
        """Whether this person also gets the reply (and what was heard) as text: `/text on|off` (on by default)."""
        # find_user: asking must not create someone (who may have used /forget).
        user = await asyncio.to_thread(self._store.find_user, who.platform, who.user_id)
        return True if user is None else user.reply_with_text

    async def set_reply_with_text(self, who: Participant, enabled: bool) -> None:
        user = await self._user(who)
        await asyncio.to_thread(self._store.set_reply_with_text, user.id, enabled)

    async def reset(self, who: Participant) -> int:
        """Forget this conversation (here), keep the user's voices. Returns how many turns were deleted.

        In a shared scope that is the group's conversation: everyone's turns there.
        """
        if who.shared:
            return await asyncio.to_thread(self._store.clear_scope, who.scope)
        user = await self._user(who)
        return await asyncio.to_thread(self._store.clear_conversation, user.id, who.scope)

    async def listen_mode(self, scope: str) -> ListenMode | None:
        """The scope's `/listen` mode, None where nobody set one (a stored value no longer known counts as unset)."""
        stored = await asyncio.to_thread(self._store.listen_mode, scope)
        try:
            return ListenMode(stored) if stored is not None else None
        except ValueError:
            log.warning("scope %s has an unknown listen mode %r: using the default", scope, stored)
            return None

    async def set_listen_mode(self, scope: str, mode: ListenMode) -> None:
        await asyncio.to_thread(self._store.set_listen_mode, scope, mode.value)

    async def knows(self, who: Participant) -> bool:
        """Whether anything is stored about this person (asking stores nothing)."""
        return await asyncio.to_thread(self._store.find_user, who.platform, who.user_id) is not None

    async def forget(self, who: Participant) -> bool:
        """Delete everything stored about this user: voices, conversations, settings. False: nothing was stored."""
        user = await asyncio.to_thread(self._store.find_user, who.platform, who.user_id)
        if user is None:
            return False
        self._keeper.forget_pending(user.person_id)  # their words waiting to be remembered go too
        await asyncio.to_thread(self._store.forget_user, user.id)
        # Caches are rebuilt on demand; emptying them is the simple way to be sure nothing of theirs stays.
        self._tts.forget()
        log.info("forgot user %s on request", user.id)
        return True
