"""Everything the engine and the bots read or write in the database, as small named operations.

Each operation is one transaction, retried when it meets a lock; a database that stays locked, a full disk or
a broken file raise `StorageUnavailableError`, whose message says what could not be done and why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from engine.speech_synthesizer import SpeechPayload
from engine.store.database import truncate_wal
from engine.store.faults import RETRY_DELAYS_S, erasing_deleted_pages, guarded
from engine.store.inbox import forget_senders
from engine.store.models import Base, Person, ScopeSetting, Turn, User, Voice
from engine.store.postgres import vacuum_deleted_rows
from engine.store.voice_store import EVERYWHERE, VoiceStore

__all__ = ["EVERYWHERE", "Store"]

log = logging.getLogger(__name__)


# Pauses between tries to empty the write-ahead log after a deletion, while another connection still reads it.
WAL_TRUNCATE_DELAYS_S = (0.05, 0.2, 0.5, 1.0)


class Store(VoiceStore):
    """The database, opened through a session factory. Each method is one short transaction."""

    def __init__(self, sessions: sessionmaker[Session], *, retry_delays: tuple[float, ...] = RETRY_DELAYS_S) -> None:
        self.sessions = sessions
        self.retry_delays = retry_delays  # between attempts of an operation that met a lock

    # Users ---------------------------------------------------------------------------------------------

    @guarded("I couldn't do that")
    def user(self, platform: str, platform_user_id: str, display_name: str | None = None) -> User:
        """The user, created on first contact; the display name follows what the platform says now."""
        try:
            return self._user(platform, platform_user_id, display_name)
        except IntegrityError:
            # Two of their messages arrived together (a group message kept while another is answered) and the
            # other created them first: they exist now.
            return self._user(platform, platform_user_id, display_name)

    def _user(self, platform: str, platform_user_id: str, display_name: str | None) -> User:
        with self.sessions.begin() as session:
            user = session.scalar(
                select(User).where(User.platform == platform, User.platform_user_id == platform_user_id)
            )
            if user is None:
                person = Person()
                session.add(person)
                session.flush()  # its id, for the account's
                user = User(
                    person_id=person.id, platform=platform, platform_user_id=platform_user_id, display_name=display_name
                )
                session.add(user)
            elif display_name and user.display_name != display_name:
                user.display_name = display_name
            session.flush()
            session.expunge(user)
            return user

    @guarded("I couldn't look you up")
    def find_user(self, platform: str, platform_user_id: str) -> User | None:
        with self.sessions() as session:
            return session.scalar(
                select(User).where(User.platform == platform, User.platform_user_id == platform_user_id)
            )

    @guarded("I couldn't change that setting")
    def set_reply_with_text(self, user_id: int, enabled: bool) -> None:
        with self.sessions.begin() as session:
            user = session.get_one(User, user_id)
            user.reply_with_text = enabled

    @erasing_deleted_pages()  # every table: the person's rows are everywhere
    @guarded("I couldn't delete your data")
    def forget_user(self, user_id: int) -> None:
        """Delete the person this account belongs to, every account of theirs (a linked one too) and, through ON
        DELETE CASCADE, every voice, turn, choice, memory and code of theirs; and their updates still waiting in
        the inbox.

        A house voice (aLAN's first reply in a scope) goes too when they were the only one talking there: in a
        private chat it is a reply made for them alone.
        """
        with self.sessions.begin() as session:
            person_id = session.scalar(select(User.person_id).where(User.id == user_id))
            if person_id is None:
                return
            accounts = select(User.id).where(User.person_id == person_id).scalar_subquery()
            scopes = session.scalars(select(Turn.scope).where(Turn.user_id.in_(accounts)).distinct()).all()
            shared = set(
                session.scalars(
                    select(Turn.scope).where(Turn.scope.in_(scopes), Turn.user_id.not_in(accounts)).distinct()
                ).all()
            )
            solo = [scope for scope in scopes if scope not in shared]
            if solo:
                session.execute(delete(Voice).where(Voice.owner_id.is_(None), Voice.house_scope.in_(solo)))
            forget_senders(session, person_id)  # their messages still waiting in the inbox (no cascade: no FK)
            session.execute(delete(Person).where(Person.id == person_id))

    def _erase_deleted_pages(self, tables: Collection[str] | None = None) -> None:
        """Take deleted rows (in `tables`, or anywhere) off the disk now, not at the next clean shutdown.

        `secure_delete` zeroes deleted rows in the pages it writes, but with WAL those pages go to the log first,
        and the log keeps the rows' earlier versions. A TRUNCATE checkpoint copies the log into the database
        (whose old pages are overwritten) and cuts the log to zero bytes. On PostgreSQL, what can be done is a
        VACUUM of the tables (see `vacuum_deleted_rows` for what it does and doesn't).
        """
        engine = self.sessions.kw["bind"]
        if engine.dialect.name == "postgresql":
            vacuum_deleted_rows(engine, list(tables or (table.name for table in Base.metadata.sorted_tables)))
            return
        for delay in (*WAL_TRUNCATE_DELAYS_S, None):
            try:
                with self.sessions() as session:
                    if truncate_wal(session):
                        return
            except OperationalError as error:  # the rows are gone already: a lock here is no failed deletion
                log.info("could not empty the write-ahead log yet (%s)", error.orig)
            if delay is None:
                break
            time.sleep(delay)
        # The rows are deleted; their old versions leave the log at the next checkpoint SQLite manages.
        log.warning("after a deletion another connection kept the database's write-ahead log in use: not emptied yet")

    # Conversation --------------------------------------------------------------------------------------

    @guarded("I couldn't save that")
    def add_turn(
        self,
        user_id: int,
        scope: str,
        role: str,
        text: str,
        *,
        language: str | None = None,
        audio: bytes | None = None,
        speech: SpeechPayload | None = None,
        addressed: bool = True,
    ) -> Turn:
        """`addressed=False`: a user turn heard in a group but not said to aLAN (kept as context, not answered)."""
        if role not in ("user", "assistant"):
            raise ValueError(f"unknown role {role!r}")
        with self.sessions.begin() as session:
            turn = Turn(
                user_id=user_id,
                scope=scope,
                role=role,
                text=text,
                language=language,
                audio=audio,
                speech=speech.data if speech is not None else None,
                speech_model=speech.tag if speech is not None else None,
                addressed=addressed,
            )
            session.add(turn)
            session.flush()
            session.expunge(turn)
            return turn

    @guarded("I couldn't save that")
    def set_turn_speech(self, turn_id: int, speech: SpeechPayload) -> bool:
        """Keep the synthesizer's payload of a turn's audio, made after the turn was stored.

        Returns False when the turn is gone (deleted by /reset or /forget in the meantime).
        """
        return self.update_turn(turn_id, speech=speech.data, speech_model=speech.tag)

    @guarded("I couldn't save that")
    def update_turn(self, turn_id: int, **values: object) -> bool:
        """Fill in what became known after the turn was first stored (its speech payload, a truncated text).

        Returns False when the turn is gone (deleted by /reset or /forget in the meantime).
        """
        with self.sessions.begin() as session:
            turn = session.get(Turn, turn_id)
            if turn is None:
                return False
            for name, value in values.items():
                if not hasattr(Turn, name):
                    raise AttributeError(name)
                setattr(turn, name, value)
        return True

    @guarded("I couldn't read our conversation")
    def recent_turns(self, user_id: int, scope: str, limit: int = 50, *, addressed_only: bool = False) -> list[Turn]:
        """The newest `limit` turns of this user in this scope, oldest first (`addressed_only`: leaving out what
        they said in a group that wasn't said to aLAN)."""
        with self.sessions() as session:
            query = select(Turn).where(Turn.user_id == user_id, Turn.scope == scope)
            if addressed_only:
                query = query.where(or_(Turn.role != "user", Turn.addressed))
            newest = session.scalars(query.order_by(Turn.created_at.desc(), Turn.id.desc()).limit(limit)).all()
            return list(reversed(newest))

    @guarded("I couldn't read our conversation")
    def shared_turns(self, scope: str, limit: int = 50, *, before: int | None = None) -> list[tuple[Turn, str | None]]:
        """The newest `limit` turns of everyone in this scope (a group's one conversation), oldest first, each with
        the display name of the person who said it (of the person answered, for aLAN's turns). `before`: only
        those stored before the turn with that id."""
        with self.sessions() as session:
            query = select(Turn, User.display_name).join(User, User.id == Turn.user_id).where(Turn.scope == scope)
            if before is not None:
                query = query.where(Turn.id < before)
            newest = session.execute(query.order_by(Turn.created_at.desc(), Turn.id.desc()).limit(limit)).all()
            return [(turn, name) for turn, name in reversed(newest)]

    @guarded("I couldn't read our conversation")
    def unanswered_turns(self, platform: str, since: datetime) -> list[tuple[Turn, User]]:
        """User turns on `platform` since `since` that are still the newest of their conversation, oldest first.

        A turn's words are stored before it is answered, so these are what a process that stopped mid-turn
        (or whose answer failed) left without a reply. A conversation is one user in one scope (as in
        `recent_turns`): in a group chat, someone else's newer turn does not answer this one. Words heard in a
        group but not said to aLAN owe no answer, and don't hide an addressed turn before them either.
        """
        with self.sessions() as session:
            newest = (
                select(func.max(Turn.id))
                .join(User, User.id == Turn.user_id)
                .where(User.platform == platform, Turn.created_at >= since, or_(Turn.role != "user", Turn.addressed))
                .group_by(Turn.user_id, Turn.scope)
            )
            rows = session.execute(
                select(Turn, User)
                .join(User, User.id == Turn.user_id)
                .where(Turn.id.in_(newest), Turn.role == "user")
                .order_by(Turn.id)
            ).all()
            return [(turn, user) for turn, user in rows]

    @guarded("I couldn't read our conversation")
    def user_language(self, user_id: int, recent: int = 10) -> str | None:
        """The language of this user's recent spoken turns (the most frequent; a tie goes to the newest).

        Derived from their turns, not stored apart: /forget and /reset take it away with them.
        """
        with self.sessions() as session:
            languages = session.scalars(
                select(Turn.language)
                .where(Turn.user_id == user_id, Turn.role == "user", Turn.language.is_not(None))
                .order_by(Turn.created_at.desc(), Turn.id.desc())
                .limit(recent)
            ).all()
        counts: dict[str, int] = {}
        for language in languages:
            counts[language] = counts.get(language, 0) + 1
        # max() keeps the first of equals, and `counts` is in newest-first order.
        return max(counts, key=counts.__getitem__) if counts else None

    @erasing_deleted_pages("turns")
    @guarded("I couldn't clear our conversation")
    def clear_conversation(self, user_id: int, scope: str | None = None) -> int:
        """Delete this user's turns (in one scope, or everywhere); voices stay. Returns how many."""
        with self.sessions.begin() as session:
            statement = delete(Turn).where(Turn.user_id == user_id)
            if scope is not None:
                statement = statement.where(Turn.scope == scope)
            return session.execute(statement).rowcount or 0

    @erasing_deleted_pages("turns")
    @guarded("I couldn't clear this conversation")
    def clear_scope(self, scope: str) -> int:
        """Delete everyone's turns in this scope (a group's `/reset`); voices and settings stay. Returns how many."""
        with self.sessions.begin() as session:
            return session.execute(delete(Turn).where(Turn.scope == scope)).rowcount or 0

    # A conversation's settings ---------------------------------------------------------------------------

    @guarded("I couldn't read this conversation's settings")
    def listen_mode(self, scope: str) -> str | None:
        """The scope's `/listen` mode, or None for the default."""
        with self.sessions() as session:
            setting = session.get(ScopeSetting, scope)
            return setting.listen_mode if setting is not None else None

    @guarded("I couldn't change this conversation's settings")
    def set_listen_mode(self, scope: str, mode: str | None) -> None:
        with self.sessions.begin() as session:
            session.merge(ScopeSetting(scope=scope, listen_mode=mode))
