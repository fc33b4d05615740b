"""A restart after the process died mid-turn: what it left unanswered is answered, or the person is told.

Each test stores what a killed process leaves behind in a real SQLite file (the user's turn, stored before
the LLM runs, and no reply), then starts the real `serve()` on that database against the fake Bot API and
the fake Ollama, twice: the first start follows up, the second finds nothing left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from alan.settings import Settings
from bot.telegram.app import serve
from bot.telegram.recovery import LOST
from engine.conversation import Conversation
from engine.store.repository import Store
from tests import test_app
from tests.conftest import espeak_ogg
from tests.engine_harness import LLM_MODEL
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.telegram_server import TOKEN, FakeTelegram
from tests.test_app import ServerThread
from tests.test_telegram import FAST, assert_ogg_opus, eventually

servers = test_app.servers  # the fake Bot API and Ollama on a thread of their own, for `alan run` processes

ANN = {"id": 1001, "is_bot": False, "first_name": "Ann"}
BOB = {"id": 2002, "is_bot": False, "first_name": "Bob"}
CID = {"id": 3003, "is_bot": False, "first_name": "Cid"}
GROUP = -100700
FOLLOWED_UP = "turn(s) were left unanswered before this start"


@contextlib.asynccontextmanager
async def bot_on(conversation: Conversation, database_url: str) -> AsyncIterator[FakeTelegram]:
    """The Telegram adapter started (as `alan run` starts it) on this database; yields once it polls."""
    telegram = await FakeTelegram().start()
    for chat in (*(telegram.private_chat(user) for user in (ANN, BOB, CID)), telegram.group_chat(GROUP)):
        telegram.add_chat(chat)  # chats the bot talked in before the restart
    config = Settings(
        _env_file=None,  # type: ignore[call-arg]
        telegram_token=TOKEN,
        telegram_api_url=telegram.api_url,
        database_url=database_url,
        telegram_allowed_users="",
        telegram_webhook_url="",
        telegram_webhook_secret=None,
    )
    task = asyncio.create_task(serve(config, conversation, options=FAST))
    try:
        await telegram.wait_until(lambda: bool(telegram.received("getUpdates")) or task.done(), within=10)
        if task.done():
            task.result()
        yield telegram
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await telegram.close()


def said(telegram: FakeTelegram) -> list[tuple[str, int | None, str]]:
    """Everything the bot sent into chats: (method, chat, text)."""
    sends = ("sendMessage", "sendVoice", "sendAudio")
    return [(call.method, call.chat_id, call.text) for call in telegram.calls if call.method in sends and call.done]


def ago(**delta: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(**delta)


async def test_a_turn_left_unanswered_by_a_killed_process_is_answered_once_after_the_restart(
    conversation: Conversation, store: Store, ollama: FakeOllama, database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    ann = store.user("telegram", str(ANN["id"]), "Ann")
    scope = str(ANN["id"])
    store.add_turn(ann.id, scope, "user", "I said hello before hello.")
    store.add_turn(ann.id, scope, "assistant", "Hello to you.")
    store.add_turn(ann.id, scope, "user", "Are you still there?")  # stored, then the process was killed
    ollama.script("Yes, I'm back.")

    async with bot_on(conversation, database_url) as telegram:
        [answer] = await telegram.wait_for("sendVoice", chat_id=ANN["id"])
        assert_ogg_opus(answer)
        assert answer.params["caption"] == "Yes, I'm back."
        await eventually(lambda: len(store.recent_turns(ann.id, scope)) == 4)
    assert said(telegram) == [("sendVoice", ANN["id"], "Yes, I'm back.")]
    turns = [(turn.role, turn.text) for turn in store.recent_turns(ann.id, scope)]
    assert turns[2:] == [("user", "Are you still there?"), ("assistant", "Yes, I'm back.")]  # not stored twice
    [request] = ollama.chat_requests
    asked = [message["content"] for message in request["messages"] if message["role"] != "system"]
    assert asked == ["I said hello before hello.", "Hello to you.", "Are you still there?"]

    with caplog.at_level(logging.INFO, logger="bot.telegram.recovery"):
        async with bot_on(conversation, database_url) as telegram:
            assert f"0 {FOLLOWED_UP}" in caplog.text  # followed up before the first poll
        assert said(telegram) == []
    assert len(store.recent_turns(ann.id, scope)) == 4


async def test_a_voice_note_left_unanswered_is_answered_with_its_audio_as_context(
    csm_conversation: Conversation, store: Store, ollama: FakeOllama, database_url: str, tmp_path: Path
) -> None:
    ann = store.user("telegram", str(ANN["id"]), "Ann")
    scope = str(ANN["id"])
    # The process died before the voice note's Mimi codes were made: they are made from the stored audio.
    turn = store.add_turn(ann.id, scope, "user", "Hello there.", language="en",
                          audio=espeak_ogg("Hello there.", tmp_path))  # fmt: skip
    ollama.script("Hello Ann.")
    async with bot_on(csm_conversation, database_url) as telegram:
        [answer] = await telegram.wait_for("sendVoice", chat_id=ANN["id"])
        assert answer.params["caption"] == "Hello Ann."
        await eventually(lambda: len(store.recent_turns(ann.id, scope)) == 2)
    [stored, reply] = store.recent_turns(ann.id, scope)
    assert stored.id == turn.id and stored.speech is not None and stored.speech_model.startswith("csm:")
    assert reply.role == "assistant" and reply.text == "Hello Ann."


async def test_an_old_or_unanswerable_turn_gets_an_apology_once_and_only_telegram_chats_are_followed_up(
    conversation: Conversation, store: Store, ollama: FakeOllama, database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    ann, bob, cid = (store.user("telegram", str(user["id"])) for user in (ANN, BOB, CID))
    old = store.add_turn(ann.id, str(ANN["id"]), "user", "What did I tell you?")  # too old to answer now
    store.update_turn(old.id, created_at=ago(hours=2))
    store.add_turn(bob.id, str(BOB["id"]), "user", "Hi.")  # answered: nothing to do
    store.add_turn(bob.id, str(BOB["id"]), "assistant", "Hello Bob.")
    ancient = store.add_turn(cid.id, str(CID["id"]), "user", "Anyone?")  # older than a day: left alone
    store.update_turn(ancient.id, created_at=ago(hours=30))
    elsewhere = store.user("discord", "42")
    store.add_turn(elsewhere.id, "777", "user", "Not Telegram's to answer.")
    store.add_turn(ann.id, str(GROUP), "user", "Tell the group a joke.")  # recent, but the LLM fails
    ollama.script(error="model runner crashed")

    with caplog.at_level(logging.INFO, logger="bot.telegram.recovery"):
        async with bot_on(conversation, database_url) as telegram:
            assert f"2 {FOLLOWED_UP}" in caplog.text
            await telegram.wait_for("sendMessage", chat_id=ANN["id"])
            await telegram.wait_for("sendMessage", chat_id=GROUP)
            # The apology is the stored reply, so that the turn counts as answered.
            await eventually(lambda: len(store.recent_turns(ann.id, str(GROUP))) == 2)
        assert sorted(said(telegram)) == sorted([("sendMessage", ANN["id"], LOST), ("sendMessage", GROUP, LOST)])
        assert len(ollama.chat_requests) == 1  # only the recent turn was tried
        assert [(t.role, t.text) for t in store.recent_turns(ann.id, str(ANN["id"]))][-1] == ("assistant", LOST)

        caplog.clear()
        async with bot_on(conversation, database_url) as telegram:
            assert f"0 {FOLLOWED_UP}" in caplog.text
        assert said(telegram) == []
    assert len(ollama.chat_requests) == 1


async def test_in_a_group_chat_another_persons_newer_turn_does_not_hide_an_unanswered_one(
    conversation: Conversation, store: Store
) -> None:
    ann, bob = (store.user("telegram", str(user["id"])) for user in (ANN, BOB))
    waiting = store.add_turn(ann.id, str(GROUP), "user", "Tell the group a joke.")  # the process died here
    store.add_turn(bob.id, str(GROUP), "user", "Hi all.")  # Bob's conversation in the same chat, answered
    store.add_turn(bob.id, str(GROUP), "assistant", "Hello Bob.")

    [pending] = await conversation.unanswered("telegram", ago(hours=1))
    assert (pending.who.user_id, pending.who.scope, pending.turn_id) == (str(ANN["id"]), str(GROUP), waiting.id)


def test_alan_run_killed_mid_turn_answers_the_message_once_when_it_is_started_again(
    servers: tuple[ServerThread, FakeTelegram, FakeOllama], tmp_path: Path, tiny_csm_dir: Path,
    tiny_whisper_dir: Path,
) -> None:  # fmt: skip
    thread, telegram, ollama = servers
    ollama.script("You will never hear this.", first_delay=300)  # the LLM is still thinking at the kill
    ollama.script("Sorry for the wait: yes, I'm here.")
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith(("ALAN_", "DISCORD_"))},
        "TELEGRAM_TOKEN": TOKEN, "TELEGRAM_API_URL": telegram.api_url, "OLLAMA_HOST": ollama.host,
        "ALAN_LLM_MODEL": LLM_MODEL, "ALAN_TTS_MODEL": str(tiny_csm_dir), "ALAN_STT_MODEL": str(tiny_whisper_dir),
        "ALAN_DEVICE": "cpu", "ALAN_DATA_DIR": str(tmp_path / "data"),
    }  # fmt: skip

    def start() -> subprocess.Popen[str]:
        command = [sys.executable, "-c", "from alan.cli import app; app()", "run"]  # what the `alan` script runs
        return subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip

    async def say_hello() -> int:
        return telegram.push({"message": telegram.message(telegram.private_chat(ANN), ANN, text="are you there?")})

    def acknowledged(update_id: int) -> bool:
        return any(int(call.params.get("offset") or 0) > update_id for call in telegram.received("getUpdates"))

    first = start()
    try:
        thread.run(telegram.wait_for("setMyCommands", within=60), timeout=70)
        update_id = thread.run(say_hello())
        thread.run(eventually(lambda: ollama.chat_requests, within=60), timeout=70)  # its words are stored
        thread.run(telegram.wait_until(lambda: acknowledged(update_id)), timeout=40)  # Telegram won't resend it
    except BaseException:
        first.kill()
        print(first.communicate(timeout=30)[0])  # why the first process didn't get that far
        raise
    first.kill()  # kill -9: no clean-up of any kind
    first.communicate(timeout=30)
    assert telegram.sent("sendVoice") == []

    second = start()
    try:
        [answer] = thread.run(telegram.wait_for("sendVoice", chat_id=ANN["id"], within=90), timeout=100)
        assert answer.params["caption"] == "Sorry for the wait: yes, I'm here."
    finally:
        second.send_signal(signal.SIGINT)
        output, _ = second.communicate(timeout=60)
    assert second.returncode == 130, output
    assert "Traceback" not in output, output
    assert f"1 {FOLLOWED_UP}" in output and "are you there" not in output  # logged, without the person's words
    assert len(telegram.sent("sendVoice")) == 1
    retried = ollama.chat_requests[-1]["messages"]
    assert [message["content"] for message in retried if message["role"] == "user"] == ["are you there?"]
