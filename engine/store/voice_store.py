"""Voices in the database: the clones a person owns (whichever of their linked accounts made them), and which one
speaks where. A mixin of `Store`: each method is one short, guarded transaction."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import ScalarSelect, delete, select
from sqlalchemy.orm import Session, sessionmaker

from engine.errors import VoiceNameTakenError
from engine.speech_synthesizer import SpeechPayload
from engine.store.faults import erasing_deleted_pages, guarded
from engine.store.models import ScopeVoice, User, UserVoiceChoice, Voice, utcnow

# A user's choice of voice for every scope where they made no narrower choice.
EVERYWHERE = ""


def accounts_of(user_id: int) -> ScalarSelect[int]:
    """Every account of the person this account belongs to (itself included): they share voices."""
    person = select(User.person_id).where(User.id == user_id).scalar_subquery()
    return select(User.id).where(User.person_id == person).scalar_subquery()


class VoiceStore:
    sessions: sessionmaker[Session]
    retry_delays: tuple[float, ...]

    def _erase_deleted_pages(self, tables: Collection[str] | None = None) -> None:
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
        """The person's voice by that name (of any linked account; this account's own first if both have one)."""
        with self.sessions() as session:
            return session.scalar(
                select(Voice)
                .where(Voice.owner_id.in_(accounts_of(owner_id)), Voice.name == name)
                .order_by((Voice.owner_id != owner_id), Voice.id)
                .limit(1)
            )

    @guarded("I couldn't look up your voices")
    def voices_of(self, owner_id: int) -> Sequence[Voice]:
        """The person's voices, whichever of their linked accounts made them."""
        with self.sessions() as session:
            query = select(Voice).where(Voice.owner_id.in_(accounts_of(owner_id)))
            return session.scalars(query.order_by(Voice.name, Voice.id)).all()

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
                select(Voice).where(Voice.owner_id.in_(accounts_of(voice.owner_id)), Voice.name == new_name)
            ):
                raise VoiceNameTakenError(new_name)
            voice.name = new_name

    @erasing_deleted_pages("voices", "user_voice_choices", "scope_voices")
    @guarded("I couldn't delete the voice")
    def delete_voice(self, voice_id: int) -> None:
        with self.sessions.begin() as session:
            session.execute(delete(Voice).where(Voice.id == voice_id))

    # Which voice speaks --------------------------------------------------------------------------------

    @guarded("I couldn't switch voices")
    def choose_voice(self, user_id: int, voice_id: int, scope: str = EVERYWHERE) -> None:
        """This account's choice here; a choice for everywhere is every linked account's (they share it)."""
        with self.sessions.begin() as session:
            accounts = session.scalars(select(User.id).where(User.id.in_(accounts_of(user_id)))).all()
            for account in accounts if scope == EVERYWHERE else [user_id]:
                session.merge(UserVoiceChoice(user_id=account, scope=scope, voice_id=voice_id))

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
