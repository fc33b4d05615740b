"""/memory on Telegram (the fake Bot API), on Discord (interaction doubles) and `alan memory` / `alan reset` (Typer's
runner), all on the real engine with the fake Ollama: the list says where and when each fact was told, forget N and
clear take facts out (a wrong N is told), off stops extraction, a group never sees the list, /reset and `alan reset`
keep memory, and `alan talk` ends only once what it heard is remembered."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alan.cli import app
from alan.cli_engine import local_participant
from bot import memory_text
from bot.discord.commands import AlanCommands
from bot.discord.memory_commands import ClearMemoryView, MemoryCommands
from engine.conversation import Conversation, Participant
from engine.conversation_memory import Fact, MemoryListing
from engine.memory import EXTRACTION_SCHEMA, MAX_FACTS
from engine.store.database import open_database
from engine.store.memories import FactChange, MemoryStore
from engine.store.repository import Store
from tests import test_telegram as harness
from tests.conftest import fake_ollama_in_thread
from tests.discord_doubles import FakeGuild, FakeInteraction, FakeMember, run
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.telegram_server import BOT_USERNAME, Call
from tests.test_telegram import ANN, BOB, Start, eventually

# The shared fixtures (see test_telegram.py).
start_bot = harness.start_bot

MODEL = "llama3.2:3b"
GROUP = -100600
ANN_ALONE = Participant("telegram", str(ANN["id"]), str(ANN["id"]), "Ann")  # in her private chat with the bot
runner = CliRunner()


def changes(*facts: str) -> str:
    return json.dumps({"changes": [{"action": "add", "number": 0, "fact": fact} for fact in facts]})


def remember(store: Store, platform: str, user_id: str, scope: str, *facts: str) -> None:
    """Facts in place as if extracted from a turn `user_id` had on `platform` in `scope`."""
    person = store.user(platform, user_id).person_id
    changes = [FactChange("add", fact) for fact in facts]
    memory = MemoryStore(store.sessions)
    epoch = memory.person(person).memory_epoch  # type: ignore[union-attr]
    assert memory.apply(person, changes, platform=platform, scope=scope, cap=MAX_FACTS, epoch=epoch)[0] == len(facts)


def button(call: Call, label_part: str) -> str:
    [data] = [data for label, data in call.buttons if label_part in label]
    return data


# -- the words --------------------------------------------------------------------------------------------------


def test_a_fact_says_where_and_when_it_was_told_as_people_say_it() -> None:
    now = datetime(2025, 12, 20, 12, tzinfo=UTC)
    told = datetime(2025, 12, 2, 10, tzinfo=UTC)
    assert memory_text.when(told, now) == "2 Dec"
    assert memory_text.when(told.replace(year=2023), now) == "2 Dec 2023"
    assert memory_text.when(now.replace(tzinfo=None), now) == "today"  # SQLite's naive UTC
    assert memory_text.when(datetime(2025, 12, 19, 12, tzinfo=UTC), now) == "yesterday"
    in_group = Fact(1, "They love jazz.", "telegram", str(GROUP), told)
    assert memory_text.told(in_group, now) == "told in a Telegram group, 2 Dec"
    assert memory_text.told(Fact(2, "x", "telegram", "1001", told), now) == "told on Telegram, 2 Dec"
    assert memory_text.told(Fact(3, "x", "discord", "555", told), now) == "told on Discord, 2 Dec"
    assert memory_text.told(Fact(4, "x", "local", "cli", told), now) == "told on the command line, 2 Dec"


def test_the_list_says_when_memory_is_off_and_when_it_is_full() -> None:
    told = datetime.now(UTC)
    facts = [Fact(n, f"Fact {n}.", "telegram", "1", told) for n in range(1, 4)]
    off = memory_text.listing_text(MemoryListing(facts, enabled=False), memory_text.TELEGRAM)
    assert off.startswith("My memory is off for you") and "/memory on" in off and "3. Fact 3." in off
    full = memory_text.listing_text(MemoryListing(facts, enabled=True, cap=3), memory_text.TELEGRAM)
    assert "as many facts as I keep (3)" in full and "needed for the longest are let go" in full
    assert "(3)" not in memory_text.listing_text(MemoryListing(facts, enabled=True), memory_text.TELEGRAM)
    empty_off = memory_text.listing_text(MemoryListing([], enabled=False), memory_text.CLI)
    assert "off" in empty_off and "alan memory on" in empty_off


# -- Telegram ---------------------------------------------------------------------------------------------------


async def test_telegram_memory_lists_forgets_and_clears_after_asking(
    start_bot: Start, conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    telegram = await start_bot()
    chat = telegram.private_chat(ANN)
    telegram.push_message(chat, ANN, text="/memory")
    [empty] = await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    assert "I don't remember anything about you yet" in empty.text and "/memory off" in empty.text

    # Two facts told in a turn, extracted in the background; one told in a group.
    ollama.script("Lovely, jazz and Lyon.")
    ollama.script_json(changes("They love jazz.", "They live in Lyon."))
    telegram.push_message(chat, ANN, text="I love jazz and I live in Lyon.")
    await telegram.wait_for("sendVoice", chat_id=ANN["id"])
    await eventually(lambda: len(ollama.json_requests) == 1)
    await conversation.memory_settled()
    assert ollama.json_requests[0]["format"] == EXTRACTION_SCHEMA
    remember(store, "telegram", str(ANN["id"]), str(GROUP), "Their sister is called Maria.")

    telegram.push_message(chat, ANN, text="/memory")
    [listed] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "What I remember" in c.text)
    assert "1. They love jazz. (told on Telegram, today)" in listed.text
    assert "2. They live in Lyon. (told on Telegram, today)" in listed.text
    assert "3. Their sister is called Maria. (told in a Telegram group, today)" in listed.text
    assert "/memory forget N" in listed.text and "/memory clear" in listed.text and "/memory off" in listed.text

    telegram.push_message(chat, ANN, text="/memory forget 7")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "no fact number 7" in c.text)
    telegram.push_message(chat, ANN, text="/memory forget first")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: c.text.startswith("Use /memory"))
    telegram.push_message(chat, ANN, text="/memory forget 2")
    await telegram.wait_for(
        "sendMessage", chat_id=ANN["id"], where=lambda c: "forgotten “They live in Lyon.”" in c.text
    )
    assert [fact.text for fact in (await conversation.memory(ANN_ALONE)).facts] == [
        "They love jazz.",
        "Their sister is called Maria.",
    ]

    telegram.push_message(chat, ANN, text="/memory clear")
    [question] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "can't be undone" in c.text)
    assert "all 2 facts" in question.text
    telegram.press(BOB, question.result, button(question, "Yes"))  # someone else can't
    telegram.press(ANN, question.result, button(question, "No"))
    await telegram.wait_for("editMessageText", chat_id=ANN["id"], where=lambda c: "Nothing was forgotten" in c.text)
    assert len((await conversation.memory(ANN_ALONE)).facts) == 2
    telegram.push_message(chat, ANN, text="/memory clear")
    *_, question = await telegram.wait_for(
        "sendMessage", chat_id=ANN["id"], count=2, where=lambda c: "undone" in c.text
    )
    telegram.press(ANN, question.result, button(question, "Yes"))
    await telegram.wait_for("editMessageText", chat_id=ANN["id"], where=lambda c: "(2 facts)" in c.text)
    assert (await conversation.memory(ANN_ALONE)).facts == []

    telegram.push_message(chat, ANN, text="/memory dance")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], count=2, where=lambda c: c.text.startswith("Use /memory"))


async def test_telegram_memory_off_stops_extraction_and_on_resumes_it_and_reset_keeps_memory(
    start_bot: Start, conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    telegram = await start_bot()
    chat = telegram.private_chat(ANN)
    telegram.push_message(chat, ANN, text="/memory off")
    [off] = await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    assert "My memory is off" in off.text and "/memory on" in off.text

    ollama.script("Happy early birthday.")
    telegram.push_message(chat, ANN, text="My birthday is on May 3rd.")
    await telegram.wait_for("sendVoice", chat_id=ANN["id"])
    user = store.find_user("telegram", str(ANN["id"]))
    assert user is not None
    await eventually(lambda: len(store.recent_turns(user.id, str(ANN["id"]))) == 2)
    await asyncio.sleep(0.1)  # the turn queues its exchange just after storing the reply
    await conversation.memory_settled()
    assert ollama.json_requests == []  # nothing was even asked of the model

    telegram.push_message(chat, ANN, text="/memory")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "My memory is off for you, and" in c.text)
    telegram.push_message(chat, ANN, text="/memory on")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "My memory is on" in c.text)
    ollama.script("Noted.")
    ollama.script_json(changes("Their birthday is on May 3rd."))
    telegram.push_message(chat, ANN, text="Remember, my birthday is on May 3rd.")
    await telegram.wait_for("sendVoice", chat_id=ANN["id"], count=2)
    await eventually(lambda: len(ollama.json_requests) == 1)
    await conversation.memory_settled()
    assert [fact.text for fact in (await conversation.memory(ANN_ALONE)).facts] == ["Their birthday is on May 3rd."]

    telegram.push_message(chat, ANN, text="/reset")
    [reset] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "(4 messages)" in c.text)
    assert "what I remember about you, are kept" in reset.text
    assert len((await conversation.memory(ANN_ALONE)).facts) == 1


async def test_telegram_memory_in_a_group_never_shows_the_facts(
    start_bot: Start, conversation: Conversation, store: Store
) -> None:
    telegram = await start_bot()
    group = telegram.group_chat(GROUP)
    remember(store, "telegram", str(ANN["id"]), str(ANN["id"]), "They love jazz.", "They are allergic to peanuts.")

    telegram.push_message(group, ANN, text="/memory")
    [private] = await telegram.wait_for("sendMessage", chat_id=GROUP)
    assert "only show it in a private chat" in private.text and f"@{BOT_USERNAME}" in private.text
    telegram.push_message(group, ANN, text=f"/memory@{BOT_USERNAME} forget 2")
    await telegram.wait_for("sendMessage", chat_id=GROUP, where=lambda c: c.text == "Done: I've forgotten that fact.")
    telegram.push_message(group, ANN, text="/memory clear")
    [question] = await telegram.wait_for("sendMessage", chat_id=GROUP, where=lambda c: "undone" in c.text)
    assert "everything I remember about you" in question.text and "1 fact" not in question.text
    telegram.press(ANN, question.result, button(question, "Yes"))
    [done] = await telegram.wait_for("editMessageText", chat_id=GROUP, where=lambda c: "Done" in c.text)
    assert "fact" not in done.text
    telegram.push_message(group, ANN, text="/memory off")
    await telegram.wait_for("sendMessage", chat_id=GROUP, where=lambda c: "My memory is off" in c.text)

    said = " ".join(call.text for call in telegram.sent("sendMessage", GROUP) + telegram.sent("editMessageText", GROUP))
    assert "jazz" not in said and "peanuts" not in said
    listing = await conversation.memory(ANN_ALONE)
    assert listing.facts == [] and not listing.enabled
    assert telegram.sent("sendMessage", ANN["id"]) == []


# -- Discord ----------------------------------------------------------------------------------------------------


@pytest.fixture
def memory_cog(conversation: Conversation, cog: AlanCommands) -> MemoryCommands:
    return MemoryCommands(conversation, cog.after_turns)


async def memory(cog: MemoryCommands, member: FakeMember, guild: FakeGuild, **options: object) -> FakeInteraction:
    interaction = FakeInteraction(member, guild)
    await run(MemoryCommands.memory, cog, interaction, **options)
    assert interaction.log[0].kind == "defer" and all(sent.ephemeral for sent in interaction.log)
    return interaction


async def test_discord_memory_lists_forgets_clears_and_switches_ephemerally(
    memory_cog: MemoryCommands, conversation: Conversation, guild: FakeGuild, ann: FakeMember, store: Store
) -> None:
    assert "I don't remember anything about you yet" in (await memory(memory_cog, ann, guild)).last.content
    remember(store, "discord", str(ann.id), "555", "They love jazz.", "They live in Lyon.")
    remember(store, "telegram", "1001", "1001", "Unrelated: someone else's.")

    listed = (await memory(memory_cog, ann, guild, action="list")).last.content
    assert "1. They love jazz. (told on Discord, today)" in listed and "2. They live in Lyon." in listed
    assert "someone else" not in listed and "/memory action:forget number:N" in listed

    needs = await memory(memory_cog, ann, guild, action="forget")
    assert "Say which fact to forget" in needs.last.content
    wrong = await memory(memory_cog, ann, guild, action="forget", number=9)
    assert "no fact number 9" in wrong.last.content
    forgot = await memory(memory_cog, ann, guild, action="forget", number=1)
    assert "forgotten “They love jazz.”" in forgot.last.content

    asked = await memory(memory_cog, ann, guild, action="clear")
    view = asked.last.view
    assert isinstance(view, ClearMemoryView) and "the one fact I remember" in asked.last.content
    await view.cancel.callback(FakeInteraction(ann, guild))
    assert len((await conversation.memory(view.who)).facts) == 1
    asked = await memory(memory_cog, ann, guild, action="clear")
    press = FakeInteraction(ann, guild)
    await asked.last.view.confirm.callback(press)
    assert "(1 fact)" in press.last.content and asked.last.view.cleared == 1
    assert (await conversation.memory(view.who)).facts == []
    again = await memory(memory_cog, ann, guild, action="clear")  # nothing left: no question
    assert again.last.view is None and "don't remember anything" in again.last.content

    off = await memory(memory_cog, ann, guild, action="off")
    assert "My memory is off" in off.last.content and not (await conversation.memory(view.who)).enabled
    await memory(memory_cog, ann, guild, action="on")
    assert (await conversation.memory(view.who)).enabled


async def test_discord_memory_a_full_list_comes_in_messages_discord_accepts(
    memory_cog: MemoryCommands, guild: FakeGuild, ann: FakeMember, store: Store
) -> None:
    long = " ".join(["and then"] * 30)
    remember(store, "discord", str(ann.id), "555", *[f"Fact {n}, {long}." for n in range(1, MAX_FACTS + 1)])
    listed = await memory(memory_cog, ann, guild)
    pieces = [sent.content for sent in listed.log if sent.kind == "followup"]
    assert len(pieces) > 1 and all(len(piece) <= 2000 for piece in pieces)
    text = "\n".join(pieces)
    assert f"{MAX_FACTS}. Fact {MAX_FACTS}," in text and f"as many facts as I keep ({MAX_FACTS})" in text


# -- the command line -------------------------------------------------------------------------------------------


@pytest.fixture
def cli_ollama() -> Iterator[FakeOllama]:
    yield from fake_ollama_in_thread([MODEL])


@pytest.fixture
def cli_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch, cli_ollama: FakeOllama) -> Iterator[Store]:
    """The tone synthesizer (no speech model), the fake Ollama, and the store the commands write to."""
    monkeypatch.setenv("ALAN_TTS_BACKEND", "tone")
    monkeypatch.setenv("ALAN_LLM_MODEL", MODEL)
    monkeypatch.setenv("OLLAMA_HOST", cli_ollama.host)
    monkeypatch.setenv("ALAN_DEVICE", "cpu")
    monkeypatch.setenv("ALAN_DATA_DIR", str(clean_env / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield Store(open_database(f"sqlite:///{(clean_env / 'data' / 'alan.db').resolve()}"))
    # The commands set up logging on the runner's stream, which is closed now: later tests must not write to it.
    root.handlers[:] = handlers
    root.setLevel(level)


def local_facts(store: Store) -> list[str]:
    local = local_participant()
    user = store.find_user(local.platform, local.user_id)
    return [] if user is None else [fact.text for fact in MemoryStore(store.sessions).facts(user.person_id)]


def test_alan_talk_ends_once_what_it_heard_is_remembered(cli_env: Store, cli_ollama: FakeOllama) -> None:
    cli_ollama.script("Jazz, lovely.")
    cli_ollama.script_json(changes("They love jazz."), first_delay=1.0)  # slower than the turn itself
    result = runner.invoke(app, ["talk", "--text", "I love jazz.", "-o", "reply.ogg"])
    assert result.exit_code == 0, result.output
    assert local_facts(cli_env) == ["They love jazz."]

    cli_ollama.script("Jazz.")
    assert runner.invoke(app, ["talk", "--text", "What music do I like?", "-o", "reply.ogg"]).exit_code == 0
    assert "They love jazz." in cli_ollama.chat_requests[-1]["messages"][0]["content"]


def test_alan_memory_list_forget_clear_off_on_and_reset(cli_env: Store, cli_ollama: FakeOllama) -> None:
    empty = runner.invoke(app, ["memory", "list"])
    assert empty.exit_code == 0 and "I don't remember anything about you yet" in empty.output
    assert "alan memory off" in empty.output
    assert runner.invoke(app, ["memory", "forget", "1"]).exit_code == 1
    assert cli_env.find_user("local", local_participant().user_id) is None  # asking stored no one

    cli_ollama.script("Noted.")
    cli_ollama.script_json(changes("They love jazz.", "They keep [bees] at home."))
    assert runner.invoke(app, ["talk", "--text", "I love jazz and keep bees.", "-o", "reply.ogg"]).exit_code == 0
    listed = runner.invoke(app, ["memory", "list"])
    assert "1. They love jazz. (told on the command line, today)" in listed.output
    assert "2. They keep [bees] at home." in listed.output  # not taken for markup

    reset = runner.invoke(app, ["reset"])
    assert reset.exit_code == 0 and "(2 messages)" in reset.output
    assert local_facts(cli_env) == ["They love jazz.", "They keep [bees] at home."]

    wrong = runner.invoke(app, ["memory", "forget", "5"])
    assert wrong.exit_code == 1 and "no fact number 5" in wrong.output
    forgot = runner.invoke(app, ["memory", "forget", "2"])
    assert forgot.exit_code == 0 and "forgotten “They keep [bees] at home.”" in forgot.output

    kept = runner.invoke(app, ["memory", "clear"], input="n\n")
    assert kept.exit_code == 1 and "Forget the one fact" in kept.output and "Nothing was forgotten" in kept.output
    assert local_facts(cli_env) == ["They love jazz."]
    cleared = runner.invoke(app, ["memory", "clear"], input="y\n")
    assert cleared.exit_code == 0 and "(1 fact)" in cleared.output and local_facts(cli_env) == []

    off = runner.invoke(app, ["memory", "off"])
    assert off.exit_code == 0 and "alan memory on" in off.output
    asked = len(cli_ollama.json_requests)
    cli_ollama.script("Noted.")
    assert runner.invoke(app, ["talk", "--text", "I have a dog.", "-o", "reply.ogg"]).exit_code == 0
    assert len(cli_ollama.json_requests) == asked  # `alan talk` waited: nothing was asked
    assert "My memory is off" in runner.invoke(app, ["memory", "list"]).output

    assert runner.invoke(app, ["memory", "on"]).exit_code == 0
    cli_ollama.script("Noted.")
    cli_ollama.script_json(changes("They have a dog."))
    assert runner.invoke(app, ["talk", "--text", "I have a dog.", "-o", "reply.ogg"]).exit_code == 0
    assert local_facts(cli_env) == ["They have a dog."]
    yes = runner.invoke(app, ["memory", "clear", "--yes"])
    assert yes.exit_code == 0 and local_facts(cli_env) == []
