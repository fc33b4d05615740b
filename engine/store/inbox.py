"""The shared inbox: updates kept from their arrival until handled, and which process handles which chat.

Several aLAN processes may share one database (and nothing else) behind a load balancer. Whichever process
receives an update stores it here first (`add`), so that it is never lost; one chat's updates are then handled
by one process at a time, in update order: the process that holds the chat's claim (`claim`, a lease it renews
while it has the chat's turns in flight and gives up when idle). A process that dies stops renewing; once its
lease has lapsed another takes the chat, and with it what was left waiting.

Claims are taken with one conditional upsert (INSERT … ON CONFLICT DO UPDATE … WHERE the lease lapsed or is
ours), atomic on SQLite and PostgreSQL alike. Lease times are the processes' own clocks, in UTC: hosts must keep
them in step (NTP), a skew well under the lease. Nothing here knows a platform: a chat is a key, an update a
number and a JSON text.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Insert, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from engine.store.faults import RETRY_DELAYS_S, guarded
from engine.store.models import ChatClaim, InboxUpdate, Turn, User

# How long a handled update's number is kept, so that a delivery retried later is still known: Telegram keeps
# an undelivered update (and so retries it) for 24 hours.
TOMBSTONE_LIFETIME = timedelta(hours=24)


@dataclass(frozen=True)
class Waiting:
    """An update not handled yet."""

    id: int
    update_id: int
    chat: str
    sender: str | None
    payload: str
    started_at: datetime | None  # a turn began for it (in a process that then died, if nobody has it now)


class Begun(enum.Enum):
    """What `mark_started` found as an update's turn was about to begin."""

    YES = "yes"  # noted: the turn runs
    FORGOTTEN = "forgotten"  # the row is gone (`/forget`): the turn is dropped
    ELSEWHERE = "elsewhere"  # not this process's: the chat's lease is another's, or another took the row meanwhile


def _aware(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite's come back naive


def _held_by(owner: str, now: datetime) -> Any:
    """For a statement on `inbox_updates`: the row's chat is `owner`'s, under a lease that runs at `now`."""
    return (
        select(ChatClaim.chat)
        .where(ChatClaim.platform == InboxUpdate.platform, ChatClaim.chat == InboxUpdate.chat)
        .where(ChatClaim.owner == owner, ChatClaim.lease_until > now)
        .exists()
    )


def _insert(session: Session, table: type[Any]) -> Any:
    """The dialect's INSERT, which has ON CONFLICT: SQLite's and PostgreSQL's spell it the same."""
    name = session.get_bind().dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"the shared inbox needs SQLite or PostgreSQL, not {name}")


class Inbox:
    """The inbox and the claims, through a session factory. Each method is one short transaction."""

    def __init__(self, sessions: sessionmaker[Session], *, retry_delays: tuple[float, ...] = RETRY_DELAYS_S) -> None:
        self.sessions = sessions
        self.retry_delays = retry_delays

    # Updates -------------------------------------------------------------------------------------------

    @guarded("I couldn't keep that message")
    def add(self, platform: str, update_id: int, chat: str, sender: str | None, payload: str, now: datetime) -> bool:
        """Keep an update; False if it was here already (a retried delivery: waiting, or handled within a day)."""
        with self.sessions.begin() as session:
            statement: Insert = _insert(session, InboxUpdate).values(
                platform=platform, update_id=update_id, chat=chat, sender=sender, payload=payload, received_at=now
            )
            statement = statement.on_conflict_do_nothing(index_elements=["platform", "update_id"])  # type: ignore[attr-defined]
            # RETURNING rather than rowcount, which psycopg leaves at -1 here.
            return session.execute(statement.returning(InboxUpdate.id)).first() is not None

    @guarded("I couldn't read the messages waiting")
    def waiting(self, platform: str, chat: str) -> list[Waiting]:
        """The chat's updates not handled yet, in update order."""
        with self.sessions() as session:
            rows = session.execute(
                select(InboxUpdate)
                .where(InboxUpdate.platform == platform, InboxUpdate.handled_at.is_(None), InboxUpdate.chat == chat)
                .order_by(InboxUpdate.update_id)
            ).scalars()
            return [
                Waiting(row.id, row.update_id, row.chat, row.sender, row.payload or "", _aware(row.started_at))
                for row in rows
            ]

    @guarded("I couldn't read the messages waiting")
    def chats_to_serve(self, platform: str, owner: str, now: datetime) -> dict[str, int]:
        """Chats with updates waiting that `owner` may handle (its own, unclaimed, or whose lease lapsed), each
        with how many are waiting."""
        claim = ChatClaim
        with self.sessions() as session:
            rows = session.execute(
                select(InboxUpdate.chat, func.count())
                .outerjoin(claim, (claim.platform == InboxUpdate.platform) & (claim.chat == InboxUpdate.chat))
                .where(InboxUpdate.platform == platform, InboxUpdate.handled_at.is_(None))
                .where(or_(claim.chat.is_(None), claim.owner == owner, claim.lease_until < now))
                .group_by(InboxUpdate.chat)
            ).all()
            return {chat: count for chat, count in rows}

    @guarded("I couldn't note that a turn began")
    def mark_started(self, row_id: int, owner: str, now: datetime) -> Begun:
        """Note that the update's turn begins, if its chat is still `owner`'s, under a lease that runs.

        Anything else and the turn must not run: a row gone was dropped by `/forget` (the turn would store the
        forgotten person's words again); a chat whose lease lapsed may be another process's, which hands the row on
        again (it stays waiting, not begun), and both would answer it; a row handled or begun meanwhile was
        another process's while this one stalled."""
        with self.sessions.begin() as session:
            ours = _held_by(owner, now)
            # Waiting, never begun: a row another process handled, or began (and died: it is `_settle_leftovers`'
            # to say), while this process stalled would otherwise be answered twice.
            fresh = InboxUpdate.handled_at.is_(None) & InboxUpdate.started_at.is_(None)
            statement = update(InboxUpdate).where(InboxUpdate.id == row_id, fresh, ours).values(started_at=now)
            # RETURNING rather than rowcount, which psycopg may leave at -1.
            if session.execute(statement.returning(InboxUpdate.id)).first() is not None:
                return Begun.YES
            present = session.scalar(select(InboxUpdate.id).where(InboxUpdate.id == row_id))
            return Begun.FORGOTTEN if present is None else Begun.ELSEWHERE

    @guarded("I couldn't take over a message")
    def unstart(self, row_ids: Iterable[int], owner: str, now: datetime) -> None:
        """Clear the note that turns began for these updates, waiting in a chat `owner` holds: a process that died
        began them without storing anything, and they are handed on as new (`mark_started` begins only rows never
        begun). Only while the lease runs: had another process taken the chat meanwhile, the note may be its own."""
        row_ids = list(row_ids)
        if row_ids:
            with self.sessions.begin() as session:
                waiting = InboxUpdate.id.in_(row_ids) & InboxUpdate.handled_at.is_(None)
                session.execute(update(InboxUpdate).where(waiting, _held_by(owner, now)).values(started_at=None))

    @guarded("I couldn't note that a message was handled")
    def done(self, row_id: int, now: datetime) -> None:
        """Handled: what was said, and by whom, goes now; the number stays a day (see `TOMBSTONE_LIFETIME`)."""
        with self.sessions.begin() as session:
            session.execute(
                update(InboxUpdate).where(InboxUpdate.id == row_id).values(payload=None, sender=None, handled_at=now)
            )

    @guarded("I couldn't tidy the inbox")
    def purge(self, platform: str, now: datetime) -> int:
        """Drop the numbers of updates handled more than `TOMBSTONE_LIFETIME` ago. Returns how many."""
        with self.sessions.begin() as session:
            statement = delete(InboxUpdate).where(
                InboxUpdate.platform == platform, InboxUpdate.handled_at < now - TOMBSTONE_LIFETIME
            )
            return session.execute(statement).rowcount or 0

    @guarded("I couldn't read our conversation")
    def words_stored_since(self, platform: str, sender: str, scope: str, since: datetime) -> bool:
        """Whether this person's words were stored in `scope` at or after `since`: what tells a process taking
        over whether a turn begun by a process that died got as far as storing them."""
        with self.sessions() as session:
            found = session.scalar(
                select(Turn.id)
                .join(User, User.id == Turn.user_id)
                .where(User.platform == platform, User.platform_user_id == sender, Turn.scope == scope)
                .where(Turn.role == "user", Turn.created_at >= since)
                .limit(1)
            )
            return found is not None

    # Claims --------------------------------------------------------------------------------------------

    @guarded("I couldn't take this chat")
    def claim(self, platform: str, chat: str, owner: str, now: datetime, lease: timedelta) -> bool:
        """Take (or keep) the chat for `owner` until `now + lease`; False if another owner's lease still runs."""
        with self.sessions.begin() as session:
            until = now + lease
            statement: Insert = _insert(session, ChatClaim).values(
                platform=platform, chat=chat, owner=owner, lease_until=until
            )
            statement = statement.on_conflict_do_update(  # type: ignore[attr-defined]
                index_elements=["platform", "chat"],
                set_={"owner": owner, "lease_until": until},
                where=or_(ChatClaim.owner == owner, ChatClaim.lease_until < now),
            )
            # A row comes back when it was inserted or updated, none when the WHERE kept another owner's.
            return session.execute(statement.returning(ChatClaim.owner)).first() is not None

    @guarded("I couldn't keep my chats")
    def renew(self, platform: str, chats: Iterable[str], owner: str, now: datetime, lease: timedelta) -> set[str]:
        """Extend `owner`'s leases on `chats`; returns those it still holds (another process may have taken a chat
        whose lease lapsed, if this one stalled for longer than the lease)."""
        chats = list(chats)
        if not chats:
            return set()
        with self.sessions.begin() as session:
            mine = (ChatClaim.platform == platform) & (ChatClaim.owner == owner) & ChatClaim.chat.in_(chats)
            session.execute(update(ChatClaim).where(mine).values(lease_until=now + lease))
            return set(session.scalars(select(ChatClaim.chat).where(mine)).all())

    @guarded("I couldn't let a chat go")
    def release(self, platform: str, chats: Iterable[str] | None, owner: str) -> None:
        """Give chats up (only where `owner` still holds them; None: all of them): another process may take them
        at once."""
        statement = delete(ChatClaim).where(ChatClaim.platform == platform, ChatClaim.owner == owner)
        if chats is not None:
            chats = list(chats)
            if not chats:
                return
            statement = statement.where(ChatClaim.chat.in_(chats))
        with self.sessions.begin() as session:
            session.execute(statement)

    @guarded("I couldn't take over my predecessor's chats")
    def release_predecessors(self, platform: str, prefix: str, owner: str) -> int:
        """Drop the claims of earlier owners whose id starts with `prefix`, known dead (a process that listens
        where they listened: they can't be running). Spares the restarted process a wait for their leases."""
        with self.sessions.begin() as session:
            statement = delete(ChatClaim).where(
                ChatClaim.platform == platform,
                ChatClaim.owner.startswith(prefix, autoescape=True),
                ChatClaim.owner != owner,
            )
            return session.execute(statement).rowcount or 0

    @guarded("I couldn't note that")
    def note(self, platform: str, key: str, holder: str, until: datetime) -> None:
        """Record that a one-off job (`key`, "#…") was done, by whom, valid until `until`: a claim nobody renews."""
        with self.sessions.begin() as session:
            # An upsert: processes starting together may note the same job at once.
            statement: Insert = _insert(session, ChatClaim).values(
                platform=platform, chat=key, owner=holder, lease_until=until
            )
            statement = statement.on_conflict_do_update(  # type: ignore[attr-defined]
                index_elements=["platform", "chat"], set_={"owner": holder, "lease_until": until}
            )
            session.execute(statement)

    @guarded("I couldn't read that")
    def noted(self, platform: str, key: str, now: datetime) -> str | None:
        """Who did the job `key`, if its record is still valid."""
        with self.sessions() as session:
            row = session.get(ChatClaim, (platform, key))
            if row is None or _aware(row.lease_until) <= now:  # type: ignore[operator]
                return None
            return row.owner


def forget_senders(session: Session, person_id: int) -> None:
    """Within `/forget`'s transaction: drop the updates of any account of the person, so that nothing of theirs is
    handled (and stored) after they were forgotten: those still waiting anywhere (by sender), and every row of
    their private chat, handled ones too (`done` clears the sender, not the chat, which names them).

    A private chat's key is the person's own id, or `user:<id>` for updates without a chat (`chat_lanes.lane_key`).
    Telegram's group chats have negative ids, so no group's key is a person's id."""
    accounts = session.execute(select(User.platform, User.platform_user_id).where(User.person_id == person_id)).all()
    for platform, platform_user_id in accounts:
        theirs = or_(
            InboxUpdate.sender == platform_user_id,
            InboxUpdate.chat.in_([platform_user_id, f"user:{platform_user_id}"]),
        )
        session.execute(delete(InboxUpdate).where(InboxUpdate.platform == platform, theirs))
