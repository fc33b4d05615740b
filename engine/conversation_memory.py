"""The conversation's long-term memory: what a turn recalls and leaves to remember, and `/memory`.

A mixin of `Conversation`, kept apart so that each module reads in one sitting; the work itself is
`engine.memory.MemoryKeeper`'s. `/reset` keeps memory; `/forget` removes it with the person.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from engine.errors import BadInputError
from engine.memory import MAX_FACTS, Exchange, MemoryKeeper, Recollection
from engine.participant import Participant
from engine.store.models import User
from engine.store.repository import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fact:
    """A remembered fact as `/memory` lists it: its number there, and where and when it was said."""

    number: int
    text: str
    platform: str
    scope: str
    said_at: datetime


@dataclass(frozen=True)
class MemoryListing:
    facts: list[Fact]
    enabled: bool
    cap: int = MAX_FACTS

    @property
    def full(self) -> bool:
        return len(self.facts) >= self.cap


class ConversationMemory:
    _store: Store
    _keeper: MemoryKeeper

    async def _user(self, who: Participant) -> User:
        raise NotImplementedError

    async def _recall(self, user: User, who: Participant) -> Recollection:
        """What the LLM is told it remembers of this person (only theirs, in a group too, and there no summary)."""
        return await self._keeper.recall(user.person_id, shared=who.shared)

    def _leave_to_remember(
        self, user: User, who: Participant, said: str, answer: str, recollection: Recollection
    ) -> None:
        name = user.display_name or "the person"
        self._keeper.after_turn(
            Exchange(user.person_id, name, who.platform, who.scope, said, answer, recollection.epoch)
        )

    async def memory_settled(self) -> None:
        """Return once what the last turns left to remember has been remembered (or given up on)."""
        await self._keeper.settled()

    async def memory(self, who: Participant) -> MemoryListing:
        """What aLAN remembers of this person, numbered oldest first (asking stores nothing)."""
        user = await asyncio.to_thread(self._store.find_user, who.platform, who.user_id)
        if user is None:
            return MemoryListing([], enabled=True)
        person = await asyncio.to_thread(self._keeper.store.person, user.person_id)
        facts = await asyncio.to_thread(self._keeper.store.facts, user.person_id)
        listed = [Fact(n, f.text, f.platform, f.scope, f.said_at) for n, f in enumerate(facts, 1)]
        return MemoryListing(listed, enabled=person is None or person.memory_enabled)

    async def forget_fact(self, who: Participant, number: int) -> str:
        """Forget fact `number` of `/memory`'s list; returns its text. `BadInputError` for a number not listed."""
        user = await self._user(who)
        facts = await asyncio.to_thread(self._keeper.store.facts, user.person_id)
        if not 0 < number <= len(facts):
            count = f"1 to {len(facts)}" if facts else "none: I don't remember anything about you yet"
            raise BadInputError(f"There's no fact number {number} in what I remember (the numbers are {count}).")
        fact = facts[number - 1]
        await asyncio.to_thread(self._keeper.store.delete, user.person_id, [fact.id])
        log.info("forgot a fact of person %s on request", user.person_id)
        return fact.text

    async def clear_memory(self, who: Participant) -> int:
        """Forget every fact and the summary; returns how many facts there were."""
        user = await self._user(who)
        self._keeper.forget_pending(user.person_id)
        return await asyncio.to_thread(self._keeper.store.clear, user.person_id)

    async def set_memory_enabled(self, who: Participant, enabled: bool) -> None:
        """`/memory off`: nothing new is remembered until `on` (what is remembered stays until cleared)."""
        user = await self._user(who)
        if await asyncio.to_thread(self._keeper.store.set_enabled, user.person_id, enabled):
            self._keeper.forget_pending(user.person_id)  # off: nothing more; on: nothing said while it was off
