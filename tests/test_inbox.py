"""The shared inbox and the chat claims (`engine.store.inbox`), on SQLite and PostgreSQL; the leases a process keeps
on its chats (`bot.telegram.chat_leases`); and the migration that adds them. The cluster of processes using them
end to end is tests/test_telegram_cluster*.py."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from bot.telegram.chat_lanes import ChatLanes, LaneOptions
from bot.telegram.chat_leases import Lane, LeaseKeeper
from bot.telegram.common import PLATFORM
from engine.store.database import create_db_engine, downgrade, upgrade
from engine.store.inbox import Begun, Inbox
from engine.store.memories import MemoryStore
from engine.store.models import InboxUpdate
from engine.store.repository import Store
from tests.postgres import DATABASES, database_url_for


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite and on PostgreSQL, each time on a new, empty database."""
    return database_url_for(request)


# The inbox and the claims, on each database -------------------------------------------------------------------


@pytest.fixture
def inbox(store: Store) -> Inbox:
    return Inbox(store.sessions)


NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def test_a_chat_is_claimed_by_one_owner_until_its_lease_lapses(inbox: Inbox) -> None:
    assert inbox.claim(PLATFORM, "7", "a", NOW, LEASE)
    assert not inbox.claim(PLATFORM, "7", "b", NOW + timedelta(seconds=29), LEASE)
    assert inbox.claim(PLATFORM, "7", "a", NOW + timedelta(seconds=29), LEASE)  # kept: renewed
    assert inbox.renew(PLATFORM, ["7"], "a", NOW + timedelta(seconds=40), LEASE) == {"7"}
    assert not inbox.claim(PLATFORM, "7", "b", NOW + timedelta(seconds=60), LEASE)
    assert inbox.claim(PLATFORM, "7", "b", NOW + timedelta(seconds=71), LEASE)  # a stopped renewing
    assert inbox.renew(PLATFORM, ["7"], "a", NOW + timedelta(seconds=72), LEASE) == set()
    inbox.release(PLATFORM, ["7"], "a")  # not a's any more: nothing happens
    assert not inbox.claim(PLATFORM, "7", "c", NOW + timedelta(seconds=72), LEASE)
    inbox.release(PLATFORM, ["7"], "b")
    assert inbox.claim(PLATFORM, "7", "c", NOW + timedelta(seconds=72), LEASE)


def test_owners_racing_for_a_chat_one_gets_it(inbox: Inbox) -> None:
    barrier = threading.Barrier(6)
    won: list[str] = []

    def race(owner: str) -> None:
        barrier.wait()
        if inbox.claim(PLATFORM, "9", owner, NOW, LEASE):
            won.append(owner)

    threads = [threading.Thread(target=race, args=(f"owner-{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(won) == 1


def test_a_restarted_process_takes_back_its_predecessors_chats_only(inbox: Inbox) -> None:
    for chat, owner in (("1", "host:8443:100:aa"), ("2", "host:8443:200:bb"), ("3", "host:84430:1:cc"),
                        ("4", "other:8443:1:dd")):  # fmt: skip
        assert inbox.claim(PLATFORM, chat, owner, NOW, LEASE)
    assert inbox.release_predecessors(PLATFORM, "host:8443:", "host:8443:200:bb") == 1
    assert inbox.claim(PLATFORM, "1", "host:8443:200:bb", NOW, LEASE)
    assert not inbox.claim(PLATFORM, "3", "host:8443:200:bb", NOW, LEASE)
    assert not inbox.claim(PLATFORM, "4", "host:8443:200:bb", NOW, LEASE)


def test_a_job_noted_by_processes_starting_together_keeps_the_last_note_until_it_expires(inbox: Inbox) -> None:
    inbox.note(PLATFORM, "#webhook:x", "registered by a", NOW + LEASE)
    inbox.note(PLATFORM, "#webhook:x", "registered by b", NOW + LEASE)
    assert inbox.noted(PLATFORM, "#webhook:x", NOW) == "registered by b"
    assert inbox.noted(PLATFORM, "#webhook:x", NOW + LEASE) is None
    assert inbox.noted(PLATFORM, "#webhook:y", NOW) is None


def test_an_update_is_kept_once_and_its_words_go_when_it_is_handled(inbox: Inbox) -> None:
    assert inbox.add(PLATFORM, 10, "7", "1001", '{"update_id": 10}', NOW)
    assert not inbox.add(PLATFORM, 10, "7", "1001", '{"update_id": 10}', NOW)
    assert inbox.add(PLATFORM, 9, "7", "1001", '{"update_id": 9}', NOW)
    assert inbox.chats_to_serve(PLATFORM, "a", NOW) == {"7": 2}
    assert [row.update_id for row in inbox.waiting(PLATFORM, "7")] == [9, 10]
    assert inbox.claim(PLATFORM, "7", "a", NOW, LEASE)
    assert inbox.chats_to_serve(PLATFORM, "b", NOW) == {}  # a's
    assert inbox.chats_to_serve(PLATFORM, "b", NOW + LEASE * 2) == {"7": 2}  # a's lease lapsed
    for row in inbox.waiting(PLATFORM, "7"):
        inbox.done(row.id, NOW)
    assert inbox.waiting(PLATFORM, "7") == []
    assert not inbox.add(PLATFORM, 10, "7", "1001", '{"update_id": 10}', NOW + timedelta(hours=23))  # retried late
    assert inbox.purge(PLATFORM, NOW + timedelta(hours=25)) == 2
    assert inbox.add(PLATFORM, 10, "7", "1001", '{"update_id": 10}', NOW + timedelta(hours=25))


def test_forget_drops_the_persons_updates_waiting_and_every_row_of_their_private_chat(
    inbox: Inbox, store: Store
) -> None:
    ann = store.user(PLATFORM, "1001", "Ann")
    store.user(PLATFORM, "2002", "Bob")
    inbox.add(PLATFORM, 1, "1001", "1001", "{}", NOW)  # Ann's, in her chat
    inbox.add(PLATFORM, 2, "-100", "1001", "{}", NOW)  # Ann's, in a group
    inbox.add(PLATFORM, 3, "-100", "2002", "{}", NOW)  # Bob's
    inbox.add("discord", 4, "-100", "1001", "{}", NOW)  # another platform's account of the same number
    # Handled (`done` clears the sender): Ann's private chat and her own lane know her still; a group's, Bob's don't.
    for update_id, chat, sender in ((5, "1001", "1001"), (6, "user:1001", "1001"), (7, "-100", "1001"),
                                    (8, "2002", "2002")):  # fmt: skip
        assert inbox.add(PLATFORM, update_id, chat, sender, "{}", NOW)
        inbox.done(next(row.id for row in inbox.waiting(PLATFORM, chat) if row.update_id == update_id), NOW)
    store.forget_user(ann.id)
    with store.sessions() as session:
        left = session.execute(select(InboxUpdate.platform, InboxUpdate.update_id)).all()
    assert sorted(left) == [("discord", 4), (PLATFORM, 3), (PLATFORM, 7), (PLATFORM, 8)]


def test_a_turn_begins_only_while_its_update_waits_in_a_chat_this_process_holds(inbox: Inbox, store: Store) -> None:
    ann = store.user(PLATFORM, "1001", "Ann")
    inbox.add(PLATFORM, 1, "1001", "1001", "{}", NOW)
    inbox.add(PLATFORM, 2, "1001", "1001", "{}", NOW)
    first, second = inbox.waiting(PLATFORM, "1001")
    assert inbox.mark_started(first.id, "a", NOW) is Begun.ELSEWHERE  # nobody's chat: handed on by no claim
    assert inbox.claim(PLATFORM, "1001", "a", NOW, LEASE)
    assert inbox.mark_started(first.id, "b", NOW) is Begun.ELSEWHERE  # a's
    assert inbox.mark_started(first.id, "a", NOW) is Begun.YES
    assert [row.started_at for row in inbox.waiting(PLATFORM, "1001")] == [NOW, None]
    # a's lease lapsed as the second waited in line: it doesn't begin, taken over or not, and keeps waiting.
    later = NOW + LEASE + timedelta(seconds=1)
    assert inbox.mark_started(second.id, "a", later) is Begun.ELSEWHERE
    assert inbox.claim(PLATFORM, "1001", "b", later, LEASE)
    assert inbox.mark_started(second.id, "a", later) is Begun.ELSEWHERE
    assert [row.started_at for row in inbox.waiting(PLATFORM, "1001")] == [NOW, None]
    assert inbox.mark_started(second.id, "b", later) is Begun.YES
    # A row begun, or handled, by another process while a stalled one still had it in line begins there no more.
    assert inbox.mark_started(second.id, "b", later) is Begun.ELSEWHERE
    inbox.done(first.id, later)
    assert inbox.mark_started(first.id, "b", later) is Begun.ELSEWHERE
    inbox.unstart([second.id], "a", later)  # not a's chat now: b's note stays
    assert inbox.mark_started(second.id, "b", later) is Begun.ELSEWHERE
    inbox.unstart([second.id], "b", later)  # its process died before storing anything: handed on as new
    assert inbox.mark_started(second.id, "b", later) is Begun.YES
    store.forget_user(ann.id)  # handed on, waiting in line, when Ann said /forget
    assert inbox.mark_started(second.id, "b", later) is Begun.FORGOTTEN


# The leases a process keeps on its chats ------------------------------------------------------------------------


class StubInbox:
    """The claims' part of an inbox, in memory: which renewals came, and what each keeps."""

    def __init__(self) -> None:
        self.renewals: list[float] = []
        self.released_at: float | None = None
        self.during_renewal: Any = None  # called inside `renew`, as if another coroutine ran meanwhile
        self.keeps = True

    def renew(self, platform: str, chats: list[str], owner: str, now: datetime, lease: timedelta) -> set[str]:
        self.renewals.append(time.monotonic())
        if self.during_renewal is not None:
            self.during_renewal()
        return set(chats) if self.keeps else set()

    def release(self, platform: str, chats: list[str] | None, owner: str) -> None:
        self.released_at = time.monotonic()

    def claim(self, platform: str, chat: str, owner: str, now: datetime, lease: timedelta) -> bool:
        return True

    def waiting(self, platform: str, chat: str) -> list[Any]:
        return []

    def mark_started(self, row_id: int, owner: str, now: datetime) -> Begun:
        raise RuntimeError("the database is down")


def keeper(stub: StubInbox, *lanes: Lane, lease_s: float = 30.0) -> LeaseKeeper:
    return LeaseKeeper(stub, "me", {lane.chat: lane for lane in lanes}, lease_s, lease_s / 3)  # type: ignore[arg-type]


async def test_a_chat_lost_at_renewal_is_let_go_and_logged_only_with_work_in_flight(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stub = StubInbox()
    busy, idle = Lane("1", held=True), Lane("2", held=True)
    busy.tasks.add(asyncio.create_task(asyncio.sleep(0)))
    stub.keeps = False  # another process took both while this one stalled
    with caplog.at_level(logging.ERROR, logger="bot.telegram.chat_leases"):
        await keeper(stub, busy, idle).renew()
    assert not busy.held and not idle.held
    assert [record.getMessage() for record in caplog.records] == [
        "chat 1 was taken over by another process while this one still had it in flight"
    ]
    await asyncio.gather(*busy.tasks)


async def test_a_chat_let_go_and_claimed_again_during_a_renewal_stays_held(caplog: pytest.LogCaptureFixture) -> None:
    stub = StubInbox()
    lane = Lane("1", held=True)
    lane.tasks.add(asyncio.create_task(asyncio.sleep(0)))
    stub.keeps = False  # the renewal came between the release and the claim ...

    def claimed_again() -> None:  # ... and the claim succeeded before the renewal's answer came back
        lane.confirmed = time.monotonic()

    stub.during_renewal = claimed_again
    with caplog.at_level(logging.ERROR, logger="bot.telegram.chat_leases"):
        await keeper(stub, lane).renew()
    assert lane.held and not caplog.records
    await asyncio.gather(*lane.tasks)


async def test_a_lease_not_confirmed_for_most_of_its_length_hands_out_nothing_more() -> None:
    stub = StubInbox()
    lane = Lane("1", held=True, confirmed=time.monotonic())
    leases = keeper(stub, lane, lease_s=0.4)
    assert leases.fresh(lane)
    await asyncio.sleep(0.35)  # past lease - margin: another process may take it soon
    assert not leases.fresh(lane)
    await leases.renew()
    assert leases.fresh(lane)
    lane.lose()
    assert not leases.fresh(lane)


async def test_leases_are_renewed_while_a_stop_waits_for_the_work_in_flight() -> None:
    stub = StubInbox()
    options = LaneOptions(poll_s=0.05, lease_s=0.3, stop_grace_s=5.0)
    lanes = ChatLanes(None, None, stub, "me", options)  # type: ignore[arg-type]
    lane = Lane("1", held=True, confirmed=time.monotonic())
    lane.tasks.add(asyncio.create_task(asyncio.sleep(0.8)))  # longer than the lease
    lanes._lanes["1"] = lane
    lanes.leases.start()
    began = time.monotonic()
    await lanes.stop()
    assert stub.released_at is not None and stub.released_at - began >= 0.8
    renewals = [began, *stub.renewals, stub.released_at]
    assert len(stub.renewals) >= 3 and max(b - a for a, b in itertools.pairwise(renewals)) < 0.3


async def test_the_poll_starts_no_second_serve_of_a_chat_being_served() -> None:
    lanes = ChatLanes(None, None, StubInbox(), "me", LaneOptions())  # type: ignore[arg-type]
    lane = Lane("1")
    lanes._lanes["1"] = lane
    async with lane.lock:  # being served: a database stall would pile serves up behind it
        lanes._serve_waiting({"1": 1})
        assert not lanes._background


async def test_a_turn_whose_start_cant_be_noted_goes_on_only_under_a_fresh_lease_never_ahead_of_one_before() -> None:
    lanes = ChatLanes(None, None, StubInbox(), "me", LaneOptions(lease_s=0.4))  # type: ignore[arg-type]
    fresh = Lane("1", held=True, confirmed=time.monotonic())
    assert await lanes._begin(fresh, fresh.tenure, 1) is Begun.YES  # the lease vouches for the chat
    stale = Lane("2", held=True, confirmed=time.monotonic() - 1.0)  # not confirmed for longer than the lease
    handed_under = stale.tenure
    assert await lanes._begin(stale, handed_under, 2) is Begun.ELSEWHERE  # waits in the inbox ...
    assert not stale.held
    stale.confirmed = time.monotonic()  # ... and the next, handed on under the same claim, doesn't begin before it,
    assert await lanes._begin(stale, handed_under, 3) is Begun.ELSEWHERE  # even once the database answers again


class KeepingServices:
    """What `ChatLanes` asks the services: whether a chat has a step kept in memory here (a /clone under way)."""

    def __init__(self) -> None:
        self.kept: set[str] = set()

    def keeps_state(self, chat: str) -> bool:
        return chat in self.kept


async def test_an_idle_chat_is_kept_while_a_step_of_it_is_in_memory_here_and_let_go_once_that_ends() -> None:
    services, stub = KeepingServices(), StubInbox()
    lanes = ChatLanes(None, services, stub, "me", LaneOptions())  # type: ignore[arg-type]
    lanes._lanes["1"] = Lane("1", held=True, confirmed=time.monotonic())
    services.kept.add("1")  # a /clone waits for its clip
    lanes._serve_waiting({})
    assert not lanes._background
    await lanes.serve_chat("1")  # served (its last update done, say): kept all the same
    assert stub.released_at is None and lanes._lanes["1"].held
    services.kept.clear()  # done, cancelled or expired: the next poll lets the chat go
    lanes._serve_waiting({})
    await asyncio.gather(*lanes._background)
    assert stub.released_at is not None and "1" not in lanes._lanes


# The migration --------------------------------------------------------------------------------------------------


def an_account_of_old(sessions: sessionmaker[Session]) -> int:
    """Ann, as a process of an earlier schema wrote her (the ORM speaks the newest): her account's id."""
    with sessions.begin() as session:
        values = {"yes": True, "now": NOW}
        session.execute(text("INSERT INTO people (memory_enabled, created_at) VALUES (:yes, :now)"), values)
        person = session.scalar(text("SELECT max(id) FROM people"))
        session.execute(
            text("INSERT INTO users (person_id, platform, platform_user_id, display_name, reply_with_text, created_at) "
                 "VALUES (:person, :platform, '1001', 'Ann', :yes, :now)"),
            {"person": person, "platform": PLATFORM, "yes": True, "now": NOW},
        )  # fmt: skip
        return int(session.scalar(text("SELECT max(id) FROM users")))


def test_migration_0005_adds_the_inbox_and_the_claims_and_takes_them_away_again(database_url: str) -> None:
    upgrade(database_url, "0004")
    sessions: sessionmaker[Session] = sessionmaker(create_db_engine(database_url))
    store = Store(sessions)
    ann = an_account_of_old(sessions)
    store.add_turn(ann, "1001", "user", "kept through it all")
    upgrade(database_url, "0005")
    inbox = Inbox(sessions)
    assert inbox.add(PLATFORM, 2**40, "1001", "1001", "{}", NOW)  # Telegram's update ids are 64-bit
    assert inbox.claim(PLATFORM, "1001", "a", NOW, LEASE)
    downgrade(database_url, "0004")
    with sessions() as session:
        tables = set(session.get_bind().dialect.get_table_names(session.connection()))  # type: ignore[attr-defined]
    assert not {"inbox_updates", "chat_claims"} & tables
    assert [turn.text for turn in store.recent_turns(ann, "1001")] == ["kept through it all"]
    upgrade(database_url)
    assert Inbox(sessions).waiting(PLATFORM, "1001") == []


def test_migration_0006_adds_the_memory_epoch_and_takes_it_away_again(database_url: str) -> None:
    upgrade(database_url, "0005")
    sessions: sessionmaker[Session] = sessionmaker(create_db_engine(database_url))
    store = Store(sessions)
    an_account_of_old(sessions)
    upgrade(database_url, "0006")
    ann = store.find_user(PLATFORM, "1001")
    assert ann is not None
    memory = MemoryStore(sessions)
    person = memory.person(ann.person_id)
    assert person is not None and person.memory_epoch == 0  # every existing person starts at 0
    memory.clear(ann.person_id)
    assert memory.person(ann.person_id).memory_epoch == 1  # type: ignore[union-attr]
    downgrade(database_url, "0005")
    with sessions() as session:
        columns = {column["name"] for column in inspect(session.connection()).get_columns("people")}
    assert "memory_epoch" not in columns and {"memory_enabled", "summary"} <= columns
    assert store.find_user(PLATFORM, "1001") is not None  # nothing else went with it
    upgrade(database_url)
