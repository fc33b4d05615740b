"""The conversation's voice operations: what a person can do with their voices, by name, from any platform.

A mixin of `Conversation`, kept apart so that each module reads in one sitting; it needs the conversation's
voice library and its way of finding the person.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from engine.errors import BadInputError
from engine.participant import Participant
from engine.store.repository import EVERYWHERE, Store
from engine.voices import CloneDraft, VoiceInfo, VoiceLibrary

if TYPE_CHECKING:
    from engine.store.models import User, Voice

log = logging.getLogger(__name__)

FORGOTTEN_DURING_CLONE = "You asked me to forget you while this clone was under way, so I didn't keep the voice."


class ConversationVoices:
    _store: Store
    _voices: VoiceLibrary

    async def _user(self, who: Participant) -> User:
        raise NotImplementedError

    @property
    def max_clone_bytes(self) -> int:
        """The largest clip a clone accepts (the audio byte cap)."""
        return self._voices.max_upload_bytes

    async def voices(self, who: Participant) -> list[VoiceInfo]:
        """The person's voices by name, each with whether it speaks to them here (asking stores nothing: someone
        unknown, or forgotten, has none)."""
        user = await asyncio.to_thread(self._store.find_user, who.platform, who.user_id)
        return [] if user is None else await self._voices.listing(user.id, who.scope)

    async def use_voice(self, who: Participant, name: str, *, for_everyone_in: str | None = None) -> VoiceInfo:
        """Speak to this person with their voice `name` everywhere; or, with `for_everyone_in` (a scope such as
        a Discord server, for its managers), make it that scope's default voice for everyone there."""
        user = await self._user(who)
        if for_everyone_in is not None:
            voice = await self._voices.use_as_scope_default(user.id, name, for_everyone_in)
        else:
            voice = await self._voices.use(user.id, name, EVERYWHERE)
        return await self._info(who, voice)

    async def voice_name_taken(self, who: Participant, name: str) -> bool:
        user = await self._user(who)
        return await self._voices.name_taken(user.id, name)

    async def prepare_clone(self, clip: bytes, transcript: str | None = None) -> CloneDraft:
        """Step one of cloning: the clip decoded, trimmed, checked and (without `transcript`) transcribed."""
        return await self._voices.prepare(clip, transcript)

    async def clone_owner(self, who: Participant) -> int:
        """The account a clone is begun for (made now if new), for `save_clone(owner=…)`."""
        return (await self._user(who)).id

    async def save_clone(
        self, who: Participant, name: str, draft: CloneDraft, transcript: str, *, owner: int | None = None
    ) -> VoiceInfo:
        """Step two, after the person confirmed the transcript and consented: the voice, now theirs everywhere.

        With `owner` (`clone_owner` as the clone began) nothing is saved once that account is gone: `/forget`,
        answered meanwhile (perhaps by another aLAN process, which knew nothing of the clip), covers the clip too.
        """
        if owner is None:
            user = await self._user(who)
        else:
            # Not `_user`: a /forget landing now must not have the account made anew.
            found = await self._clone_owner_account(who, owner)
            if found is None:
                log.info("a clone begun before its account was forgotten was not saved")
                raise BadInputError(FORGOTTEN_DURING_CLONE)
            user = found
        voice = await self._voices.save(user.id, name, draft, transcript)
        return await self._info(who, voice)

    async def still_clone_owner(self, who: Participant, owner: int) -> bool:
        """Whether `who` is still the account a clone was begun for (`clone_owner`): no /forget since, anywhere."""
        return await self._clone_owner_account(who, owner) is not None

    async def _clone_owner_account(self, who: Participant, owner: int) -> User | None:
        found = await asyncio.to_thread(self._store.find_user, who.platform, who.user_id)
        return found if found is not None and found.id == owner else None  # ids are never reused: a new one is new

    async def rename_voice(self, who: Participant, name: str, new_name: str) -> VoiceInfo:
        user = await self._user(who)
        voice = await self._voices.rename(user.id, name, new_name)
        return await self._info(who, voice)

    async def _info(self, who: Participant, voice: Voice) -> VoiceInfo:
        """The voice as the person's listing shows it here (whether it is the one speaking to them, say)."""
        listed = next((info for info in await self.voices(who) if info.id == voice.id), None)
        return listed or VoiceInfo(voice.id, voice.name, voice.reference_seconds, False)  # deleted meanwhile

    async def delete_voice(self, who: Participant, name: str) -> None:
        user = await self._user(who)
        await self._voices.delete(user.id, name)
