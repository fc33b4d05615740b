"""The conversation's turns left unanswered: found after a restart, then answered or closed with an apology.

A mixin of `Conversation`, kept apart so that each module reads in one sitting; it answers through the
conversation's own `_answer`, exactly as a new turn is answered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from engine.audio import decode_audio
from engine.errors import AudioError
from engine.events import TurnEvent
from engine.group_talk import History
from engine.participant import Participant
from engine.speech_synthesizer import ContextTurn, SpeechSynthesizer
from engine.store.models import Turn, User
from engine.store.repository import Store
from engine.turn_memory import TurnMemory
from engine.voices import CLIP_RATE

if TYPE_CHECKING:
    from engine.voice_notes import NotePolicy

log = logging.getLogger(__name__)

LLM_HISTORY_TURNS = 40  # the newest turns the LLM sees, a new turn's or a resumed one's


@dataclass(frozen=True)
class PendingTurn:
    """A stored user turn that nothing answered: the process stopped (or the answer failed) mid-turn."""

    who: Participant
    turn_id: int
    said_at: datetime  # UTC


class ConversationResume:
    _store: Store
    _tts: SpeechSynthesizer
    _memory: TurnMemory
    max_audio_seconds: float
    max_audio_bytes: int

    def _answer(self, *args: Any, **kwargs: Any) -> AsyncIterator[TurnEvent]:
        raise NotImplementedError

    def _answering(self, *args: Any) -> Any:
        raise NotImplementedError

    async def _history(self, user: User, who: Participant, limit: int, *, before: int | None = None) -> History:
        raise NotImplementedError

    async def unanswered(self, platform: str, since: datetime) -> list[PendingTurn]:
        """This platform's user turns since `since` that are still the last word in their scope, oldest first."""
        rows = await asyncio.to_thread(self._store.unanswered_turns, platform, since)
        return [
            PendingTurn(
                Participant(platform, user.platform_user_id, turn.scope, user.display_name),
                turn.id,
                turn.created_at if turn.created_at.tzinfo else turn.created_at.replace(tzinfo=UTC),
            )
            for turn, user in rows
        ]

    async def resume(
        self, who: Participant, turn_id: int, *, speak: bool = True, notes: NotePolicy | None = None
    ) -> AsyncIterator[TurnEvent]:
        """Answer a stored user turn that has no reply yet, exactly as `turn()` answers; it isn't stored again.

        Yields nothing when the turn no longer waits for an answer (answered, /reset or /forget meanwhile).
        """
        started = time.perf_counter()
        timings: dict[str, float] = {}
        found = await self._waiting(who, turn_id, LLM_HISTORY_TURNS + 1)
        if found is None:
            return
        user, own = found
        pending = own[-1]
        if who.shared:  # the group's conversation up to the turn, everyone's words in it
            history = await self._history(user, who, LLM_HISTORY_TURNS, before=pending.id)
        else:
            history = History(own[:-1])
        has_audio = pending.speech is not None or pending.audio is not None
        user_speech = (
            asyncio.ensure_future(self._stored_speech(pending))
            if speak and has_audio and self._tts.capabilities.uses_context
            else None
        )
        answer = self._answer(
            user, who, history, pending.text, user_speech, speak, None, timings, started,
            language=pending.language, notes=notes,
        )  # fmt: skip
        async with self._answering(answer, user_speech):
            async for event in answer:
                yield event

    async def close_unanswered(self, who: Participant, turn_id: int, said: str) -> bool:
        """Store `said` (what the person was told instead of an answer) as the reply to a waiting turn.

        Returns False, storing nothing, when the turn no longer waits (answered or deleted meanwhile).
        """
        found = await self._waiting(who, turn_id, 1)
        if found is None:
            return False
        await asyncio.to_thread(self._store.add_turn, found[0].id, who.scope, "assistant", said)
        return True

    async def _waiting(self, who: Participant, turn_id: int, limit: int) -> tuple[User, list[Turn]] | None:
        """The user and their newest `limit` turns here, if the newest is still `turn_id`, unanswered."""
        # find_user, not _user(): someone who used /forget meanwhile must not be created again.
        user = await asyncio.to_thread(self._store.find_user, who.platform, who.user_id)
        if user is None:
            return None
        # What they said to others afterwards, in a group, owes no answer and doesn't answer this turn either.
        history = await asyncio.to_thread(
            functools.partial(self._store.recent_turns, user.id, who.scope, limit, addressed_only=True)
        )
        if not history or history[-1].id != turn_id or history[-1].role != "user":
            return None
        return user, history

    async def _stored_speech(self, turn: Turn) -> ContextTurn | None:
        """A stored user turn as the synthesizer's context: its payload, made from its audio if it has none."""
        if kept := self._memory.spoken_context([turn]):
            return kept[0]
        if turn.audio is None:
            return None
        try:
            samples = await asyncio.to_thread(
                decode_audio, turn.audio, CLIP_RATE, max_seconds=self.max_audio_seconds, max_bytes=self.max_audio_bytes
            )
        except AudioError as error:  # kept under other caps, or damaged since: the answer goes on without it
            log.warning("stored audio of turn %s can't serve as context: %s", turn.id, error)
            return None
        return await self._memory.add_user_speech(turn, samples, CLIP_RATE)
