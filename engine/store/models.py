"""aLAN's tables, as SQLAlchemy 2 typed ORM classes.

The Alembic revisions in `migrations/` build exactly this schema (a test checks there is no drift).
Every row that belongs to a user hangs off `users` with ON DELETE CASCADE, so deleting the user row (what
`/forget` does) deletes their voices, their conversation and their voice choices with it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints so that Alembic can alter them later (SQLite batch mode needs names).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Person(Base):
    """One human, whatever accounts they talk from: an account on each platform, once linked (`/link`), is one
    person, sharing voices and memory. Deleting the person (`/forget`) deletes every account of theirs with it."""

    __tablename__ = "people"
    __table_args__: ClassVar[dict[str, bool]] = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    # `/memory off`: nothing new is remembered (what was is kept, and still used, until cleared).
    memory_enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    # Bumped by `/memory clear`, `off` and `on`: what a turn before that left to remember is not written (the
    # extraction may run in another process, which knows nothing else of the clear).
    memory_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # What was said with them before the LLM's window, in a few sentences, kept up to date in the background.
    summary: Mapped[str | None] = mapped_column(Text)
    summary_through: Mapped[int | None] = mapped_column(Integer)  # the newest turn id the summary covers
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class User(Base):
    """An account on one platform; the same human on Discord and Telegram is two users of one person once linked."""

    __tablename__ = "users"
    # AUTOINCREMENT: a deleted user's id is never given to someone else (a reply in flight can't land on them).
    __table_args__ = (UniqueConstraint("platform", "platform_user_id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_user_id: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str | None] = mapped_column(String(200))
    # Whether replies also come as text (the reply and the transcript of what was heard): `/text on|off`.
    reply_with_text: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    voices: Mapped[list[Voice]] = relationship(
        back_populates="owner", cascade="all, delete-orphan", passive_deletes=True
    )


class Voice(Base):
    """A cloned voice: a reference clip of the target voice and its exact transcript.

    `owner_id` is NULL for a scope's house voice, the bot's own first reply in a scope that has no cloned
    voice yet, kept so that the bot keeps sounding like one person there.
    """

    __tablename__ = "voices"
    __table_args__ = (UniqueConstraint("owner_id", "name"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    reference_audio: Mapped[bytes] = mapped_column(LargeBinary)  # OGG/Opus
    reference_seconds: Mapped[float]
    transcript: Mapped[str] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(16))
    # What the speech synthesizer keeps of the reference clip (CSM: its Mimi codes), computed once and reused
    # every turn; opaque here, tagged "backend:model" so another model never reads it (it re-encodes the clip).
    speech: Mapped[bytes | None] = mapped_column(LargeBinary)
    speech_model: Mapped[str | None] = mapped_column(String(200))
    # For a house voice: the scope whose first reply it was (deleted with the last user who talked there).
    house_scope: Mapped[str | None] = mapped_column(String(128))
    consent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    consent_statement: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    owner: Mapped[User | None] = relationship(back_populates="voices")


class Turn(Base):
    """One utterance in a conversation: what the user said, or what aLAN answered."""

    __tablename__ = "turns"
    __table_args__ = (
        Index("ix_turns_user_scope_created", "user_id", "scope", "created_at"),
        Index("ix_turns_scope_created", "scope", "created_at", "id"),  # a group's conversation: everyone's turns
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # Where the conversation happens: a Telegram chat, a Discord channel. Opaque to the engine.
    scope: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))  # "user" or "assistant"
    text: Mapped[str] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(16))
    # What was said, if spoken, as it arrived (a Telegram voice note) or as it was sent; anything PyAV decodes.
    audio: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The speech synthesizer's payload for that audio (CSM: Mimi codes), tagged "backend:model" as for voices.
    speech: Mapped[bytes | None] = mapped_column(LargeBinary)
    speech_model: Mapped[str | None] = mapped_column(String(200))
    # A user turn aLAN was asked to answer. In a group, what people say to each other is kept as well (the
    # conversation aLAN takes part in), unaddressed: no answer is owed for it.
    addressed: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UserVoiceChoice(Base):
    """The voice a user chose, for one scope or ("" scope) everywhere."""

    __tablename__ = "user_voice_choices"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    scope: Mapped[str] = mapped_column(String(128), primary_key=True)
    voice_id: Mapped[int] = mapped_column(ForeignKey("voices.id", ondelete="CASCADE"))


class ScopeVoice(Base):
    """A scope's default voice: set by a server manager, or the house voice made from the first reply."""

    __tablename__ = "scope_voices"

    scope: Mapped[str] = mapped_column(String(128), primary_key=True)
    voice_id: Mapped[int] = mapped_column(ForeignKey("voices.id", ondelete="CASCADE"))
    set_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class ScopeSetting(Base):
    """A conversation's own settings (a voice channel's, a group chat's): not any one person's."""

    __tablename__ = "scope_settings"

    scope: Mapped[str] = mapped_column(String(128), primary_key=True)
    # When aLAN answers there (`/listen`): "addressed", "always" or "off"; NULL: the default.
    listen_mode: Mapped[str | None] = mapped_column(String(16))


class Memory(Base):
    """A durable fact a person told aLAN (their name, people in their life, likes, plans, dates), one sentence."""

    __tablename__ = "memories"
    __table_args__ = (Index("ix_memories_person_created", "person_id", "created_at"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    # Where and when they said it: the account (platform) and the chat, so `/memory` can say so.
    platform: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(128))
    said_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # How often it was given to the LLM.
    uses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When it was last given to the LLM: the longest unused go first when a person has too many.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LinkCode(Base):
    """A one-time code that links another account to this one's person (`/link`): stored hashed, it expires."""

    __tablename__ = "link_codes"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LinkAttempt(Base):
    """Wrong codes an account sent lately: past a few, it must wait before trying again (codes can't be guessed)."""

    __tablename__ = "link_attempts"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class InboxUpdate(Base):
    """An update a chat platform delivered (a Telegram webhook POST), kept from its arrival until it is handled, so
    that one received is never lost, whichever process received it and whichever handles it (`engine.store.inbox`).

    Handled, it becomes a tombstone: `payload` and `sender` (what a person said, and who) are cleared at once and
    only `update_id` stays, for a day, so that a delivery the platform retries is recognised and handled once.
    """

    __tablename__ = "inbox_updates"
    __table_args__ = (
        UniqueConstraint("platform", "update_id"),
        # What is waiting (handled_at IS NULL), chat by chat in update order; also old tombstones, for purging.
        Index("ix_inbox_updates_waiting", "platform", "handled_at", "chat", "update_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    update_id: Mapped[int] = mapped_column(BigInteger)  # the platform's own, increasing number
    # Its chat's key (one chat's updates are handled in order, by one process at a time); opaque here.
    chat: Mapped[str] = mapped_column(String(128))
    sender: Mapped[str | None] = mapped_column(String(64))  # the platform user id, for `/forget`
    payload: Mapped[str | None] = mapped_column(Text)  # the update as delivered (JSON); NULL once handled
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When a turn began for it (its words may be stored from then on): tells a process taking over what was done.
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    handled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ChatClaim(Base):
    """Which process handles a chat's updates now: one at a time, for as long as its lease is renewed."""

    __tablename__ = "chat_claims"

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    chat: Mapped[str] = mapped_column(String(128), primary_key=True)  # a chat's key, or a job's ("#…")
    owner: Mapped[str] = mapped_column(String(200))  # the process: host, port, pid and a random part
    lease_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
