"""Nothing of a person stays on disk after /forget, nothing they said reaches a log line, and only the owner of
the data folder can read it. On PostgreSQL, whose files are the server's: nothing of theirs is left in any row,
and their dead rows are vacuumed out of the tables at once (what that does and doesn't guarantee: README)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text
from typer.testing import CliRunner

from alan.cli import app
from alan.cli_engine import local_participant
from engine.conversation import Conversation, Participant
from engine.errors import BadInputError, NoSpeechError
from engine.events import ReplySentence
from engine.store.database import open_database
from engine.store.repository import Store
from engine.stt import WhisperTranscriber
from tests.conftest import espeak_ogg
from tests.fakes.ollama_server import FakeOllama
from tests.postgres import DATABASES, database_url_for

PHRASE = "zebra-marmalade-quintet"  # never written by anything but the person in these tests
runner = CliRunner()


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest) -> str:
    """The conversations here run on SQLite and on PostgreSQL, each time on a new, empty database."""
    return database_url_for(request)


def files_holding(folder: Path, phrase: str) -> list[str]:
    """Every file under `folder` whose raw bytes contain `phrase` (as UTF-8), read while the database is open."""
    needle = phrase.encode()
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file() and
                  needle in path.read_bytes())  # fmt: skip


def remember_a_lot(store: Store, platform: str, platform_user_id: str, phrase: str) -> int:
    """A user whose name, words, audio, voice and chat's house voice all hold `phrase`."""
    user = store.user(platform, platform_user_id, f"Ann {phrase}")
    store.add_turn(user.id, "ann-chat", "user", f"my secret is {phrase}", audio=phrase.encode() * 50)
    store.add_turn(user.id, "ann-chat", "assistant", f"I will keep {phrase} safe")
    store.add_turn(user.id, "ann-chat", "user", f"a long message about {phrase} " * 400)  # overflow pages
    voice = store.add_voice(
        user.id, "me", reference_audio=phrase.encode() * 2000, reference_seconds=12.0,
        transcript=f"this is my voice saying {phrase}", consent_statement="mine",
    )  # fmt: skip
    store.choose_voice(user.id, voice.id)
    house = store.add_voice(
        None, "house voice of ann-chat", reference_audio=b"OggS", reference_seconds=2.0,
        transcript=f"I will keep {phrase} safe", house_scope="ann-chat",
    )  # fmt: skip
    store.set_scope_voice("ann-chat", house.id)
    return user.id


def test_forget_leaves_no_byte_of_the_person_in_any_file_while_the_database_stays_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = Store(open_database(f"sqlite:///{data / 'alan.db'}"))
    bob = store.user("telegram", "2", "Bob")
    for index in range(20):
        store.add_turn(bob.id, "bob-chat", "user", f"bob's own words {index} " * 30)
    ann = remember_a_lot(store, "telegram", "1", PHRASE)
    for index in range(20):
        store.add_turn(bob.id, "bob-chat", "assistant", f"an answer for bob {index} " * 30)
    assert files_holding(data, PHRASE)  # the test sees what is on disk

    store.forget_user(ann)

    assert files_holding(data, PHRASE) == []  # not in alan.db, alan.db-wal or alan.db-shm
    assert store.find_user("telegram", "1") is None
    assert len(store.recent_turns(bob.id, "bob-chat")) == 40  # everyone else's history is intact
    assert files_holding(data, "an answer for bob 19")


def test_reset_and_deleting_a_voice_leave_none_of_it_on_disk_either(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = Store(open_database(f"sqlite:///{data / 'alan.db'}"))
    ann = store.user("telegram", "1", "Ann")
    store.add_turn(ann.id, "chat", "user", "the conversation says tangerine-observatory")
    voice = store.add_voice(ann.id, "me", reference_audio=b"OggS" * 500, reference_seconds=10.0,
                            transcript="the clip says periwinkle-harbour", consent_statement="mine")  # fmt: skip
    assert files_holding(data, "tangerine-observatory") and files_holding(data, "periwinkle-harbour")
    assert store.clear_conversation(ann.id, "chat") == 1
    store.delete_voice(voice.id)
    assert files_holding(data, "tangerine-observatory") == files_holding(data, "periwinkle-harbour") == []


def rows_holding(engine: Engine, phrase: str) -> list[str]:
    """Every table with a row that holds `phrase` in any column: as text, or as bytes (a row cast to text shows a
    bytea column in hex)."""
    found = []
    with engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            row = f'"{table}"'
            where = f"strpos({row}::text, :words) > 0 OR strpos({row}::text, :hex) > 0"
            hits = connection.execute(
                text(f"SELECT count(*) FROM {row} WHERE {where}"), {"words": phrase, "hex": phrase.encode().hex()}
            ).scalar()
            if hits:
                found.append(table)
    return sorted(found)


def vacuumed_since(engine: Engine, moment: object) -> set[str]:
    """The tables VACUUM (not autovacuum) went through after `moment`."""
    with engine.connect() as connection:
        return set(connection.execute(
            text("SELECT relname FROM pg_stat_user_tables WHERE last_vacuum >= :moment"), {"moment": moment}
        ).scalars())  # fmt: skip


def test_forget_on_postgresql_leaves_no_row_of_the_person_and_vacuums_their_rows_out_at_once(
    postgres_url: str,
) -> None:
    store = Store(open_database(postgres_url))
    engine = store.sessions.kw["bind"]
    bob = store.user("telegram", "2", "Bob")
    store.add_turn(bob.id, "bob-chat", "user", "bob's own words")
    ann = remember_a_lot(store, "telegram", "1", PHRASE)
    assert rows_holding(engine, PHRASE) == ["turns", "users", "voices"]  # what the test looks for, it can see
    with engine.connect() as connection:
        started = connection.execute(text("SELECT clock_timestamp()")).scalar()

    store.forget_user(ann)

    assert rows_holding(engine, PHRASE) == []
    # Their dead rows are out of the tables and indexes now, not when autovacuum next comes by.
    assert vacuumed_since(engine, started) >= {"people", "users", "turns", "voices", "user_voice_choices"}
    assert [turn.text for turn in store.recent_turns(bob.id, "bob-chat")] == ["bob's own words"]


def test_reset_and_deleting_a_voice_on_postgresql_vacuum_too(postgres_url: str) -> None:
    store = Store(open_database(postgres_url))
    engine = store.sessions.kw["bind"]
    ann = store.user("telegram", "1", "Ann")
    store.add_turn(ann.id, "chat", "user", "the conversation says tangerine-observatory")
    voice = store.add_voice(ann.id, "me", reference_audio=b"OggS" * 500, reference_seconds=10.0,
                            transcript="the clip says periwinkle-harbour", consent_statement="mine")  # fmt: skip
    for deletion, phrase, table in (
        (lambda: store.clear_conversation(ann.id, "chat"), "tangerine-observatory", "turns"),
        (lambda: store.delete_voice(voice.id), "periwinkle-harbour", "voices"),
    ):
        with engine.connect() as connection:
            started = connection.execute(text("SELECT clock_timestamp()")).scalar()
        assert rows_holding(engine, phrase) == [table]
        deletion()
        assert rows_holding(engine, phrase) == [] and table in vacuumed_since(engine, started)
    with engine.connect() as connection:
        started = connection.execute(text("SELECT clock_timestamp()")).scalar()
    assert store.clear_conversation(ann.id) == 0  # nothing deleted: nothing to vacuum
    assert vacuumed_since(engine, started) == set()


async def test_a_clone_under_way_when_its_person_is_forgotten_elsewhere_is_not_saved(
    conversation: Conversation, other_conversation: Conversation, store: Store, tmp_path: Path
) -> None:
    ann = Participant("telegram", "1001", "1001", "Ann")
    owner = await conversation.clone_owner(ann)  # /clone here ...
    clip = espeak_ogg("This is my voice. I am reading a few sentences so that you can learn how I sound.", tmp_path)
    draft = await conversation.prepare_clone(clip, PHRASE)
    assert await other_conversation.forget(ann)  # ... /forget answered by another process, before the consent
    with pytest.raises(BadInputError, match="forget you"):
        await conversation.save_clone(ann, "mine", draft, PHRASE, owner=owner)
    assert await conversation.voices(ann) == []  # asking stores nothing either
    assert store.find_user("telegram", "1001") is None  # not made anew to hold the voice
    with store.sessions() as session:
        assert session.scalar(text("SELECT count(*) FROM voices")) == 0


@pytest.fixture
def rejecting_conversation(
    store: Store, tiny_whisper_dir: Path, tiny_speech, tiny_csm_dir: Path, ollama: FakeOllama  # type: ignore[no-untyped-def]
) -> Iterator[tuple[Conversation, list[str]]]:
    """The real engine with a Whisper that drops every segment it hears, keeping their texts for the test."""
    from tests.engine_harness import make_conversation

    dropped: list[str] = []

    def reject_everything(segment) -> str:  # type: ignore[no-untyped-def]
        dropped.append(segment.text.strip())
        return "low confidence"

    whisper = WhisperTranscriber(
        str(tiny_whisper_dir), "cpu", cpu_threads=2, temperatures=(0.0,), segment_filter=reject_everything
    )
    whisper.load()
    yield make_conversation(store, whisper, tiny_speech, tiny_csm_dir, ollama.host), dropped


def assert_not_logged(records: list[logging.LogRecord], words: list[str]) -> None:
    for record in records:
        logged = record.getMessage() + (record.exc_text or "")
        for word in words:
            assert word not in logged, f"{record.name} logged what the person said: {logged!r}"


async def test_a_turn_at_debug_level_logs_nobodys_words(
    conversation: Conversation, ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    who = Participant("telegram", "1", "chat")
    reply = f"The word {PHRASE.upper()} is safe with me."
    ollama.script(reply)
    events = [event async for event in conversation.turn(who, text=f"please remember {PHRASE}")]
    assert [event.text for event in events if isinstance(event, ReplySentence)] == [reply]
    await conversation.forget(who)
    assert caplog.records  # the turn did log (at DEBUG and above); none of it was words
    assert_not_logged(caplog.records, [PHRASE, PHRASE.upper()])


async def test_what_whisper_heard_but_dropped_is_not_logged(
    rejecting_conversation: tuple[Conversation, list[str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conversation, dropped = rejecting_conversation
    caplog.set_level(logging.DEBUG)
    note = espeak_ogg("This is what I said, and it is nobody else's business.", tmp_path)
    with pytest.raises(NoSpeechError):
        [event async for event in conversation.turn(Participant("telegram", "1", "chat"), audio=note)]
    heard = [text for text in dropped if len(text) >= 4]
    assert heard  # the tiny Whisper decoded something, and every segment was dropped
    assert any("no speech" in record.getMessage() for record in caplog.records)
    assert_not_logged(caplog.records, heard)


def test_the_data_folder_and_database_files_are_the_owners_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    previous = os.umask(0o022)  # the usual umask: new files 0644, new folders 0755
    try:
        data = tmp_path / "data"
        store = Store(open_database(f"sqlite:///{data / 'alan.db'}"))
        store.add_turn(store.user("telegram", "1").id, "chat", "user", "hello")
        files = sorted(path.name for path in data.iterdir())
        assert {"alan.db", "alan.db-wal", "alan.db-shm"} <= set(files)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name

        # What an older aLAN left readable is tightened on start, and that is said once.
        older = tmp_path / "older"
        older.mkdir(mode=0o755)
        (older / "alan.db").write_bytes(b"")
        (older / "alan.db").chmod(0o644)
        caplog.set_level(logging.WARNING)
        open_database(f"sqlite:///{older / 'alan.db'}")
        assert stat.S_IMODE(older.stat().st_mode) == 0o700
        assert stat.S_IMODE((older / "alan.db").stat().st_mode) == 0o600
        tightened = [record for record in caplog.records if "owner-only" in record.getMessage()]
        assert len(tightened) == 2  # the folder and the file
        open_database(f"sqlite:///{older / 'alan.db'}")
        assert len([record for record in caplog.records if "owner-only" in record.getMessage()]) == 2
    finally:
        os.umask(previous)


def test_a_file_uri_database_is_the_owners_alone_too(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        data = tmp_path / "data"
        store = Store(open_database(f"sqlite:///file:{data / 'alan.db'}?mode=rwc&cache=private&uri=true"))
        store.add_turn(store.user("telegram", "1").id, "chat", "user", "hello")
        files = sorted(path.name for path in data.iterdir())
        assert {"alan.db", "alan.db-wal", "alan.db-shm"} <= set(files)  # the URI named this file, not "file:…"
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    finally:
        os.umask(previous)


def test_a_shared_folder_is_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # sticky and world-writable, like /tmp: not aLAN's to close
    open_database(f"sqlite:///{shared / 'alan.db'}")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "alan.db").stat().st_mode) == 0o600


# `alan forget` ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("ALAN_DATA_DIR", str(clean_env / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield clean_env / "data"
    # The command set up logging on the runner's stream, which is closed now: later tests must not write to it.
    root.handlers[:] = handlers
    root.setLevel(level)


def test_alan_forget_deletes_the_local_user_after_asking(cli_env: Path) -> None:
    store = Store(open_database(f"sqlite:///{(cli_env / 'alan.db').resolve()}"))
    local = local_participant()  # who `alan talk` speaks as
    remember_a_lot(store, local.platform, local.user_id, "the-local-users-words")
    bob = store.user("telegram", "2", "Bob")
    store.add_turn(bob.id, "chat", "user", "bob stays")

    kept = runner.invoke(app, ["forget"], input="n\n")
    assert kept.exit_code == 1 and "Nothing was deleted" in kept.output
    assert store.find_user(local.platform, local.user_id) is not None

    done = runner.invoke(app, ["forget"], input="y\n")
    assert done.exit_code == 0, done.output
    assert "deleted" in done.output
    assert store.find_user(local.platform, local.user_id) is None
    assert files_holding(cli_env, "the-local-users-words") == []
    assert [turn.text for turn in store.recent_turns(bob.id, "chat")] == ["bob stays"]

    again = runner.invoke(app, ["forget", "--yes"])
    assert again.exit_code == 0 and "Nothing is stored about you" in again.output


def test_alan_forget_yes_skips_the_question(cli_env: Path) -> None:
    store = Store(open_database(f"sqlite:///{(cli_env / 'alan.db').resolve()}"))
    local = local_participant()
    user = store.user(local.platform, local.user_id)
    store.add_turn(user.id, local.scope, "user", "hello")
    result = runner.invoke(app, ["forget", "--yes"])
    assert result.exit_code == 0, result.output
    assert store.find_user(local.platform, local.user_id) is None

