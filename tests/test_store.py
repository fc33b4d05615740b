from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from engine.errors import VoiceNameTakenError
from engine.speech_synthesizer import SpeechPayload
from engine.store.database import create_db_engine, current_revision, downgrade, head_revision, open_database, upgrade
from engine.store.models import Base, ScopeVoice, Turn, User, UserVoiceChoice, Voice
from engine.store.repository import EVERYWHERE, Store
from tests.postgres import DATABASES, database_url_for, insert_rows

APP_TABLES = {
    "users", "voices", "turns", "user_voice_choices", "scope_voices", "scope_settings", "people", "memories",
    "link_codes", "link_attempts",
}  # fmt: skip


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite and on PostgreSQL, each time on a new, empty database."""
    return database_url_for(request)


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(open_database(database_url))


def add_voice(store: Store, owner_id: int | None, name: str) -> Voice:
    return store.add_voice(
        owner_id,
        name,
        reference_audio=b"OggS...",
        reference_seconds=4.0,
        transcript="hello there",
        consent_statement="This is my voice.",
    )


def test_upgrade_from_empty_and_downgrade_to_base(database_url: str) -> None:
    engine = create_db_engine(database_url)
    upgrade(database_url)
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) >= APP_TABLES
    downgrade(database_url, "base")
    assert current_revision(engine) is None
    assert not APP_TABLES & set(inspect(engine).get_table_names())
    upgrade(database_url)  # and back up again
    assert current_revision(engine) == head_revision()


def test_every_table_that_never_reuses_ids_keeps_autoincrement_through_the_migrations(database_url: str) -> None:
    upgrade(database_url)
    declared = {table.name for table in Base.metadata.sorted_tables if table.kwargs.get("sqlite_autoincrement")}
    assert declared >= {"users", "turns", "voices", "people", "memories"}
    with create_db_engine(database_url).connect() as connection:
        if connection.dialect.name == "sqlite":
            tables = dict(connection.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")).all())
            assert {name for name in declared if "AUTOINCREMENT" not in tables[name]} == set()
        else:  # PostgreSQL: a sequence, which never hands out a number twice (nor one rolled back)
            sequences = {
                name: connection.execute(text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": name}).scalar()
                for name in declared
            }
            assert {name for name, sequence in sequences.items() if sequence is None} == set()


def test_migrated_schema_matches_the_orm(database_url: str) -> None:
    upgrade(database_url)
    with create_db_engine(database_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "render_as_batch": True})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrading_0001_keeps_every_row_and_tags_csm_payloads(database_url: str) -> None:
    """0002 makes CSM's codes an opaque, tagged payload: a populated 0001 database keeps all it held."""
    upgrade(database_url, "0001")
    engine = create_db_engine(database_url)
    with engine.begin() as connection:
        insert_rows(connection, "users", dict(id=1, platform="telegram", platform_user_id="42",
                                              created_at="2026-11-30 10:00:00"))  # fmt: skip
        insert_rows(connection, "voices", dict(
            id=1, owner_id=1, name="me", reference_audio=b"OggS", reference_seconds=4.0, transcript="hello",
            codes=b"\x01\x00", codes_codebooks=1, codes_model="sesame/csm-1b", created_at="2026-11-30 10:00:00",
        ))  # fmt: skip
        insert_rows(
            connection, "turns",
            dict(id=1, user_id=1, scope="chat", role="user", text="hi", audio=b"OggS", codes=b"\x02\x00",
                 codes_codebooks=1, created_at="2026-11-30 10:00:01"),
            dict(id=2, user_id=1, scope="chat", role="assistant", text="hello", audio=None, codes=None,
                 codes_codebooks=None, created_at="2026-11-30 10:00:02"),
        )  # fmt: skip
        insert_rows(connection, "user_voice_choices", dict(user_id=1, scope="", voice_id=1))
    upgrade(database_url)
    store = Store(open_database(database_url))
    voice = store.voice(1)
    assert voice is not None and (voice.speech, voice.speech_model) == (b"\x01\x00", "csm:sesame/csm-1b")
    turns = store.recent_turns(1, "chat")
    assert [(t.text, t.audio, t.speech, t.speech_model) for t in turns] == [
        ("hi", b"OggS", b"\x02\x00", ""),  # its model was never recorded: no backend will read it
        ("hello", None, None, None),
    ]
    assert store.active_voice(1, "chat").id == 1
    store.add_turn(1, "chat", "assistant", "beep", speech=SpeechPayload("tone:tone", b"\x00\x00\x34\x43"))

    downgrade(database_url, "0001")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT codes, codes_codebooks, codes_model FROM voices")).one() == (
            b"\x01\x00", 32, "sesame/csm-1b"
        )
        assert connection.execute(text("SELECT count(*) FROM turns")).scalar() == 3
        # Only CSM's codes go back as codes: 0001 would read the tone synthesizer's bytes as Mimi codes.
        assert connection.execute(text("SELECT codes, codes_codebooks FROM turns WHERE text = 'beep'")).one() == (
            None, None
        )


def test_upgrading_0002_keeps_every_row_as_addressed_and_adds_listen_settings(database_url: str) -> None:
    """0003 adds heard-only turns and each conversation's /listen mode: a populated 0002 database keeps all it held."""
    upgrade(database_url, "0002")
    engine = create_db_engine(database_url)
    with engine.begin() as connection:
        insert_rows(connection, "users", dict(id=1, platform="discord", platform_user_id="7", display_name="Ann",
                                              reply_with_text=True, created_at="2026-12-01 10:00:00"))  # fmt: skip
        insert_rows(connection, "voices", dict(id=1, owner_id=1, name="me", reference_audio=b"OggS",
                                               reference_seconds=4.0, transcript="hello",
                                               created_at="2026-12-01 10:00:00"))  # fmt: skip
        insert_rows(
            connection, "turns",
            dict(id=1, user_id=1, scope="chan", role="user", text="hi", audio=b"OggS", speech=b"\x02\x00",
                 speech_model="csm:x", created_at="2026-12-01 10:00:01"),
            dict(id=2, user_id=1, scope="chan", role="assistant", text="hello", audio=None, speech=None,
                 speech_model=None, created_at="2026-12-01 10:00:02"),
            dict(id=3, user_id=1, scope="chan", role="user", text="anyone?", audio=None, speech=None,
                 speech_model=None, created_at="2026-12-01 10:00:03"),
        )  # fmt: skip
        insert_rows(connection, "user_voice_choices", dict(user_id=1, scope="", voice_id=1))
        insert_rows(connection, "scope_voices", dict(scope="g", voice_id=1, set_by_user_id=1))
    upgrade(database_url)
    store = Store(open_database(database_url))
    turns = store.recent_turns(1, "chan")
    assert [(t.text, t.audio, t.speech, t.addressed) for t in turns] == [
        ("hi", b"OggS", b"\x02\x00", True),
        ("hello", None, None, True),
        ("anyone?", None, None, True),  # every earlier turn was said to aLAN: the last still waits for its answer
    ]
    assert [turn.id for turn, _ in store.unanswered_turns("discord", turns[0].created_at)] == [3]
    assert store.active_voice(1, "chan").id == 1 and store.active_voice(2, "x", "g").id == 1
    assert store.listen_mode("chan") is None
    store.set_listen_mode("chan", "off")
    store.add_turn(1, "chan", "user", "to Bob", addressed=False)
    assert store.listen_mode("chan") == "off"

    downgrade(database_url, "0002")
    with engine.connect() as connection:
        assert "scope_settings" not in inspect(engine).get_table_names()
        # The turn heard but not said to aLAN goes: 0002 would follow it up as a question left unanswered.
        assert connection.execute(text("SELECT text FROM turns ORDER BY id")).scalars().all() == [
            "hi", "hello", "anyone?"
        ]  # fmt: skip
        assert connection.execute(text("SELECT count(*) FROM user_voice_choices")).scalar() == 1


def test_upgrading_0003_makes_each_account_a_person_and_keeps_every_row(database_url: str) -> None:
    upgrade(database_url, "0003")
    engine = create_db_engine(database_url)
    with engine.begin() as connection:
        insert_rows(
            connection, "users",
            dict(id=1, platform="telegram", platform_user_id="7", display_name="Ann", reply_with_text=True,
                 created_at="2026-12-01 10:00:00"),
            dict(id=3, platform="discord", platform_user_id="9", display_name="Bob", reply_with_text=False,
                 created_at="2026-12-01 11:00:00"),
            dict(id=5, platform="telegram", platform_user_id="8", display_name="Forgotten", reply_with_text=True,
                 created_at="2026-12-01 12:00:00"),
        )  # fmt: skip
        connection.execute(text("DELETE FROM users WHERE id = 5"))  # /forget: their number is never given again
        insert_rows(connection, "voices", dict(id=1, owner_id=1, name="me", reference_audio=b"OggS",
                                               reference_seconds=4.0, transcript="hello",
                                               created_at="2026-12-01 10:00:00"))  # fmt: skip
        insert_rows(
            connection, "turns",
            dict(id=1, user_id=1, scope="chat", role="user", text="hi", addressed=True,
                 created_at="2026-12-01 10:00:01"),
            dict(id=2, user_id=1, scope="chat", role="assistant", text="hello", addressed=True,
                 created_at="2026-12-01 10:00:02"),
            dict(id=5, user_id=3, scope="chan", role="user", text="to Ann", addressed=False,
                 created_at="2026-12-01 10:00:03"),
        )  # fmt: skip
        insert_rows(connection, "user_voice_choices", dict(user_id=1, scope="", voice_id=1))
        insert_rows(connection, "scope_settings", dict(scope="chan", listen_mode="off"))
    upgrade(database_url)
    store = Store(open_database(database_url))
    ann, bob = store.find_user("telegram", "7"), store.find_user("discord", "9")
    assert ann is not None and bob is not None
    assert (ann.id, ann.person_id, bob.id, bob.person_id, bob.reply_with_text) == (1, 1, 3, 3, False)
    assert [t.text for t in store.recent_turns(1, "chat")] == ["hi", "hello"]
    assert [(t.text, t.addressed) for t in store.recent_turns(3, "chan")] == [("to Ann", False)]
    assert store.active_voice(1, "chat").id == 1 and store.listen_mode("chan") == "off"
    carol = store.user("telegram", "8", "Carol")  # new accounts and people never take an old number
    assert carol.id == 6 and carol.person_id == 4
    assert store.add_turn(carol.id, "c", "user", "hey").id == 6

    downgrade(database_url, "0003")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM users")).scalar() == 3
        assert connection.execute(text("SELECT count(*) FROM turns")).scalar() == 4
        assert "person_id" not in {column["name"] for column in inspect(engine).get_columns("users")}


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'alan.db'}"
    upgrade(database_url)
    with create_db_engine(database_url).connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_user_is_unique_per_platform_and_keeps_its_name_current(store: Store) -> None:
    first = store.user("telegram", "42", "Ann")
    again = store.user("telegram", "42", "Annie")
    other_platform = store.user("discord", "42")
    assert first.id == again.id != other_platform.id
    found = store.find_user("telegram", "42")
    assert found is not None and found.display_name == "Annie"
    with pytest.raises(IntegrityError), store.sessions.begin() as session:
        session.add(User(platform="telegram", platform_user_id="42"))


def test_forget_deletes_every_row_of_the_user_and_nothing_else(store: Store) -> None:
    ann = store.user("telegram", "1", "Ann")
    bob = store.user("telegram", "2", "Bob")
    for user in (ann, bob):
        voice = add_voice(store, user.id, "me")
        store.choose_voice(user.id, voice.id)
        store.set_scope_voice(f"chat-{user.id}", voice.id, set_by_user_id=user.id)
        store.add_turn(user.id, "chat", "user", "hi", audio=b"OggS", speech=SpeechPayload("csm:m", b"\x00\x00"))
        store.add_turn(user.id, "chat", "assistant", "hello")
    store.forget_user(ann.id)

    sessions: sessionmaker[Session] = store.sessions
    with sessions() as session:
        assert session.get(User, ann.id) is None
        for model, column in (
            (Voice, Voice.owner_id),
            (Turn, Turn.user_id),
            (UserVoiceChoice, UserVoiceChoice.user_id),
        ):
            assert session.scalar(select(func.count()).select_from(model).where(column == ann.id)) == 0
            assert session.scalar(select(func.count()).select_from(model).where(column == bob.id)) >= 1
        assert session.scalar(select(func.count()).select_from(ScopeVoice)) == 1  # Bob's scope voice stays
    assert store.active_voice(bob.id, "chat") is not None


def test_active_voice_prefers_scope_choice_then_everywhere_then_scope_default(store: Store) -> None:
    ann = store.user("discord", "1")
    manager = store.user("discord", "9")
    house = add_voice(store, manager.id, "house")
    general = add_voice(store, ann.id, "general")
    special = add_voice(store, ann.id, "special")
    assert store.active_voice(ann.id, "guild-1") is None
    store.set_scope_voice("guild-1", house.id, set_by_user_id=manager.id)
    assert store.active_voice(ann.id, "guild-1").id == house.id
    store.choose_voice(ann.id, general.id, EVERYWHERE)
    assert store.active_voice(ann.id, "guild-1").id == general.id
    store.choose_voice(ann.id, special.id, "guild-1")
    assert store.active_voice(ann.id, "guild-1").id == special.id
    assert store.active_voice(ann.id, "guild-2").id == general.id
    store.delete_voice(special.id)  # deleting a chosen voice falls back, it doesn't dangle
    assert store.active_voice(ann.id, "guild-1").id == general.id


def test_a_parent_scopes_default_applies_where_the_scope_has_none(store: Store) -> None:
    manager = store.user("discord", "9")
    bob = store.user("discord", "2")
    server_voice = add_voice(store, manager.id, "server")
    channel_voice = add_voice(store, manager.id, "channel")
    store.set_scope_voice("guild-1", server_voice.id, set_by_user_id=manager.id)
    assert store.active_voice(bob.id, "channel-7") is None
    assert store.active_voice(bob.id, "channel-7", parent_scope="guild-1").id == server_voice.id
    store.set_scope_voice("channel-7", channel_voice.id)
    assert store.active_voice(bob.id, "channel-7", parent_scope="guild-1").id == channel_voice.id


def test_voice_names_are_unique_per_owner(store: Store) -> None:
    ann = store.user("telegram", "1")
    bob = store.user("telegram", "2")
    mine = add_voice(store, ann.id, "me")
    add_voice(store, bob.id, "me")  # another owner may use the same name
    with pytest.raises(VoiceNameTakenError):
        add_voice(store, ann.id, "me")
    other = add_voice(store, ann.id, "other")
    with pytest.raises(VoiceNameTakenError):
        store.rename_voice(other.id, "me")
    store.rename_voice(mine.id, "old me")
    assert [voice.name for voice in store.voices_of(ann.id)] == ["old me", "other"]
    assert store.voice(mine.id).consent_at is not None


def test_recent_turns_are_the_newest_in_order_and_reset_clears_them(store: Store) -> None:
    ann = store.user("telegram", "1")
    for index in range(5):
        store.add_turn(ann.id, "chat", "user" if index % 2 == 0 else "assistant", f"turn {index}")
    store.add_turn(ann.id, "elsewhere", "user", "not here")
    assert [turn.text for turn in store.recent_turns(ann.id, "chat", limit=3)] == ["turn 2", "turn 3", "turn 4"]
    assert store.clear_conversation(ann.id, "chat") == 5
    assert store.recent_turns(ann.id, "chat") == []
    assert [turn.text for turn in store.recent_turns(ann.id, "elsewhere")] == ["not here"]
    with pytest.raises(ValueError, match="role"):
        store.add_turn(ann.id, "chat", "system", "no")


def test_forget_takes_the_house_voice_of_a_chat_only_they_talked_in(store: Store) -> None:
    ann = store.user("telegram", "1")
    bob = store.user("telegram", "2")
    store.add_turn(ann.id, "ann-private-chat", "user", "hi")
    store.add_turn(ann.id, "group", "user", "hi all")
    store.add_turn(bob.id, "group", "user", "hello")
    for scope in ("ann-private-chat", "group"):
        house = store.add_voice(
            None, f"house voice of {scope}", reference_audio=b"OggS", reference_seconds=2, transcript="Hi there.",
            house_scope=scope,
        )  # fmt: skip
        store.set_scope_voice(scope, house.id)
    store.forget_user(ann.id)
    assert store.active_voice(bob.id, "ann-private-chat") is None  # made for Ann alone: gone with her
    assert store.active_voice(bob.id, "group") is not None  # Bob still talks there


def test_a_forgotten_users_id_is_never_given_to_someone_else(store: Store) -> None:
    ann = store.user("telegram", "1")
    store.forget_user(ann.id)
    assert store.user("telegram", "2").id != ann.id


def test_text_with_a_nul_character_is_kept_without_it_on_postgresql(store: Store) -> None:
    # PostgreSQL's text can't hold one (SQLite's can): an LLM's reply or a display name with one must still be kept.
    ann = store.user("telegram", "1", "Ann\x00Lee")
    turn = store.add_turn(ann.id, "chat", "assistant", "Hello\x00 there.", audio=b"Og\x00gS")
    [kept] = store.recent_turns(ann.id, "chat")
    found = store.find_user("telegram", "1")
    assert found is not None and kept.id == turn.id and kept.audio == b"Og\x00gS"  # bytes stay as they are
    assert (kept.text, found.display_name) in (("Hello\x00 there.", "Ann\x00Lee"), ("Hello there.", "AnnLee"))
    sqlite = store.sessions.kw["bind"].dialect.name == "sqlite"
    assert ("\x00" in kept.text) is sqlite


def test_updating_a_turn_that_was_deleted_meanwhile_is_harmless(store: Store) -> None:
    ann = store.user("telegram", "1")
    turn = store.add_turn(ann.id, "chat", "user", "hi")
    store.clear_conversation(ann.id)
    assert store.set_turn_speech(turn.id, SpeechPayload("csm:m", b"\x00\x00")) is False


def test_two_first_messages_at_once_make_one_user(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Their group message is being kept while their question is answered: the other one creates them first.
    create = Store._user
    raced = []

    def racing(self: Store, platform: str, platform_user_id: str, display_name: str | None) -> User:
        if not raced:
            raced.append(create(self, platform, platform_user_id, display_name))
            raise IntegrityError("INSERT INTO users", {}, Exception("UNIQUE constraint failed"))
        return create(self, platform, platform_user_id, display_name)

    monkeypatch.setattr(Store, "_user", racing)
    user = store.user("telegram", "77", "Ann")
    assert user.id == raced[0].id and store.find_user("telegram", "77") is not None
