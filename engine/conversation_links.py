"""One person, several accounts: `/link` and `/unlink`, from any platform.

A mixin of `Conversation`, kept apart so that each module reads in one sitting. `/link` on one account shows a
one-time code; `/link CODE` on the other shows whose code it is (platform and name) and links once the person
confirms: both sides took a step. Then voices, the active voice and memory are the person's; each conversation
stays in its chat. `/forget` from either account removes the person and every account.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from engine.participant import Participant
from engine.speech_synthesizer import SpeechSynthesizer
from engine.store.links import LinkStore
from engine.store.models import User
from engine.store.repository import Store

log = logging.getLogger(__name__)

PLATFORM_NAMES = {"telegram": "Telegram", "discord": "Discord", "local": "this machine"}


@dataclass(frozen=True)
class Account:
    """An account as a person is shown it: which platform, under which name."""

    platform: str
    name: str | None

    def __str__(self) -> str:
        where = PLATFORM_NAMES.get(self.platform, self.platform)
        return f"{self.name} on {where}" if self.name else f"your account on {where}"


def _account(user: User) -> Account:
    return Account(user.platform, user.display_name)


class ConversationLinks:
    _store: Store
    _tts: SpeechSynthesizer

    async def _user(self, who: Participant) -> User:
        raise NotImplementedError

    @property
    def _links(self) -> LinkStore:
        return LinkStore(self._store.sessions, retry_delays=self._store.retry_delays)

    async def link_code(self, who: Participant) -> str:
        """A new one-time code for this account, to send from the other one (any earlier code stops working)."""
        user = await self._user(who)
        code = await asyncio.to_thread(self._links.issue, user.id)
        log.info("account %s asked for a link code", user.id)
        return code

    async def void_link_code(self, code: str) -> bool:
        """A code sent where others could read it is void at once: nobody there can use it."""
        voided = await asyncio.to_thread(self._links.void, code)
        if voided:
            log.info("a link code shown in a group was voided")
        return voided

    async def link_offer(self, who: Participant, code: str) -> Account:
        """Whose code this is, for the person to confirm; links nothing. Raises `LinkError` (a message for them)."""
        user = await self._user(who)
        return _account(await asyncio.to_thread(self._links.holder, user.id, code))

    async def link(self, who: Participant, code: str) -> Account:
        """Link this account with the code's: one person from now on. Returns the other account."""
        user = await self._user(who)
        holder = await asyncio.to_thread(self._links.link, user.id, code)
        log.info("accounts %s and %s are linked", user.id, holder.id)
        return _account(holder)

    async def unlink(self, who: Participant) -> list[Account]:
        """Make this account a person of its own again; returns the accounts it was linked with (none: it wasn't)."""
        user = await asyncio.to_thread(self._store.find_user, who.platform, who.user_id)
        if user is None:
            return []
        others = await asyncio.to_thread(self._links.linked, user.id)
        if others and await asyncio.to_thread(self._links.unlink, user.id):
            log.info("account %s was unlinked", user.id)
        return [_account(other) for other in others]

    async def linked_accounts(self, who: Participant) -> list[Account]:
        user = await asyncio.to_thread(self._store.find_user, who.platform, who.user_id)
        return (
            [] if user is None else [_account(other) for other in await asyncio.to_thread(self._links.linked, user.id)]
        )
