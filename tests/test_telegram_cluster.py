"""Several aLAN processes behind one Telegram webhook URL, sharing the database: one chat's updates in order,
whichever process each reaches; a retried delivery handled once; a process that stops, dies or restarts taken
over without an answer lost or given twice; the shared secret. The cluster: tests/telegram_cluster_harness.py.
What waits in line when a chat changes hands or its sender is forgotten: tests/test_telegram_cluster_handover.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from telegram import Update

from bot.telegram.chat_lanes import lane_key
from bot.telegram.common import PLATFORM
from bot.telegram.webhook import SECRET_HEADER, derived_secret
from engine.conversation import Conversation
from engine.store.inbox import Begun, Inbox
from engine.store.repository import Store
from tests import telegram_cluster_harness as harness
from tests.engine_harness import LLM_MODEL
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.telegram_server import TOKEN, FakeTelegram
from tests.telegram_cluster_harness import (
    ANN,
    BOB,
    DEAD,
    HOOK,
    SHORT_LEASE_S,
    Cluster,
    Node,
    claims,
    rows,
    said_in,
    users_words,
)
from tests.test_telegram import eventually

# The shared fixtures (see tests/telegram_cluster_harness.py).
a_cluster, every_database = harness.a_cluster, harness.every_database

# The cluster end to end ----------------------------------------------------------------------------------------


async def test_one_chats_updates_posted_alternately_to_two_processes_are_answered_in_order(
    cluster: Cluster, conversation: Conversation, other_conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    a = await cluster.start(conversation)
    b = await cluster.start(other_conversation)
    assert len(cluster.telegram.received("setWebhook")) == 1  # the second process found it set
    chat = cluster.telegram.private_chat(ANN)
    # The first answer is slow: the updates after it reach the other process while the first is being answered.
    ollama.script("Answer one.", first_delay=1.0)
    for word in ("two", "three", "four"):
        ollama.script(f"Answer {word}.")
    posted = []
    for index, word in enumerate(("one", "two", "three", "four")):
        update = cluster.update(chat, ANN, word)
        assert await cluster.post((a, b)[index % 2], update) == 200
        posted.append(update["message"]["message_id"])

    answers = await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], count=4, within=60)
    assert [answer.json("reply_parameters")["message_id"] for answer in answers] == posted
    assert said_in(cluster, ANN["id"]) == ["Answer one.", "Answer two.", "Answer three.", "Answer four."]
    assert users_words(ollama) == [["one"], ["one", "two"], ["one", "two", "three"], ["one", "two", "three", "four"]]
    # Handled: nothing of what Ann said is left in the inbox, only the numbers; the chat is let go.
    await eventually(lambda: not claims(store), within=30)
    assert [(row.update_id, row.payload, row.sender) for row in rows(store)] == [
        (row.update_id, None, None) for row in rows(store)
    ] and len(rows(store)) == 4


async def test_different_chats_are_answered_at_once_by_both_processes(
    cluster: Cluster, conversation: Conversation, other_conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    a = await cluster.start(conversation)
    b = await cluster.start(other_conversation)
    # Answers that take longer than the test: what it sees is both chats being answered at the same time.
    ollama.script("Hello Ann.", first_delay=120)
    ollama.script("Hello Bob.", first_delay=120)
    assert await cluster.post(a, cluster.update(cluster.telegram.private_chat(ANN), ANN, "hi, it's Ann")) == 200
    assert await cluster.post(b, cluster.update(cluster.telegram.private_chat(BOB), BOB, "hi, it's Bob")) == 200

    await eventually(lambda: len(ollama.chat_requests) == 2, within=30)  # both being answered at once ...
    held = claims(store)  # ... each by the process that received it
    assert a.owns(held[str(ANN["id"])]) and b.owns(held[str(BOB["id"])])
    assert sorted(words[-1] for words in users_words(ollama)) == ["hi, it's Ann", "hi, it's Bob"]


async def test_an_update_delivered_twice_is_answered_once(
    cluster: Cluster, conversation: Conversation, other_conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    a = await cluster.start(conversation)
    b = await cluster.start(other_conversation)
    chat = cluster.telegram.private_chat(ANN)
    ollama.script("Answer one.")
    ollama.script("Answer two.")
    first = cluster.update(chat, ANN, "one")
    # Telegram retrying a delivery whose answer it didn't get: at once, to both processes, and after it was handled.
    assert await asyncio.gather(cluster.post(a, first), cluster.post(b, first)) == [200, 200]
    await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"])
    assert await cluster.post(b, first) == 200
    assert await cluster.post(a, cluster.update(chat, ANN, "two")) == 200  # after the repeat, in the chat's line

    await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], count=2)
    assert said_in(cluster, ANN["id"]) == ["Answer one.", "Answer two."]
    assert users_words(ollama) == [["one"], ["one", "two"]]
    assert len(rows(store)) == 2


async def test_a_process_that_stops_mid_turn_leaves_its_chat_to_the_other_which_answers_everything_once_in_order(
    cluster: Cluster, conversation: Conversation, other_conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    a = await cluster.start(conversation)
    b = await cluster.start(other_conversation)
    chat = cluster.telegram.private_chat(ANN)
    ollama.script("Never heard: the process stops first.", first_delay=60)
    ollama.script("Answer one, late.")
    ollama.script("Answer two.")
    assert await cluster.post(a, cluster.update(chat, ANN, "one")) == 200
    await eventually(lambda: ollama.chat_requests, within=30)  # a is thinking: Ann's words are stored
    assert await cluster.post(b, cluster.update(chat, ANN, "two")) == 200
    assert a.owns(claims(store)[str(ANN["id"])])  # so "two" waits in the inbox for a
    assert [row.payload is not None for row in rows(store)] == [True, True]

    await cluster.stop(a)
    await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], count=2, within=30)
    assert said_in(cluster, ANN["id"]) == ["Answer one, late.", "Answer two."]
    assert users_words(ollama)[1:] == [["one"], ["one", "two"]]  # "one" answered as it was stored, not again
    ann = store.find_user(PLATFORM, str(ANN["id"]))
    assert ann is not None
    await eventually(lambda: len(store.recent_turns(ann.id, str(ANN["id"]))) == 4, within=30)
    turns = [(turn.role, turn.text) for turn in store.recent_turns(ann.id, str(ANN["id"]))]
    assert turns == [("user", "one"), ("assistant", "Answer one, late."), ("user", "two"), ("assistant", "Answer two.")]


async def test_when_a_dead_processs_lease_lapses_the_other_takes_over_its_chat(
    cluster: Cluster, conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    b = await cluster.start(conversation)
    chat = cluster.telegram.private_chat(ANN)
    one, two, three = (cluster.update(chat, ANN, word) for word in ("one", "two", "three"))
    # What a process leaves when it dies (kill -9) as it answers "one": its claim, whose lease nobody renews; "one"
    # begun, its words stored; "two" received, not begun.
    inbox, now, seeded = Inbox(store.sessions), datetime.now(UTC), time.monotonic()
    for update in (one, two):
        assert inbox.add(PLATFORM, update["update_id"], str(ANN["id"]), str(ANN["id"]), json.dumps(update), now)
    assert inbox.claim(PLATFORM, str(ANN["id"]), DEAD, now, timedelta(seconds=SHORT_LEASE_S))
    assert inbox.mark_started(inbox.waiting(PLATFORM, str(ANN["id"]))[0].id, DEAD, now) is Begun.YES
    ann = store.user(PLATFORM, str(ANN["id"]), "Ann")
    store.add_turn(ann.id, str(ANN["id"]), "user", "one")
    ollama.script("Answer one, late.")
    ollama.script("Answer two.")
    ollama.script("Answer three.")

    assert await cluster.post(b, three) == 200
    assert claims(store) == {str(ANN["id"]): DEAD}  # the dead process's until its lease lapses: all of it waits
    answers = await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], count=3, within=30)
    assert answers[0].at - seeded >= SHORT_LEASE_S - 0.1  # not before the lease lapsed (clocks may differ by a tick)
    assert said_in(cluster, ANN["id"]) == ["Answer one, late.", "Answer two.", "Answer three."]
    assert users_words(ollama) == [["one"], ["one", "two"], ["one", "two", "three"]]
    assert [turn.text for turn in store.recent_turns(ann.id, str(ANN["id"])) if turn.role == "user"] == [
        "one", "two", "three"
    ]  # fmt: skip
    assert not b.owns(DEAD)


async def test_a_process_killed_mid_turn_leaves_its_chat_to_the_other_once_its_lease_lapses(
    cluster: Cluster, other_conversation: Conversation, ollama: FakeOllama, store: Store, tmp_path: Path,
    tiny_whisper_dir: Path,
) -> None:  # fmt: skip
    """`alan run` as a real process (its lease shortened), killed with SIGKILL while it answers."""
    port = cluster.ports()
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith(("ALAN_", "DISCORD_"))},
        "TELEGRAM_TOKEN": TOKEN, "TELEGRAM_API_URL": cluster.telegram.api_url, "OLLAMA_HOST": ollama.host,
        "ALAN_LLM_MODEL": LLM_MODEL, "ALAN_TTS_BACKEND": "tone", "ALAN_STT_MODEL": str(tiny_whisper_dir),
        "ALAN_DEVICE": "cpu", "ALAN_DATA_DIR": str(tmp_path / "data"), "ALAN_DATABASE_URL": cluster.database_url,
        "ALAN_TELEGRAM_WEBHOOK_URL": HOOK, "ALAN_TELEGRAM_WEBHOOK_PORT": str(port),
    }  # fmt: skip
    shorter = f"import bot.telegram.chat_lanes as c; c.LEASE_S = {SHORT_LEASE_S}; from alan.cli import app; app()"
    with (tmp_path / "a.log").open("w") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", shorter, "run", cwd=tmp_path, env=environment, stdout=output, stderr=output
        )
    a = Node(port, None)
    try:
        await cluster.telegram.wait_until(lambda: cluster.telegram.received("setWebhook"), within=90)
        cluster.started_elsewhere()
        chat = cluster.telegram.private_chat(ANN)
        ollama.script("Never heard: the process is killed first.", first_delay=120)
        ollama.script("Answer one, late.")
        ollama.script("Answer two.")
        assert await cluster.post(a, cluster.update(chat, ANN, "one")) == 200
        await eventually(lambda: ollama.chat_requests, within=30)  # a is thinking: Ann's words are stored
        # Started now, b finds "one" unanswered, but a holds the chat: b leaves it alone (no second answer).
        b = await cluster.start(other_conversation)
        assert await cluster.post(b, cluster.update(chat, ANN, "two")) == 200
        assert a.owns(claims(store)[str(ANN["id"])])
        process.kill()
        await process.wait()

        await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], count=2, within=60)
    except BaseException:
        print((tmp_path / "a.log").read_text())  # why the killed process didn't get that far
        raise
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert said_in(cluster, ANN["id"]) == ["Answer one, late.", "Answer two."]
    assert users_words(ollama)[1:] == [["one"], ["one", "two"]]
    await eventually(lambda: [row.payload for row in rows(store)] == [None, None], within=30)  # each handled once


async def test_a_process_starting_leaves_alone_a_turn_another_process_is_answering(
    cluster: Cluster, conversation: Conversation, other_conversation: Conversation, ollama: FakeOllama,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="bot.telegram.chat_lanes")
    a = await cluster.start(conversation)
    chat = cluster.telegram.private_chat(ANN)
    ollama.script("Answer one.", first_delay=6.0)
    ollama.script("Answer two.")
    assert await cluster.post(a, cluster.update(chat, ANN, "one")) == 200
    await eventually(lambda: ollama.chat_requests, within=30)  # stored, not answered yet: what a restart follows up
    b = await cluster.start(other_conversation)  # ... but a holds the chat: it is a's to answer
    # b did find the turn unanswered and a holding the chat (had b started after a answered, nothing was tested).
    assert f"chat {ANN['id']} is another process's now: it answers what is left there" in caplog.messages
    await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"])
    assert await cluster.post(b, cluster.update(chat, ANN, "two")) == 200
    await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], count=2)
    assert said_in(cluster, ANN["id"]) == ["Answer one.", "Answer two."]
    assert users_words(ollama) == [["one"], ["one", "two"]]


async def test_a_process_drops_the_numbers_of_updates_handled_over_a_day_ago_as_it_starts(
    cluster: Cluster, conversation: Conversation, store: Store
) -> None:
    inbox, long_ago = Inbox(store.sessions), datetime.now(UTC) - timedelta(days=2)
    assert inbox.add(PLATFORM, 1, "7", "7", "{}", long_ago)
    inbox.done(inbox.waiting(PLATFORM, "7")[0].id, long_ago)
    await cluster.start(conversation)
    await eventually(lambda: not rows(store), within=30)  # not after the first 10 minutes: a process may not last


async def test_updates_received_but_not_handled_are_handled_after_a_restart(
    cluster: Cluster, conversation: Conversation, other_conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    a = await cluster.start(conversation)
    chat = cluster.telegram.private_chat(ANN)
    ollama.script("Never heard: the process stops first.", first_delay=60)
    ollama.script("Answer one, after the restart.")
    ollama.script("Answer two.")
    assert await cluster.post(a, cluster.update(chat, ANN, "one")) == 200
    await eventually(lambda: ollama.chat_requests, within=30)
    assert await cluster.post(a, cluster.update(chat, ANN, "two")) == 200  # in line behind "one", in memory
    await cluster.stop(a)
    assert not cluster.telegram.sent("sendVoice")
    assert [row.payload is not None for row in rows(store)] == [True, True]  # both kept

    await cluster.start(other_conversation, port=a.port)  # the same process started again
    await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], count=2, within=30)
    assert said_in(cluster, ANN["id"]) == ["Answer one, after the restart.", "Answer two."]
    assert users_words(ollama)[1:] == [["one"], ["one", "two"]]
    assert len(cluster.telegram.received("setWebhook")) == 1  # registered by the first start only


async def test_a_post_without_the_shared_secret_is_refused_and_not_stored(
    cluster: Cluster, conversation: Conversation, store: Store
) -> None:
    a = await cluster.start(conversation)
    update = cluster.update(cluster.telegram.private_chat(ANN), ANN, "hello")
    async with cluster.http.post(a.url, json=update, headers={SECRET_HEADER: "a-random-per-process-one"}) as response:
        assert response.status == 403
    async with cluster.http.post(a.url, data=b"{not json", headers={SECRET_HEADER: derived_secret(TOKEN)}) as answer:
        assert answer.status == 400
    assert rows(store) == []
    assert cluster.telegram.webhook is not None
    assert cluster.telegram.webhook["secret_token"] == derived_secret(TOKEN) != TOKEN


# Whose lane an update goes in, and the webhook secret -----------------------------------------------------------------


def test_an_update_without_a_chat_goes_in_its_senders_lane() -> None:
    telegram = FakeTelegram()
    message = telegram.message(telegram.group_chat(-100), ANN, text="hi")
    with_message = {"update_id": 1, "callback_query": {"id": "1", "from": ANN, "chat_instance": "1",
                                                       "message": message, "data": "x"}}  # fmt: skip
    inline = {"update_id": 2, "callback_query": {"id": "2", "from": ANN, "chat_instance": "1",
                                                 "inline_message_id": "m", "data": "x"}}  # fmt: skip
    nobody = {"update_id": 3, "poll": {"id": "p", "question": "?", "options": [], "total_voter_count": 0,
                                       "is_closed": True, "is_anonymous": True, "type": "regular",
                                       "allows_multiple_answers": False, "allows_revoting": False,
                                       "members_only": False}}  # fmt: skip
    keys = [lane_key(Update.de_json(update, None)) for update in (with_message, inline, nobody)]  # type: ignore[arg-type]
    assert keys == [("-100", "1001"), ("user:1001", "1001"), ("update:3", None)]


def test_every_process_derives_the_same_webhook_secret_from_the_token_and_only_from_it() -> None:
    assert derived_secret(TOKEN) == derived_secret(TOKEN) != derived_secret(TOKEN + "x")
    assert len(derived_secret(TOKEN)) == 43 and derived_secret(TOKEN).replace("-", "").replace("_", "").isalnum()
