"""Voices in the database: the clones a person owns (whichever of their linked accounts made them), and which one
speaks where. A mixin of `Store`: each method is one short, guarded transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from engine.errors import VoiceNameTakenError
from engine.speech_synthesizer import SpeechPayload
from engine.store.faults import erasing_deleted_pages, guarded
from engine.store.models import ScopeVoice, UserVoiceChoice, Voice, utcnow

# A user's choice of voice for every scope where they made no narrower choice.
EVERYWHERE = ""


class VoiceStore:
    sessions: sessionmaker[Session]
    retry_delays: tuple[float, ...]

    def _erase_deleted_pages(self) -> None:
        raise NotImplementedError

    # Voices --------------------------------------------------------------------------------------------

    @guarded("I couldn't save the voice")
    def add_voice(
        self,
        owner_id: int | None,
        name: str,
        *,
        reference_audio: bytes,
        reference_seconds: float,
        transcript: str,
        language: str | None = None,
        speech: SpeechPayload | None = None,
        consent_statement: str | None = None,
        consent_at: datetime | None = None,
        house_scope: str | None = None,
    ) -> Voice:
        if owner_id is not None and self.voice_by_name(owner_id, name) is not None:
            raise VoiceNameTakenError(name)
        with self.sessions.begin() as session:
            voice = Voice(
                owner_id=owner_id,
                name=name,
                reference_audio=reference_audio,
                reference_seconds=reference_seconds,
                transcript=transcript,
                language=language,
                speech=speech.data if speech is not None else None,
                speech_model=speech.tag if speech is not None else None,
                consent_statement=consent_statement,
                consent_at=consent_at or (utcnow() if consent_statement else None),
                house_scope=house_scope,
            )
            session.add(voice)
            session.flush()
            session.expunge(voice)
            return voice

    @guarded("I couldn't find that voice")
    def voice(self, voice_id: int) -> Voice | None:
        with self.sessions() as session:
            return session.get(Voice, voice_id)

    @guarded("I couldn't find that voice")
    def voice_by_name(self, owner_id: int, name: str) -> Voice | None:
        with self.sessions() as session:
            return session.scalar(select(Voice).where(Voice.owner_id == owner_id, Voice.name == name))

    @guarded("I couldn't look up your voices")
    def voices_of(self, owner_id: int) -> Sequence[Voice]:
        with self.sessions() as session:
            return session.scalars(select(Voice).where(Voice.owner_id == owner_id).order_by(Voice.name)).all()

    @guarded("I couldn't save the voice")
    def set_voice_speech(self, voice_id: int, speech: SpeechPayload) -> None:
        with self.sessions.begin() as session:
            voice = session.get_one(Voice, voice_id)
            voice.speech, voice.speech_model = speech.data, speech.tag

    @guarded("I couldn't rename the voice")
    def rename_voice(self, voice_id: int, new_name: str) -> None:
        with self.sessions.begin() as session:
            voice = session.get_one(Voice, voice_id)
            if voice.owner_id is not None and session.scalar(
                select(Voice).where(Voice.owner_id == voice.owner_id, Voice.name == new_name)
            ):
                raise VoiceNameTakenError(new_name)
            voice.name = new_name

    @erasing_deleted_pages
    @guarded("I couldn't delete the voice")
    def delete_voice(self, voice_id: int) -> None:
        with self.sessions.begin() as session:
            session.execute(delete(Voice).where(Voice.id == voice_id))

    # Which voice speaks --------------------------------------------------------------------------------

    @guarded("I couldn't switch voices")
    def choose_voice(self, user_id: int, voice_id: int, scope: str = EVERYWHERE) -> None:
        with self.sessions.begin() as session:
            session.merge(UserVoiceChoice(user_id=user_id, scope=scope, voice_id=voice_id))

    @guarded("I couldn't set the voice here")
    def set_scope_voice(self, scope: str, voice_id: int, set_by_user_id: int | None = None) -> None:
        with self.sessions.begin() as session:
            session.merge(ScopeVoice(scope=scope, voice_id=voice_id, set_by_user_id=set_by_user_id))

    @guarded("I couldn't find your voice")
    def active_voice(self, user_id: int, scope: str, parent_scope: str | None = None) -> Voice | None:
        """The voice aLAN speaks in to this user here.

        The user's choice for this scope wins, then their choice for everywhere, then the scope's default
        (a manager's choice, or the house voice made from the bot's first reply there), then the parent
        scope's default (a Discord server's voice, for a conversation in one of its voice channels).
        """
        with self.sessions() as session:
            for chosen_scope in (scope, EVERYWHERE):
                choice = session.get(UserVoiceChoice, (user_id, chosen_scope))
                if choice is not None:
                    return session.get(Voice, choice.voice_id)
            for default_scope in (scope, parent_scope):
                default = session.get(ScopeVoice, default_scope) if default_scope is not None else None
                if default is not None:
                    return session.get(Voice, default.voice_id)
            return None
