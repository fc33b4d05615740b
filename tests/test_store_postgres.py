"""PostgreSQL shared by several aLAN processes: each process is its own engine (its own pool of connections), and
what must hold with one process must hold with several, without a lock in any one of them: a link code is used
once, a person's first two messages make one person, wrong codes are all counted, the memory cap holds, ids are
never given twice, migrations run once. And the server's faults: unreachable, restarted, stopped mid-run, locked,
read-only, each told as SQLite's are, never with the password. A real server throughout (tests/postgres.py)."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from alan import doctor
from alan.database_check import DatabaseUnusableError, open_database_or_explain, open_failure
from alan.settings import Settings
from engine.conversation import Conversation, Participant
from engine.errors import StorageUnavailableError
from engine.events import ReplySentence
from engine.llm import OllamaChat
from engine.store.database import create_db_engine, current_revision, head_revision, open_database
from engine.store.links import BAD_CODE, MAX_FAILURES, TOO_MANY, LinkError, LinkStore
from engine.store.memories import FactChange, MemoryStore
from engine.store.models import LinkAttempt, Person, User
from engine.store.repository import Store
from engine.stt import WhisperTranscriber
from engine.tts.tone import ToneSynthesizer
from tests.engine_harness import LLM_MODEL
from tests.fakes.ollama_server import FakeOllama
from tests.postgres import PostgresServer, throwaway_server

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
STORAGE_NOT_WORKING = "I couldn't do that: my storage isn't working. Please try again later."


def processes(url: str, count: int = 2) -> list[Store]:
    """`count` aLAN processes on one database, as far as the store can tell: each has its own engine and pool."""
    return [Store(open_database(url)) for _ in range(count)]


def at_once(calls: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run the calls in threads released together; each one's result, or what it raised."""
    start = threading.Barrier(len(calls))
    results: list[T | BaseException] = [RuntimeError("did not run")] * len(calls)

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = calls[index]()
        except BaseException as error:  # collected for the test to look at
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def settings_for(url: str) -> Settings:
    return Settings(_env_file=None, ALAN_DATABASE_URL=url)  # type: ignore[call-arg]


# Several processes on one database ----------------------------------------------------------------------


def test_a_link_code_sent_from_two_processes_at_once_links_once(postgres_url: str) -> None:
    one, other = processes(postgres_url)
    holder = one.user("telegram", "1", "Ann")
    claimants = [one.user("discord", "2", "annie"), other.user("discord", "3", "mallory")]
    for _ in range(5):  # a few rounds: a race is only a race when it can go either way
        code = LinkStore(one.sessions).issue(holder.id)
        results = at_once([
            lambda store=store, claimant=claimant, code=code: LinkStore(store.sessions).link(claimant.id, code)
            for store, claimant in zip((one, other), claimants, strict=True)
        ])  # fmt: skip
        linked = [result for result in results if not isinstance(result, BaseException)]
        refused = [result for result in results if isinstance(result, LinkError)]
        assert len(linked) == 1 and len(refused) == 1, results
        assert str(refused[0]) == BAD_CODE  # used: the same answer as any wrong code
        assert not [result for result in results if isinstance(result, StorageUnavailableError)]
        winner = next(c for c, r in zip(claimants, results, strict=True) if not isinstance(r, BaseException))
        assert {u.id for u in LinkStore(one.sessions).linked(holder.id)} == {winner.id}
        LinkStore(other.sessions).unlink(winner.id)
    with one.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Person)) == 3  # each account a person again


def test_a_persons_first_messages_at_two_processes_make_one_person(postgres_url: str) -> None:
    stores = processes(postgres_url, 3)
    for round_ in range(5):
        who = f"new-{round_}"
        users = at_once([lambda store=store, who=who: store.user("telegram", who, "Ann") for store in stores])
        assert not [user for user in users if isinstance(user, BaseException)], users
        assert len({user.id for user in users}) == 1 and len({user.person_id for user in users}) == 1
    with stores[0].sessions() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 5
        assert session.scalar(select(func.count()).select_from(Person)) == 5


def test_wrong_codes_sent_from_several_processes_at_once_are_all_counted(postgres_url: str) -> None:
    stores = processes(postgres_url, 2)
    holder = stores[0].user("telegram", "1", "Ann")
    mallory = stores[0].user("discord", "6", "mallory")
    code = LinkStore(stores[0].sessions).issue(holder.id)
    guesses = 2 * MAX_FAILURES
    links = [LinkStore(stores[index % 2].sessions) for index in range(guesses)]
    results = at_once([lambda link=link: link.holder(mallory.id, "ZZZZZ-ZZZZZ") for link in links])
    assert all(isinstance(result, LinkError) for result in results), results
    with stores[1].sessions() as session:
        attempts = session.get(LinkAttempt, mallory.id)
        # Each guess was counted before it was answered: past the limit, the rest were refused unchecked.
        assert attempts is not None and attempts.failures == MAX_FAILURES
    assert sum(str(result) == BAD_CODE for result in results) == MAX_FAILURES
    assert sum(str(result) == TOO_MANY for result in results) == guesses - MAX_FAILURES
    with pytest.raises(LinkError, match="^" + TOO_MANY):
        LinkStore(stores[1].sessions).holder(mallory.id, code)  # even the right code, from either process


def test_the_memory_cap_holds_when_two_processes_add_facts_at_once(postgres_url: str) -> None:
    stores = processes(postgres_url, 2)
    person = stores[0].user("telegram", "1", "Ann").person_id
    cap = 5
    memories = [MemoryStore(store.sessions) for store in stores]
    batches = [[FactChange("add", f"fact {side}-{n}") for n in range(4)] for side in range(2)]
    options = {"platform": "telegram", "scope": "c", "cap": cap, "epoch": 0}
    for _ in range(3):
        results = at_once([
            lambda memory=memory, batch=batch: memory.apply(person, batch, **options)
            for memory, batch in zip(memories, batches, strict=True)
        ])  # fmt: skip
        assert not [result for result in results if isinstance(result, BaseException)], results
        assert len(memories[1].facts(person)) == cap


def test_ids_are_never_given_twice_by_processes_writing_at_once(postgres_url: str) -> None:
    stores = processes(postgres_url, 2)
    ann = stores[0].user("telegram", "1", "Ann")
    results = at_once([
        lambda store=store, n=n: [store.add_turn(ann.id, "chat", "user", f"{n}-{i}").id for i in range(10)]
        for n, store in enumerate(stores * 2)
    ])  # fmt: skip
    ids = [turn_id for batch in results for turn_id in batch]  # type: ignore[union-attr]
    assert len(ids) == len(set(ids)) == 40
    stores[1].clear_conversation(ann.id)
    assert stores[0].add_turn(ann.id, "chat", "user", "after").id > max(ids)  # not even a deleted one's


# An aLAN process starting: once imported it says so, and migrates when told to go (all of them at once).
MIGRATE = """
import sys
from engine.store.database import upgrade
print("ready", flush=True)
sys.stdin.readline()
upgrade(sys.argv[1])
"""


def test_processes_starting_at_once_on_an_empty_database_migrate_it_once(postgres_url: str) -> None:
    command = [sys.executable, "-c", MIGRATE, postgres_url]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    started = [subprocess.Popen(command, cwd=ROOT, text=True, **pipes) for _ in range(3)]  # type: ignore[call-overload]
    for process in started:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    for process in started:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    outcomes = [(process.wait(timeout=120), process.communicate()[1]) for process in started]
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    assert current_revision(create_db_engine(postgres_url)) == head_revision()


def test_a_process_waits_for_another_ones_migration_however_long_it_takes(postgres_url: str) -> None:
    from engine.store.postgres import lock_migrations

    engine = create_db_engine(postgres_url)  # row locks in a turn wait 5 s at most ...
    with engine.connect() as connection, connection.begin():
        assert connection.exec_driver_sql("SHOW lock_timeout").scalar() == "5s"
        lock_migrations(connection)
        assert connection.exec_driver_sql("SHOW lock_timeout").scalar() == "0"  # ... the migration lock for ever
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SHOW lock_timeout").scalar() == "5s"  # only for that transaction
    engine.dispose()


def test_transactions_are_serializable_and_wait_for_a_lock_only_briefly(postgres_url: str) -> None:
    store = Store(open_database(postgres_url, busy_timeout_s=0.25))
    with store.sessions() as session:
        connection = session.connection()
        assert connection.exec_driver_sql("SHOW transaction_isolation").scalar() == "serializable"
        assert connection.exec_driver_sql("SHOW lock_timeout").scalar() == "250ms"
        assert connection.exec_driver_sql("SHOW application_name").scalar() == "alan"


# Faults ---------------------------------------------------------------------------------------------------


def unreachable_url() -> str:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and nothing will listen there
    return f"postgresql+psycopg://alan:s3cret-Pa55@127.0.0.1:{port}/alan"


def test_an_unreachable_server_is_named_in_words_without_the_password() -> None:
    url = unreachable_url()
    with pytest.raises(DatabaseUnusableError) as refused:
        open_database_or_explain(settings_for(url))
    message = str(refused.value)
    port = make_url(url).port
    assert f"aLAN can't reach the PostgreSQL server at 127.0.0.1:{port}" in message
    assert "user alan" in message and "Connection refused" in message and "sudo service postgresql start" in message
    assert "s3cret" not in message and "sqlalche.me" not in message and "\n" not in message
    check = doctor.check_database(settings_for(url))  # `alan doctor` says the same
    assert check.status is doctor.Status.FAILED and f"127.0.0.1:{port}" in check.detail
    assert "s3cret" not in check.detail + check.fix


def test_a_wrong_password_and_a_missing_database_are_told_apart(postgres_server: PostgresServer) -> None:
    url = postgres_server.url
    wrong = url.set(password="not-the-password").render_as_string(hide_password=False)
    with pytest.raises(DatabaseUnusableError) as refused:
        open_database_or_explain(settings_for(wrong))
    assert f"refused user {url.username}" in str(refused.value) and "not-the-password" not in str(refused.value)
    assert "password" in str(refused.value)  # the server's words: "password authentication failed"

    missing = url.set(database="alan_no_such_database").render_as_string(hide_password=False)
    what, fix = open_failure(settings_for(missing), _connect_error(missing))
    assert what.startswith("The database alan_no_such_database doesn't exist on the PostgreSQL server at")
    assert f"-O {url.username} alan_no_such_database" in fix and str(url.password) not in what + fix


def _connect_error(url: str) -> BaseException:
    try:
        create_db_engine(url).connect()
    except Exception as error:
        return error
    raise AssertionError("connected")


def test_a_plain_postgresql_url_uses_psycopg(postgres_url: str) -> None:
    plain = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    store = Store(open_database(plain))
    assert store.user("telegram", "1").id == 1
    assert store.sessions.kw["bind"].dialect.driver == "psycopg"


def test_a_store_operation_on_an_unreachable_server_is_told_as_storage_not_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = unreachable_url()
    # A session factory without migrating: there is no server to migrate.
    store = Store(sessionmaker(create_db_engine(url), expire_on_commit=False), retry_delays=(0.01,))
    caplog.set_level(logging.INFO, logger="engine.store")
    with pytest.raises(StorageUnavailableError) as refused:
        store.add_turn(1, "chat", "user", "hello")
    assert str(refused.value) == "I couldn't save that: my storage isn't working. Please try again later."
    assert "can't be reached" in refused.value.detail and "s3cret" not in refused.value.detail
    assert len([record for record in caplog.records if "trying again" in record.getMessage()]) == 1
    assert "s3cret" not in caplog.text


def test_a_connection_the_server_ends_mid_transaction_is_retried_and_nothing_is_lost(
    postgres_server: PostgresServer, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What a server restart or a failover does to a connection in use: the transaction is rolled back by the
    server, and the store runs it again on a new connection."""
    store = Store(open_database(postgres_url))
    ann = store.user("telegram", "1", "Ann")
    engine = store.sessions.kw["bind"]
    ended: list[int] = []

    @event.listens_for(engine, "before_cursor_execute")
    def end_the_connection(connection, _cursor, statement, *_):  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT INTO turns") and not ended:
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with postgres_server.admin() as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            ended.append(pid)

    caplog.set_level(logging.INFO, logger="engine.store")
    store.add_turn(ann.id, "chat", "user", "said while the server restarted")
    assert ended and [turn.text for turn in store.recent_turns(ann.id, "chat")] == ["said while the server restarted"]
    assert any("trying again" in record.getMessage() for record in caplog.records)


def test_a_row_locked_past_lock_timeout_is_told_as_busy_and_one_released_soon_is_waited_out(
    postgres_url: str,
) -> None:
    impatient = Store(open_database(postgres_url, busy_timeout_s=0.05), retry_delays=(0.05, 0.1))
    patient = Store(open_database(postgres_url, busy_timeout_s=0.05), retry_delays=(0.5, 1.0))
    ann = impatient.user("telegram", "1", "Ann")
    holder = psycopg.connect(make_url(postgres_url).set(drivername="postgresql").render_as_string(
        hide_password=False))  # fmt: skip
    try:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")  # a long transaction in psql, say
        with pytest.raises(StorageUnavailableError) as refused:
            impatient.set_reply_with_text(ann.id, False)
        assert str(refused.value) == "I couldn't change that setting: my storage is busy. Please try again in a moment."
        assert "lock_timeout" in refused.value.detail
        holder.rollback()

        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        release = threading.Timer(0.2, holder.rollback)
        release.start()
        patient.set_reply_with_text(ann.id, False)  # waited out, tried again, kept
        release.join()
    finally:
        holder.close()
    found = impatient.find_user("telegram", "1")
    assert found is not None and found.reply_with_text is False


def test_a_read_only_database_is_told_as_read_only(postgres_url: str) -> None:
    store = Store(open_database(postgres_url))
    ann = store.user("telegram", "1", "Ann")
    name = make_url(postgres_url).database
    with store.sessions() as session:  # what a standby, or an operator's setting, does to every new connection
        session.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
        session.commit()
    store.sessions.kw["bind"].dispose()
    with pytest.raises(StorageUnavailableError) as refused:
        store.add_turn(ann.id, "chat", "user", "hello")
    assert str(refused.value) == "I couldn't save that: my storage is read-only. Please try again later."
    assert "primary" in refused.value.detail
    assert [turn.text for turn in store.recent_turns(ann.id, "chat")] == []  # reading still works


# A server stopped mid-run: its own throwaway server, since it is stopped -----------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    from tests.postgres import PostgresMissingError

    try:
        with throwaway_server() as server:
            yield server
    except PostgresMissingError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
async def conversation_on_own_server(own_server: PostgresServer, whisper: WhisperTranscriber, ollama: FakeOllama):  # type: ignore[no-untyped-def]
    with own_server.database() as url:
        store = Store(open_database(url), retry_delays=(0.05,))
        llm = OllamaChat(LLM_MODEL, ollama.host, first_token_timeout=30, token_timeout=30)
        made = Conversation(store, whisper, ToneSynthesizer(), llm, max_audio_seconds=60,
                            max_audio_bytes=20 * 1024 * 1024)  # fmt: skip
        yield made, store
        await made._keeper.aclose()
        store.sessions.kw["bind"].dispose()


async def test_a_server_stopped_mid_run_is_told_and_nothing_is_promised_then_it_goes_on(
    conversation_on_own_server: tuple[Conversation, Store], own_server: PostgresServer, ollama: FakeOllama,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    conversation, store = conversation_on_own_server
    who = Participant("telegram", "1", "chat", "Ann")
    ollama.script("Hello Ann.")
    [_ async for _ in conversation.turn(who, text="hello", speak=False)]
    await conversation.memory_settled()
    own_server.pg_ctl("stop", "-m", "fast")
    try:
        with pytest.raises(StorageUnavailableError) as refused:
            [event async for event in conversation.turn(who, text="are you still there?", speak=False)]
        # Looking the person up is the turn's first use of the database: it fails there, before any word is kept.
        assert str(refused.value) == STORAGE_NOT_WORKING
        assert "can't be reached" in refused.value.detail
        assert len(ollama.chat_requests) == 1  # not answered: nothing was kept to answer
        assert not [record for record in caplog.records if record.exc_info]  # a line, not a traceback
    finally:
        own_server.pg_ctl("start")
    ollama.script("Yes, I'm here.")
    events = [event async for event in conversation.turn(who, text="are you still there?", speak=False)]
    assert [event.text for event in events if isinstance(event, ReplySentence)] == ["Yes, I'm here."]
    user = store.find_user("telegram", "1")
    assert user is not None
    assert [turn.text for turn in store.recent_turns(user.id, "chat")] == [
        "hello", "Hello Ann.", "are you still there?", "Yes, I'm here."
    ]  # fmt: skip
