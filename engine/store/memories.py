"""What the database keeps of a person beyond the conversation: their facts, memory on or off, and the summary of
their older conversation. Each operation is one transaction, guarded like the rest of the store."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import Update, case, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from engine.store.faults import RETRY_DELAYS_S, erasing_deleted_pages, guarded
from engine.store.models import Memory, Person, Turn, User, utcnow


@dataclass(frozen=True)
class FactChange:
    """One change to a person's facts, as reconciled: add a fact, replace one (by row id), or delete one."""

    action: str  # "add" | "update" | "delete"
    text: str = ""
    memory_id: int | None = None


class MemoryStore:
    """A person's facts and summary, read and written in short transactions."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        retry_delays: tuple[float, ...] = RETRY_DELAYS_S,
        erase: Callable[[Collection[str] | None], None] = lambda _tables: None,
    ) -> None:
        self.sessions = sessions
        self.retry_delays = retry_delays
        self._erase = erase  # the store's: takes deleted rows off the disk (the write-ahead log included)

    def _erase_deleted_pages(self, tables: Collection[str] | None = None) -> None:
        self._erase(tables)

    @guarded("I couldn't look at what I remember")
    def person(self, person_id: int) -> Person | None:
        with self.sessions() as session:
            return session.get(Person, person_id)

    @guarded("I couldn't look at what I remember")
    def facts(self, person_id: int) -> list[Memory]:
        """The person's facts, oldest first (the order `/memory` numbers them in)."""
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(Memory).where(Memory.person_id == person_id).order_by(Memory.created_at, Memory.id)
                ).all()
            )

    @guarded("I couldn't change that setting")
    def set_enabled(self, person_id: int, enabled: bool) -> bool:
        """`/memory off` or `on`: either way nothing said before is remembered after it (see `_new_epoch`). Asked
        for what already is, nothing changes (what waits to be remembered still is): returns whether it switched."""
        with self.sessions.begin() as session:
            switch = self._new_epoch(person_id).where(Person.memory_enabled != enabled)
            return session.execute(switch.values(memory_enabled=enabled).returning(Person.id)).first() is not None

    @staticmethod
    def _new_epoch(person_id: int) -> Update:
        """The person's memory starts afresh from here: an extraction of earlier turns, under way in any process,
        writes nothing (`memory_epoch`), and the summary folds in only turns said from now on (`summary_through`
        moves to their newest turn)."""
        accounts = select(User.id).where(User.person_id == person_id).scalar_subquery()
        newest = select(func.max(Turn.id)).where(Turn.user_id.in_(accounts)).scalar_subquery()
        return (
            update(Person)
            .where(Person.id == person_id)
            .values(memory_epoch=Person.memory_epoch + 1, summary_through=func.coalesce(newest, Person.summary_through))
        )

    @erasing_deleted_pages("memories")
    @guarded("I couldn't forget that")
    def delete(self, person_id: int, memory_ids: Sequence[int]) -> int:
        with self.sessions.begin() as session:
            statement = delete(Memory).where(Memory.person_id == person_id, Memory.id.in_(memory_ids))
            return session.execute(statement).rowcount or 0

    @erasing_deleted_pages("memories", "people")  # people: the summary's old version
    @guarded("I couldn't forget that")
    def clear(self, person_id: int) -> int:
        """Every fact and the summary go; memory stays on or off as it was."""
        with self.sessions.begin() as session:
            deleted = session.execute(delete(Memory).where(Memory.person_id == person_id)).rowcount or 0
            session.execute(self._new_epoch(person_id).values(summary=None))
            return deleted

    @guarded("I couldn't keep that in mind")
    def used(self, memory_ids: Sequence[int]) -> None:
        """These facts were given to the LLM once more (the longest unused go first when there are too many)."""
        if memory_ids:
            with self.sessions.begin() as session:
                session.execute(
                    update(Memory).where(Memory.id.in_(memory_ids)).values(uses=Memory.uses + 1, last_used_at=utcnow())
                )

    @guarded("I couldn't keep that in mind")
    def apply(
        self, person_id: int, changes: Sequence[FactChange], *, platform: str, scope: str, cap: int, epoch: int
    ) -> tuple[int, int]:
        """Apply reconciled changes in one transaction, then keep at most `cap` facts, letting the longest unused
        go, earlier ones before those just added. Nothing is written for a person deleted meanwhile (/forget), with
        memory turned off, or whose memory was cleared or switched since `epoch` (their `memory_epoch` when the
        extraction began). Returns (changes applied, facts let go)."""
        now = utcnow()
        with self.sessions.begin() as session:
            # A write first, that matches only while the epoch holds: on SQLite it takes the write lock, so a clear
            # can't commit between this check and the changes (PostgreSQL's serializable transactions would fail
            # and retry instead).
            lock = self._epoch_holds(person_id, epoch).values(memory_epoch=epoch)
            if session.execute(lock.returning(Person.id)).first() is None:
                return 0, 0
            applied = 0
            added: list[Memory] = []
            for change in changes:
                if change.action == "add":
                    added.append(Memory(person_id=person_id, text=change.text, platform=platform, scope=scope,
                                        said_at=now, updated_at=now, created_at=now))  # fmt: skip
                    session.add(added[-1])
                    applied += 1
                    continue
                memory = session.get(Memory, change.memory_id) if change.memory_id is not None else None
                if memory is None or memory.person_id != person_id:
                    continue
                if change.action == "delete":
                    session.delete(memory)
                else:
                    memory.text, memory.platform, memory.scope = change.text, platform, scope
                    memory.said_at = memory.updated_at = now
                applied += 1
            session.flush()
            count = session.scalar(select(func.count()).where(Memory.person_id == person_id)) or 0
            let_go = 0
            if count > cap:
                # What was just said goes last: it hasn't had a chance to be used yet.
                just_added = case((Memory.id.in_([memory.id for memory in added]), 1), else_=0)
                oldest = session.scalars(
                    select(Memory.id)
                    .where(Memory.person_id == person_id)
                    .order_by(just_added, func.coalesce(Memory.last_used_at, Memory.created_at), Memory.id)
                    .limit(count - cap)
                ).all()
                let_go = session.execute(delete(Memory).where(Memory.id.in_(oldest))).rowcount or 0
            return applied, let_go

    @guarded("I couldn't read our conversation")
    def turns_to_summarise(self, person_id: int, keep_recent: int, limit: int) -> list[Turn]:
        """The person's turns (any account, any chat) older than their newest `keep_recent` and newer than what the
        summary covers, oldest first, at most `limit`: what fell out of the LLM's window since the last summary."""
        with self.sessions() as session:
            person = session.get(Person, person_id)
            if person is None:
                return []
            accounts = select(User.id).where(User.person_id == person_id).scalar_subquery()
            mine = select(Turn).where(Turn.user_id.in_(accounts), Turn.addressed)
            recent = session.scalars(mine.order_by(Turn.id.desc()).limit(keep_recent)).all()
            if len(recent) < keep_recent:
                return []
            query = mine.where(Turn.id < recent[-1].id)
            if person.summary_through is not None:
                query = query.where(Turn.id > person.summary_through)
            return list(session.scalars(query.order_by(Turn.id).limit(limit)).all())

    @guarded("I couldn't keep that in mind")
    def set_summary(self, person_id: int, summary: str, through: int, *, epoch: int) -> None:
        """Keep the new summary, unless memory was turned off, cleared or switched since `epoch` (see `apply`)."""
        with self.sessions.begin() as session:
            session.execute(self._epoch_holds(person_id, epoch).values(summary=summary, summary_through=through))

    @staticmethod
    def _epoch_holds(person_id: int, epoch: int) -> Update:
        """An update of the person that matches only while memory is on and still at `epoch` (see `_new_epoch`)."""
        return update(Person).where(Person.id == person_id, Person.memory_enabled, Person.memory_epoch == epoch)
