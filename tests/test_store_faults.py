"""A locked or full database: waited out and retried when it can be, told as it is when it can't, never
promised kept when it wasn't, and the bots go on serving. Real SQLite files throughout: the lock is another
connection's `BEGIN EXCLUSIVE`, the full disk is SQLite's own page limit (`max_page_count`), which fails
writes with SQLITE_FULL exactly as a full disk does."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from alan.scheduler import TurnScheduler
from bot.discord.session import participant
from bot.discord.text import answer_mention
from bot.discord.views import ForgetView
from engine.conversation import Conversation, Participant
from engine.errors import StorageUnavailableError
from engine.events import ReplySentence
from engine.store.database import open_database
from engine.store.links import LinkStore
from engine.store.memories import MemoryStore
from engine.store.repository import Store
from engine.stt import WhisperTranscriber
from engine.tts.csm import CsmSpeech
from tests import test_telegram as harness
from tests.discord_doubles import FakeGuild, FakeInteraction, FakeMember
from tests.engine_harness import make_conversation
from tests.fakes.ollama_server import FakeOllama
from tests.test_discord_voice import FakeMessage, FakeTextChannel
from tests.test_telegram import Start

start_bot = harness.start_bot

NOT_KEPT_BUSY = (
    "I couldn't save your message, so I haven't answered it: my storage is busy. Please try again in a moment."
)
NOT_KEPT_FULL = "I couldn't save your message, so I haven't answered it: my storage is full. Please try again later."
ANN = {"id": 1001, "is_bot": False, "first_name": "Ann"}


@contextlib.contextmanager
def exclusive_lock(database_url: str, *, release_after_s: float | None = None) -> Iterator[sqlite3.Connection]:
    """Another connection holding the database's write lock (`BEGIN EXCLUSIVE`), optionally letting go soon."""
    holder = sqlite3.connect(make_url(database_url).database, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    timer = threading.Timer(release_after_s, holder.rollback) if release_after_s is not None else None
    if timer is not None:
        timer.start()
    try:
        yield holder
    finally:
        if timer is not None:
            timer.join()
        holder.rollback()
        holder.close()


class PageLimit:
    """SQLite's page limit on every connection of a store's engine: past it, writes fail as on a full disk."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.sessions.kw["bind"]
        self.limit: int | None = None
        event.listen(self.engine, "connect", self._apply)

    def _apply(self, dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        if self.limit is not None:
            dbapi_connection.execute(f"PRAGMA max_page_count={self.limit}")

    def fill(self) -> None:
        """Cap the database a few pages above its size and write until not even a byte more fits."""
        with self.engine.connect() as connection:
            pages = connection.exec_driver_sql("PRAGMA page_count").scalar()
        self.limit = int(pages) + 3
        self.engine.dispose()  # pooled connections reconnect with the limit
        filler = self.store.user("test", "filler")
        for size in (3000, 300, 30, 1):
            with contextlib.suppress(StorageUnavailableError):
                while True:
                    self.store.add_turn(filler.id, "filler", "user", "x" * size)

    def free(self) -> None:
        self.limit = 1 << 30
        self.engine.dispose()


@pytest.fixture
def impatient(database_url: str) -> Store:
    """A store that waits only briefly for a lock, so that a lock held "too long" is short enough for a test."""
    return Store(open_database(database_url, busy_timeout_s=0.05), retry_delays=(0.05, 0.1))


@pytest.fixture
def impatient_conversation(
    impatient: Store, whisper: WhisperTranscriber, tiny_speech: CsmSpeech, tiny_csm_dir: Path, ollama: FakeOllama
) -> Conversation:
    return make_conversation(impatient, whisper, tiny_speech, tiny_csm_dir, ollama.host)


def test_a_write_that_meets_a_lock_is_tried_again_and_kept(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(open_database(database_url, busy_timeout_s=0.05), retry_delays=(1.0, 2.0, 4.0))
    ann = store.user("telegram", "1")
    caplog.set_level(logging.INFO, logger="engine.store")
    with exclusive_lock(database_url, release_after_s=0.2):
        store.add_turn(ann.id, "chat", "user", "hello through the lock")
    assert [turn.text for turn in store.recent_turns(ann.id, "chat")] == ["hello through the lock"]
    assert any("trying again" in record.getMessage() for record in caplog.records)  # the retry did it


def test_sqlite_waits_for_a_lock_itself_for_seconds(database_url: str) -> None:
    store = Store(open_database(database_url))
    with store.sessions() as session:
        assert session.connection().exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000


async def test_a_lock_held_too_long_is_told_and_the_message_is_not_promised_kept(
    impatient_conversation: Conversation, impatient: Store, database_url: str, ollama: FakeOllama,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    who = Participant("telegram", "1", "chat", "Ann")
    user = impatient.user(who.platform, who.user_id, who.display_name)
    with exclusive_lock(database_url), pytest.raises(StorageUnavailableError) as refused:
        [event async for event in impatient_conversation.turn(who, text="are you there?", speak=False)]
    assert str(refused.value) == NOT_KEPT_BUSY
    assert "locked" in refused.value.detail  # the operator's side
    assert ollama.chat_requests == [] and impatient.recent_turns(user.id, "chat") == []
    assert not [record for record in caplog.records if record.exc_info]  # a line, not a traceback
    assert any(record.levelno == logging.ERROR and "busy" in record.getMessage() for record in caplog.records)

    ollama.script("Yes, I'm here.")  # once the lock is gone, the same message goes through
    events = [event async for event in impatient_conversation.turn(who, text="are you there?", speak=False)]
    assert [event.text for event in events if isinstance(event, ReplySentence)] == ["Yes, I'm here."]


async def test_a_full_disk_is_told_and_nothing_is_promised(
    conversation: Conversation, store: Store, ollama: FakeOllama
) -> None:
    who = Participant("telegram", "1", "chat", "Ann")
    store.user(who.platform, who.user_id, who.display_name)
    full = PageLimit(store)
    full.fill()
    with pytest.raises(StorageUnavailableError) as refused:
        [event async for event in conversation.turn(who, text="hello, is anyone there?", speak=False)]
    assert str(refused.value) == NOT_KEPT_FULL and "free some space" in refused.value.detail
    assert ollama.chat_requests == []
    full.free()
    ollama.script("Here I am.")
    events = [event async for event in conversation.turn(who, text="hello, is anyone there?", speak=False)]
    assert [event.text for event in events if isinstance(event, ReplySentence)] == ["Here I am."]


async def test_when_the_answer_cannot_be_stored_the_person_gets_it_and_is_told(
    conversation: Conversation, store: Store, ollama: FakeOllama
) -> None:
    who = Participant("telegram", "1", "chat", "Ann")
    full = PageLimit(store)
    ollama.script("Here is my answer. It has two sentences.")
    events: list[object] = []
    with pytest.raises(StorageUnavailableError) as refused:
        async for event in conversation.turn(who, text="tell me everything", speak=False):
            events.append(event)
            if len(events) == 1:
                full.fill()  # the disk fills up while the answer is being written
    assert [event.text for event in events if isinstance(event, ReplySentence)] == [
        "Here is my answer.", "It has two sentences."
    ]  # fmt: skip
    assert str(refused.value) == (
        "I couldn't keep my answer in our conversation: my storage is full. Please try again later."
    )
    user = store.find_user("telegram", "1")
    assert user is not None and [turn.role for turn in store.recent_turns(user.id, "chat")] == ["user"]


async def test_telegram_tells_a_full_disk_and_goes_on_serving(
    start_bot: Start, store: Store, ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    telegram = await start_bot()
    chat = telegram.private_chat(ANN)
    full = PageLimit(store)
    full.fill()
    telegram.push_message(chat, ANN, text="hello, can you hear me?")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda call: "my storage is full" in call.text)
    assert ollama.chat_requests == []
    assert not [record for record in caplog.records if record.exc_info]

    full.free()
    ollama.script("Loud and clear.")
    telegram.push_message(chat, ANN, text="hello again")
    [answer] = await telegram.wait_for("sendVoice", chat_id=ANN["id"])
    assert answer.params["caption"] == "Loud and clear."


async def test_discord_tells_a_full_disk_and_a_busy_forget(
    impatient_conversation: Conversation, impatient: Store, database_url: str, ollama: FakeOllama
) -> None:
    guild, channel = FakeGuild(), FakeTextChannel()
    carol = guild.add(FakeMember("carol"))
    full = PageLimit(impatient)
    full.fill()
    message = FakeMessage(carol, f"<@{guild.me.id}> hello there", [guild.me], channel)
    assert await answer_mention(message, bot_user=guild.me, conversation=impatient_conversation,
                                scheduler=TurnScheduler(), session=None) is None  # fmt: skip
    assert message.replies == [NOT_KEPT_FULL]
    full.free()

    who = participant(carol, 1)
    impatient.user(who.platform, who.user_id, who.display_name)
    view = ForgetView(impatient_conversation, who, carol.id)
    press = FakeInteraction(carol, guild)
    with exclusive_lock(database_url):
        await view.confirm.callback(press)
    assert press.last.content == "I couldn't delete your data: my storage is busy. Please try again in a moment."
    assert not view.forgotten and impatient.find_user("discord", str(carol.id)) is not None


def test_every_store_operation_is_guarded() -> None:
    # A new operation without @guarded would turn a locked or full database into "something went wrong" again.
    classes = [*Store.__mro__[:-1], MemoryStore, LinkStore]
    operations = {
        f"{cls.__name__}.{name}": member
        for cls in classes
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }
    assert len(operations) >= 40  # the voices (a mixin of Store), the memory and the links included
    assert [name for name, member in operations.items() if not hasattr(member, "__wrapped__")] == []


def test_a_reader_holding_the_log_after_a_forget_costs_short_waits_and_no_second_deletion(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(open_database(database_url))
    ann = store.user("telegram", "1")
    store.add_turn(ann.id, "chat", "user", "hello")
    statements: list[str] = []
    event.listen(store.sessions.kw["bind"], "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql))
    reader = sqlite3.connect(make_url(database_url).database)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM turns").fetchone()  # a snapshot that keeps the log from being emptied
    caplog.set_level(logging.WARNING, logger="engine.store")
    try:
        store.forget_user(ann.id)
    finally:
        reader.close()
    assert store.find_user("telegram", "1") is None
    assert sum(sql.startswith("DELETE FROM people") for sql in statements) == 1  # the busy log repeated nothing
    checkpoints = [index for index, sql in enumerate(statements) if "wal_checkpoint" in sql]
    assert len(checkpoints) > 1  # it was tried again, each time waiting only briefly for the reader
    assert all(statements[index - 1] == "PRAGMA busy_timeout=200" for index in checkpoints)
    assert all(statements[index + 1] == "PRAGMA busy_timeout=5000" for index in checkpoints)
    assert any("not emptied yet" in record.getMessage() for record in caplog.records)
    with store.sessions() as session:
        assert session.connection().exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
