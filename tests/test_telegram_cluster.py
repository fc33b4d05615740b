"""Several aLAN processes behind one Telegram webhook URL, sharing the database: one chat's updates in order.

Two "processes" are two real `serve()`s in this test's event loop, each with its own python-telegram-bot
Application, turn scheduler, conversation engine and database connections, listening on its own port; what
they share is the database (SQLite, and PostgreSQL), the fake Bot API server and the fake Ollama, as processes
behind a load balancer share PostgreSQL, Telegram and the LLM server. The test is the load balancer: it POSTs
each update, with Telegram's secret header, to the process it picks.

A process that dies without a word is the database state it leaves behind (its claim, its inbox rows, the words it
stored), written with the same store operations a process uses; one that stops is a `serve()` cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select
from telegram import Update

from alan.settings import Settings
from bot.telegram.app import serve
from bot.telegram.chat_lanes import lane_key
from bot.telegram.common import PLATFORM
from bot.telegram.webhook import SECRET_HEADER, derived_secret
from engine.conversation import Conversation
from engine.store.inbox import Begun, Inbox
from engine.store.models import ChatClaim, InboxUpdate, Turn
from engine.store.repository import Store
from engine.voices import CONSENT_STATEMENT
from tests.conftest import espeak_ogg
from tests.engine_harness import LLM_MODEL
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.telegram_server import BOT_USERNAME, TOKEN, FakeTelegram
from tests.fakes.telegram_webhook_info import FakeTelegramWithWebhookInfo
from tests.postgres import DATABASES, database_url_for
from tests.test_telegram import FAST, eventually
from tests.test_telegram_clone import CLIP, button

ANN = {"id": 1001, "is_bot": False, "first_name": "Ann"}
BOB = {"id": 2002, "is_bot": False, "first_name": "Bob"}
HOOK = "https://alan.example.org/telegram/hook"
# Short: a process stopping mid-turn leaves it to the others at once rather than after FAST's 20 s.
OPTIONS = replace(FAST, stop_grace_s=0.2)
DEAD = "gone-host:8443:4242:abcdef"  # a process that died: it renews nothing
# A lease the tests wait out, once: long enough not to lapse early on a loaded machine (a slow start, a slow post).
SHORT_LEASE_S = 6.0


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite and on PostgreSQL, each time on a new, empty database."""
    return database_url_for(request)


@dataclass
class Node:
    """One aLAN process of the cluster."""

    port: int
    task: asyncio.Task[None] | None  # None: a process of its own (`alan run`)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/telegram/hook"

    def owns(self, owner: str) -> bool:
        return owner.startswith(f"{socket.gethostname()}:{self.port}:")


class Cluster:
    """Starts processes on one database and one fake Telegram, and posts updates to them as a load balancer."""

    def __init__(self, telegram: FakeTelegram, database_url: str, ports: Callable[[], int]) -> None:
        self.telegram = telegram
        self.database_url = database_url
        self.ports = ports
        self.nodes: list[Node] = []
        self.update_ids = count(500)
        self.http = aiohttp.ClientSession()
        self._starts = 0

    async def start(self, conversation: Conversation, *, port: int | None = None) -> Node:
        """A process, returned once it serves (it has set the webhook, or found it set)."""
        port = port or self.ports()
        config = Settings(
            _env_file=None,  # type: ignore[call-arg]
            telegram_token=TOKEN, telegram_api_url=self.telegram.api_url, database_url=self.database_url,
            telegram_allowed_users="", telegram_webhook_url=HOOK, telegram_webhook_port=port,
            telegram_webhook_secret=None,  # each derives it from the token: the same in all of them
        )  # fmt: skip
        node = Node(port, asyncio.create_task(serve(config, conversation, options=OPTIONS)))
        self.nodes.append(node)
        self._starts += 1
        # Each start ends with one of these: setWebhook by the first, getWebhookInfo (found set) by the others.
        registered = lambda: len(self.telegram.received("setWebhook")) + len(self.telegram.received("getWebhookInfo"))  # noqa: E731
        await self.telegram.wait_until(lambda: registered() >= self._starts or node.task.done(), within=30)
        if node.task.done():
            node.task.result()  # serve() failed: show why
        return node

    def started_elsewhere(self) -> None:
        """A process started outside (`alan run`) has registered: the next start waits for one more."""
        self._starts += 1

    async def stop(self, node: Node) -> None:
        if node.task is None:
            return
        node.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node.task

    def update(
        self, chat: dict[str, Any], user: dict[str, Any], text: str | None = None, **content: Any
    ) -> dict[str, Any]:
        self.telegram.add_chat(chat)
        message = self.telegram.message(chat, user, text=text, **content)
        return {"update_id": next(self.update_ids), "message": message}

    def press(self, user: dict[str, Any], message: dict[str, Any], data: str) -> dict[str, Any]:
        """The update of `user` pressing the inline button with `data` under `message`."""
        return {"update_id": next(self.update_ids), "callback_query": self.telegram.callback_query(user, message, data)}

    async def post(self, node: Node, update: dict[str, Any]) -> int:
        async with self.http.post(node.url, json=update, headers={SECRET_HEADER: derived_secret(TOKEN)}) as response:
            return response.status

    async def close(self) -> None:
        for node in self.nodes:
            await self.stop(node)
        await self.http.close()


@pytest.fixture
async def cluster(
    database_url: str, store: Store, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[Cluster]:
    async with FakeTelegramWithWebhookInfo() as telegram:
        made = Cluster(telegram, database_url, unused_tcp_port_factory)
        try:
            yield made
        finally:
            await made.close()


def said_in(cluster: Cluster, chat_id: int) -> list[str]:
    return [call.params["caption"] for call in cluster.telegram.sent("sendVoice", chat_id)]


def users_words(ollama: FakeOllama) -> list[list[str]]:
    """What the person had said, as each LLM request shows it: the history, then the words being answered."""
    return [[m["content"] for m in request["messages"] if m["role"] == "user"] for request in ollama.chat_requests]


def rows(store: Store) -> list[InboxUpdate]:
    with store.sessions() as session:
        return list(session.scalars(select(InboxUpdate).order_by(InboxUpdate.update_id)))


def claims(store: Store) -> dict[str, str]:
    with store.sessions() as session:
        held = session.scalars(select(ChatClaim)).all()
        return {claim.chat: claim.owner for claim in held if not claim.chat.startswith("#")}  # "#…": not chats


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


async def test_a_process_whose_lapsed_lease_another_took_hands_on_nothing_more_of_the_chat(
    cluster: Cluster, conversation: Conversation, ollama: FakeOllama, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="bot.telegram.chat_lanes")
    a = await cluster.start(conversation)
    chat = cluster.telegram.private_chat(ANN)
    ollama.script("Answer one.", first_delay=2.0)
    ollama.script("Never heard: the chat is another process's now.")
    assert await cluster.post(a, cluster.update(chat, ANN, "one")) == 200
    await eventually(lambda: ollama.chat_requests, within=30)
    # a's renewals stalled (a slow database) past its lease, and another process took the chat: a claim as seen a
    # minute on, when a's lease has lapsed, for a lease running a minute from now.
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert Inbox(store.sessions).claim(PLATFORM, str(ANN["id"]), "other-host:8443:1:ff", later, timedelta(0))
    assert await cluster.post(a, cluster.update(chat, ANN, "two")) == 200  # a learns it lost the chat ...

    await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], within=30)  # ... and finishes what it had
    await asyncio.sleep(1.0)  # polls of a: none hands "two" on
    assert said_in(cluster, ANN["id"]) == ["Answer one."] and len(ollama.chat_requests) == 1
    handled, waiting = rows(store)
    assert handled.payload is None and waiting.payload is not None and waiting.started_at is None  # left for its owner
    assert f"chat {ANN['id']} was taken over by another process while this one still had it in flight" in (
        caplog.messages
    )


async def test_an_update_in_line_when_its_sender_is_forgotten_is_not_handled(
    cluster: Cluster, conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    a = await cluster.start(conversation)
    chat = cluster.telegram.private_chat(ANN)
    ollama.script("Answer one.", first_delay=2.0)
    ollama.script("Never heard: Ann was forgotten.")
    assert await cluster.post(a, cluster.update(chat, ANN, "one")) == 200
    await eventually(lambda: ollama.chat_requests, within=30)
    assert await cluster.post(a, cluster.update(chat, ANN, "two")) == 200
    await cluster.telegram.wait_for("sendMessage", chat_id=ANN["id"], within=30)  # "two" in line: Ann told so
    ann = store.find_user(PLATFORM, str(ANN["id"]))
    assert ann is not None
    store.forget_user(ann.id)  # `/forget`, from another chat of hers, as "two" waits

    await eventually(lambda: not claims(store), within=30)  # all done: the chat let go
    assert len(ollama.chat_requests) == 1  # "two" never answered ...
    with store.sessions() as session:  # ... nor its words stored again
        assert "two" not in session.scalars(select(Turn.text)).all()
    assert not [row for row in rows(store) if row.payload is not None]


async def test_updates_in_line_when_the_chat_is_taken_over_are_left_to_its_holder_then_answered_once_in_order(
    cluster: Cluster, conversation: Conversation, ollama: FakeOllama, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.telegram")
    a = await cluster.start(conversation)
    chat = cluster.telegram.private_chat(ANN)
    for answer, delay in (("one", 2.0), ("two", 0.0), ("three", 0.0)):
        ollama.script(f"Answer {answer}.", first_delay=delay)
    assert await cluster.post(a, cluster.update(chat, ANN, "one")) == 200
    await eventually(lambda: ollama.chat_requests, within=30)
    assert await cluster.post(a, cluster.update(chat, ANN, "two")) == 200
    assert await cluster.post(a, cluster.update(chat, ANN, "three")) == 200
    await cluster.telegram.wait_for("sendMessage", chat_id=ANN["id"], count=2, within=30)  # both in line
    # a's lease lapsed unnoticed as they waited (a stalled), and another process took the chat for a minute.
    other, later = "other-host:8443:1:ff", datetime.now(UTC) + timedelta(seconds=60)
    assert Inbox(store.sessions).claim(PLATFORM, str(ANN["id"]), other, later, timedelta(0))

    await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], within=30)  # what had begun finishes ...
    await eventually(lambda: sum("it is not handled here" in message for message in caplog.messages) == 2)
    assert said_in(cluster, ANN["id"]) == ["Answer one."] and len(ollama.chat_requests) == 1  # ... nothing more
    handled, *waiting = rows(store)
    assert handled.payload is None
    assert [(row.payload is not None, row.started_at) for row in waiting] == [(True, None), (True, None)]

    # The other process stops without having handled them: a takes the chat again, and with it what waits.
    Inbox(store.sessions).release(PLATFORM, [str(ANN["id"])], other)
    await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], count=3, within=30)
    assert said_in(cluster, ANN["id"]) == ["Answer one.", "Answer two.", "Answer three."]
    assert users_words(ollama) == [["one"], ["one", "two"], ["one", "two", "three"]]
    await eventually(lambda: [row.payload for row in rows(store)] == [None, None, None])


async def test_a_group_message_in_line_when_its_sender_is_forgotten_is_not_kept(
    cluster: Cluster, conversation: Conversation, ollama: FakeOllama, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.telegram")
    a = await cluster.start(conversation)
    group = cluster.telegram.group_chat(-100800)
    ollama.script("Hello, Ann.", first_delay=3.0)
    assert await cluster.post(a, cluster.update(group, BOB, "morning all")) == 200  # kept: Bob is known
    await eventually(lambda: store.find_user(PLATFORM, str(BOB["id"])) is not None)
    assert await cluster.post(a, cluster.update(group, ANN, f"@{BOT_USERNAME} hello")) == 200
    await eventually(lambda: ollama.chat_requests, within=30)
    # Bob's next words, not for aLAN, wait in line behind the answer to Ann when he says /forget elsewhere.
    assert await cluster.post(a, cluster.update(group, BOB, "my new address is 12 Elm Street")) == 200
    await asyncio.sleep(0.5)  # handed on at once: in line
    bob = store.find_user(PLATFORM, str(BOB["id"]))
    assert bob is not None
    store.forget_user(bob.id)

    await cluster.telegram.wait_for("sendVoice", chat_id=group["id"], within=30)
    await eventually(lambda: not claims(store), within=30)  # all done: the chat let go
    assert any("was forgotten (/forget) before its turn began" in message for message in caplog.messages)
    with store.sessions() as session:
        assert not [text for text in session.scalars(select(Turn.text)).all() if "Elm" in text or "morning" in text]
    assert not [row for row in rows(store) if row.payload is not None or row.sender is not None]


async def test_a_clone_in_progress_keeps_its_chat_with_one_process_wherever_its_next_steps_are_posted(
    cluster: Cluster, conversation: Conversation, other_conversation: Conversation, ollama: FakeOllama,
    store: Store, tmp_path: Path,
) -> None:  # fmt: skip
    """The clone's steps are kept in the memory of the process that started it: the chat stays with it until done."""
    a = await cluster.start(conversation)
    b = await cluster.start(other_conversation)
    chat, telegram = cluster.telegram.private_chat(ANN), cluster.telegram
    assert await cluster.post(a, cluster.update(chat, ANN, "/clone Ann's voice")) == 200
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda call: "Send me a voice note" in call.text)
    await asyncio.sleep(1.0)  # polls of a: nothing in flight, yet a keeps the chat while the clone waits for a clip
    assert a.owns(claims(store)[str(ANN["id"])])

    # Every next step reaches the other process: each waits in the inbox for a, which has the clone.
    note = telegram.voice(espeak_ogg(CLIP, tmp_path), duration=6)
    assert await cluster.post(b, cluster.update(chat, ANN, voice=note)) == 200
    [heard] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda call: "what I heard" in call.text)
    assert await cluster.post(b, cluster.press(ANN, heard.result, button(heard, "That's right"))) == 200
    [consent] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: CONSENT_STATEMENT in c.text)
    assert await cluster.post(b, cluster.press(ANN, consent.result, button(consent, "I confirm"))) == 200
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda call: "Saved “Ann's voice”" in call.text)
    ann = store.find_user(PLATFORM, str(ANN["id"]))
    assert ann is not None and [voice.name for voice in store.voices_of(ann.id)] == ["Ann's voice"]
    assert ollama.chat_requests == [] and telegram.sent("sendVoice") == []  # the clip was no conversation turn
    assert not [call for call in telegram.sent("answerCallbackQuery") if call.params.get("text")]  # no "expired"
    await eventually(lambda: not claims(store), within=30)  # done: the chat let go


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
