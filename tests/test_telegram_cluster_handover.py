"""What waits in line in a Telegram chat served by several aLAN processes (tests/telegram_cluster_harness.py) when
the chat changes hands or its sender is forgotten: a process whose lease lapsed hands on, and begins, nothing more
of the chat (what it had waits for the chat's holder, in order); a turn or a kept group message of a person who
said /forget meanwhile is dropped; a /clone under way keeps its chat with the process that has its steps.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.telegram.common import PLATFORM
from engine.conversation import Conversation
from engine.store.inbox import Inbox
from engine.store.models import Turn
from engine.store.repository import Store
from engine.voices import CONSENT_STATEMENT
from tests import telegram_cluster_harness as harness
from tests.conftest import espeak_ogg
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.telegram_server import BOT_USERNAME
from tests.telegram_cluster_harness import (
    ANN,
    BOB,
    Cluster,
    Node,
    claims,
    rows,
    said_in,
    users_words,
)
from tests.test_telegram import eventually
from tests.test_telegram_clone import CLIP, button

# The shared fixtures (see tests/telegram_cluster_harness.py).
a_cluster, every_database = harness.a_cluster, harness.every_database

# What waits in line when a chat changes hands ----------------------------------------------------------------


OTHER = "other-host:8443:1:ff"  # the process that takes the chat over


def taken_over(store: Store) -> None:
    """The chat's lease lapsed unnoticed (its process's renewals stalled: a slow database) and another process took
    the chat: a claim as seen a minute on, when the lease has lapsed, for a lease running a minute from now."""
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert Inbox(store.sessions).claim(PLATFORM, str(ANN["id"]), OTHER, later, timedelta(0))


def let_go(store: Store) -> None:
    """The other process stops without having handled what waits: the chat is free again."""
    Inbox(store.sessions).release(PLATFORM, [str(ANN["id"])], OTHER)


async def one_being_answered(
    cluster: Cluster, node: Node, ollama: FakeOllama, *answers: str, delay: float
) -> dict[str, Any]:
    """Ann's "one" being answered by `node`, slowly (`delay`): her chat. The fake LLM answers with `answers`, in
    order, the first to "one"."""
    chat = cluster.telegram.private_chat(ANN)
    for index, answer in enumerate(answers):
        ollama.script(answer, first_delay=delay if index == 0 else 0.0)
    assert await cluster.post(node, cluster.update(chat, ANN, "one")) == 200
    await eventually(lambda: ollama.chat_requests, within=30)
    return chat


async def two_in_line_behind_a_slow_answer(
    cluster: Cluster, node: Node, ollama: FakeOllama, answers: tuple[str, str, str], delay: float
) -> dict[str, Any]:
    """Ann's "one" being answered slowly by `node`, "two" and "three" in line behind it (she is told so): her chat.
    The fake LLM's answers are scripted for `answers`, the first taking `delay`."""
    chat = await one_being_answered(cluster, node, ollama, *(f"Answer {answer}." for answer in answers), delay=delay)
    assert await cluster.post(node, cluster.update(chat, ANN, "two")) == 200
    assert await cluster.post(node, cluster.update(chat, ANN, "three")) == 200
    await cluster.telegram.wait_for("sendMessage", chat_id=ANN["id"], count=2, within=30)  # both in line
    return chat


async def test_a_process_whose_lapsed_lease_another_took_hands_on_nothing_more_of_the_chat(
    cluster: Cluster, conversation: Conversation, ollama: FakeOllama, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="bot.telegram.chat_lanes")
    a = await cluster.start(conversation)
    chat = await one_being_answered(
        cluster, a, ollama, "Answer one.", "Never heard: the chat is another process's now.", delay=2.0
    )
    taken_over(store)  # a's renewals stalled past its lease
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
    chat = await one_being_answered(cluster, a, ollama, "Answer one.", "Never heard: Ann was forgotten.", delay=2.0)
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
    await two_in_line_behind_a_slow_answer(cluster, a, ollama, ("one", "two", "three"), delay=2.0)
    taken_over(store)  # as they waited

    await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], within=30)  # what had begun finishes ...
    await eventually(lambda: sum("it is not handled here" in message for message in caplog.messages) == 2)
    assert said_in(cluster, ANN["id"]) == ["Answer one."] and len(ollama.chat_requests) == 1  # ... nothing more
    handled, *waiting = rows(store)
    assert handled.payload is None
    assert [(row.payload is not None, row.started_at) for row in waiting] == [(True, None), (True, None)]

    let_go(store)  # a takes the chat again, and with it what waits
    await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], count=3, within=30)
    assert said_in(cluster, ANN["id"]) == ["Answer one.", "Answer two.", "Answer three."]
    assert users_words(ollama) == [["one"], ["one", "two"], ["one", "two", "three"]]
    await eventually(lambda: [row.payload for row in rows(store)] == [None, None, None])


async def test_an_update_another_process_answered_while_it_waited_here_is_not_answered_again(
    cluster: Cluster, conversation: Conversation, ollama: FakeOllama, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.telegram")
    a = await cluster.start(conversation)
    chat = await two_in_line_behind_a_slow_answer(cluster, a, ollama, ("one", "three", "four"), delay=4.0)
    # a stalled past its lease: another process took the chat, answered "two", and let the chat go, all before
    # a noticed anything. Then "four" reaches a, which claims the chat, free again.
    taken_over(store)
    Inbox(store.sessions).done(rows(store)[1].id, datetime.now(UTC))  # "two", in update order
    let_go(store)
    assert await cluster.post(a, cluster.update(chat, ANN, "four")) == 200

    await cluster.telegram.wait_for("sendVoice", chat_id=ANN["id"], count=3, within=30)
    await asyncio.sleep(1.0)  # nothing more comes
    assert said_in(cluster, ANN["id"]) == ["Answer one.", "Answer three.", "Answer four."]
    assert users_words(ollama) == [["one"], ["one", "three"], ["one", "three", "four"]]
    assert any("its lease lapsed while a turn waited in line" in message for message in caplog.messages)
    await eventually(lambda: [row.payload for row in rows(store)] == [None] * 4)


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


async def test_a_consent_waiting_in_line_when_the_chat_is_lost_is_kept_for_when_it_is_handled_again(
    cluster: Cluster, conversation: Conversation, ollama: FakeOllama, store: Store, tmp_path: Path
) -> None:
    a = await cluster.start(conversation)
    chat, telegram = cluster.telegram.private_chat(ANN), cluster.telegram
    clip = telegram.message(chat, ANN, voice=telegram.voice(espeak_ogg(CLIP, tmp_path), duration=6))
    assert await cluster.post(a, cluster.update(chat, ANN, "/clone", reply_to_message=clip)) == 200
    [heard] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda call: "what I heard" in call.text)
    assert await cluster.post(a, cluster.press(ANN, heard.result, button(heard, "That's right"))) == 200
    [consent] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: CONSENT_STATEMENT in c.text)
    # Ann says something meanwhile (a turn, slow to answer); her consent waits in line behind it ...
    ollama.script("Sure.", first_delay=3.0)
    assert await cluster.post(a, cluster.update(chat, ANN, "one moment")) == 200
    await eventually(lambda: ollama.chat_requests, within=30)
    assert await cluster.post(a, cluster.press(ANN, consent.result, button(consent, "I confirm"))) == 200
    await telegram.wait_for("editMessageText", chat_id=ANN["id"], where=lambda call: "Consent recorded" in call.text)
    # ... when a's lease lapses and another process takes the chat: the saving doesn't begin here.
    taken_over(store)
    await telegram.wait_for("sendVoice", chat_id=ANN["id"], within=30)  # the turn that had begun ends
    await asyncio.sleep(1.0)  # polls of a: the consent is not handed on again while the chat is the other's
    ann = store.find_user(PLATFORM, str(ANN["id"]))
    assert ann is not None and store.voices_of(ann.id) == []

    # The other process lets the chat go without handling it: a handles the consent again, and the voice is saved.
    let_go(store)
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda call: "Saved “my voice”" in call.text)
    assert [voice.name for voice in store.voices_of(ann.id)] == ["my voice"]
    assert not [call for call in telegram.sent("answerCallbackQuery") if call.params.get("text")]  # no "expired"
