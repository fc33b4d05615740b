"""Long-term memory on the real engine and the local Ollama server answering structured-output requests: a fact told
in one turn reaches later prompts (after /reset too), /memory forget and clear take it out, one person's facts never
reach another's prompt in a group, malformed output changes nothing, /forget leaves no row; and reconciliation."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from sqlalchemy import event, func, select

from engine.conversation import Conversation, Participant
from engine.errors import BadInputError
from engine.memory import EXTRACTION_SCHEMA, MAX_FACTS, SUMMARY_BATCH, reconcile
from engine.store.database import open_database
from engine.store.memories import FactChange, MemoryStore
from engine.store.models import Memory, Person, Turn, User
from engine.store.repository import Store
from tests.fakes.ollama_server import FakeOllama
from tests.postgres import DATABASES, database_url_for

ANN = Participant("telegram", "1", "chat-1", "Ann")
IN_GROUP_ANN = Participant("telegram", "1", "group", "Ann", shared=True)
IN_GROUP_BOB = Participant("telegram", "2", "group", "Bob", shared=True)


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest) -> str:
    """The store under these tests runs on SQLite and on PostgreSQL, each time on a new, empty database."""
    return database_url_for(request)


def changes(*items: tuple[str, int, str]) -> str:
    return json.dumps({"changes": [{"action": a, "number": n, "fact": f} for a, n, f in items]})


async def talk(conversation: Conversation, who: Participant, text: str) -> None:
    [_ async for _ in conversation.turn(who, text=text, speak=False)]
    await conversation.memory_settled()


def system_prompt(ollama: FakeOllama) -> str:
    return str(ollama.chat_requests[-1]["messages"][0]["content"])


async def test_a_fact_told_once_is_in_later_prompts_even_after_reset(
    conversation: Conversation, ollama: FakeOllama
) -> None:
    ollama.script_json(changes(("add", 0, "Their sister is called Maria.")))
    await talk(conversation, ANN, "My sister Maria is visiting next week.")
    # The extraction request: the person's words and the answer, the schema, the known facts (none yet).
    [request] = ollama.json_requests
    assert request["format"] == EXTRACTION_SCHEMA and request["stream"] is False
    assert "Ann: My sister Maria is visiting next week." in request["messages"][1]["content"]
    assert "(none yet)" in request["messages"][1]["content"]
    assert "Their sister is called Maria." not in system_prompt(ollama)  # the turn itself didn't wait for it

    assert await conversation.reset(ANN) == 2
    await talk(conversation, ANN, "Who is visiting me?")
    assert "Their sister is called Maria." in system_prompt(ollama)
    assert [message["role"] for message in ollama.chat_requests[-1]["messages"]] == ["system", "user"]  # reset
    # The next extraction numbers what is known, to update or delete by number.
    assert "1. Their sister is called Maria." in ollama.json_requests[-1]["messages"][1]["content"]


async def test_memory_forget_and_clear_take_facts_out_of_the_next_prompt(
    conversation: Conversation, ollama: FakeOllama
) -> None:
    ollama.script_json(changes(("add", 0, "They live in Lyon."), ("add", 0, "They love jazz.")))
    await talk(conversation, ANN, "I live in Lyon and I love jazz.")
    listing = await conversation.memory(ANN)
    assert [(fact.number, fact.text, fact.scope) for fact in listing.facts] == [
        (1, "They live in Lyon.", "chat-1"),
        (2, "They love jazz.", "chat-1"),
    ]
    assert await conversation.forget_fact(ANN, 1) == "They live in Lyon."
    with pytest.raises(BadInputError, match="no fact number 5"):
        await conversation.forget_fact(ANN, 5)
    await talk(conversation, ANN, "Hello again.")
    assert "Lyon" not in system_prompt(ollama) and "They love jazz." in system_prompt(ollama)
    assert await conversation.clear_memory(ANN) == 1
    await talk(conversation, ANN, "Hello once more.")
    assert "jazz" not in system_prompt(ollama) and "remember" not in system_prompt(ollama)


async def test_memory_off_extracts_nothing_and_on_again_resumes(
    conversation: Conversation, ollama: FakeOllama
) -> None:
    await conversation.set_memory_enabled(ANN, False)
    await talk(conversation, ANN, "My birthday is on May 3rd.")
    assert ollama.json_requests == [] and not (await conversation.memory(ANN)).enabled
    await conversation.set_memory_enabled(ANN, True)
    ollama.script_json(changes(("add", 0, "Their birthday is on May 3rd.")))
    await talk(conversation, ANN, "My birthday is on May 3rd.")
    assert [fact.text for fact in (await conversation.memory(ANN)).facts] == ["Their birthday is on May 3rd."]


async def test_in_a_group_each_person_has_only_their_own_facts(
    conversation: Conversation, ollama: FakeOllama
) -> None:
    ollama.script_json(changes(("add", 0, "They are allergic to peanuts.")))
    await talk(conversation, IN_GROUP_ANN, "Alan, I'm allergic to peanuts.")
    ollama.script_json(changes())
    await talk(conversation, IN_GROUP_BOB, "Alan, what should I cook tonight?")
    # Bob's turn: the group's words are there (Ann said them), but not her memory, which is hers alone.
    assert "Ann: Alan, I'm allergic to peanuts." in ollama.chat_requests[-1]["messages"][1]["content"]
    assert "They are allergic to peanuts." not in system_prompt(ollama)
    # Bob's extraction saw only his own words and the answer to him.
    bob_extraction = ollama.json_requests[-1]["messages"][1]["content"]
    assert "peanuts" not in bob_extraction and "Bob: Alan, what should I cook tonight?" in bob_extraction
    assert (await conversation.memory(IN_GROUP_BOB)).facts == []
    await talk(conversation, IN_GROUP_ANN, "Alan, anything for dinner?")
    assert "They are allergic to peanuts." in system_prompt(ollama)


@pytest.mark.parametrize(
    "output",
    ['{"changes": [', '["add"]', '{"changes": "add everything"}', '{"facts": []}'],
)
async def test_malformed_extraction_leaves_the_turn_and_the_memory_untouched(
    conversation: Conversation, ollama: FakeOllama, output: str
) -> None:
    ollama.script_json(changes(("add", 0, "They have a cat called Tom.")))
    await talk(conversation, ANN, "My cat Tom is sick.")
    ollama.script("Oh no, I hope he gets better.")
    ollama.script_json(output)
    events = [event async for event in conversation.turn(ANN, text="He is not eating.", speak=False)]
    assert events[-1].reply_text == "Oh no, I hope he gets better."  # type: ignore[union-attr]
    await conversation.memory_settled()
    assert [fact.text for fact in (await conversation.memory(ANN)).facts] == ["They have a cat called Tom."]


async def test_the_llm_down_during_extraction_costs_nothing(conversation: Conversation, ollama: FakeOllama) -> None:
    ollama.script_json(error="model runner crashed")
    await talk(conversation, ANN, "I started a new job.")
    assert (await conversation.memory(ANN)).facts == []
    ollama.script_json(changes(("add", 0, "They started a new job.")))
    await talk(conversation, ANN, "I started a new job, at a bakery.")  # the keeper goes on with the next turn
    assert len((await conversation.memory(ANN)).facts) == 1


async def test_forget_leaves_no_row_of_the_person(conversation: Conversation, ollama: FakeOllama, store: Store) -> None:
    ollama.script_json(changes(("add", 0, "They work as a nurse.")))
    await talk(conversation, ANN, "I'm a nurse.")
    assert await conversation.forget(ANN)
    with store.sessions() as session:
        for table in (User, Person, Memory, Turn):
            assert session.scalar(select(func.count()).select_from(table)) == 0, table.__tablename__


async def test_facts_past_the_cap_let_the_least_used_go(conversation: Conversation, ollama: FakeOllama) -> None:
    ollama.script_json(changes(*[("add", 0, f"Fact number {n}.") for n in range(MAX_FACTS)]))
    await talk(conversation, ANN, "Let me tell you everything about me.")
    await talk(conversation, ANN, "Hi.")  # every fact is given to the LLM: each used once
    ollama.script_json(changes(("add", 0, "One more fact.")))
    await talk(conversation, ANN, "And one more thing.")
    facts = [fact.text for fact in (await conversation.memory(ANN)).facts]
    assert len(facts) == MAX_FACTS and "One more fact." in facts and "Fact number 0." not in facts


async def test_older_conversation_is_folded_into_a_summary(conversation: Conversation, ollama: FakeOllama) -> None:
    conversation._keeper.history_turns = 4  # a short window, so that turns fall out of it soon
    for index in range(SUMMARY_BATCH // 2 + 2):
        ollama.script_json(changes())
        if index == SUMMARY_BATCH // 2 + 1:
            ollama.script_json(json.dumps({"summary": "They planned a trip to Rome."}))
        await talk(conversation, ANN, f"Message {index}.")
    assert any("summary" in str(request["format"]) for request in ollama.json_requests)
    await talk(conversation, ANN, "Where was I going?")
    assert "They planned a trip to Rome." in system_prompt(ollama)
    # In a group, only facts: the summary covers their private chats, which are not for the room.
    await talk(conversation, IN_GROUP_ANN, "Alan, where was I going?")
    assert "Rome" not in system_prompt(ollama)


def test_reconcile_drops_duplicates_and_keeps_only_valid_changes() -> None:
    class Known:
        def __init__(self, id: int, text: str) -> None:
            self.id, self.text = id, text

    facts: list[Any] = [Known(10, "Their sister is called Maria."), Known(11, "They live in Lyon.")]
    raw = {
        "changes": [
            {"action": "add", "number": 0, "fact": "their sister is called  Maria"},  # a duplicate, written apart
            {"action": "add", "number": 0, "fact": "They have a dog."},
            {"action": "add", "number": 0, "fact": "They have a dog!"},  # the same again
            {"action": "update", "number": 2, "fact": "They live in Paris now."},
            {"action": "delete", "number": 2, "fact": ""},  # the same fact twice: the first change wins
            {"action": "delete", "number": 7, "fact": ""},  # no such fact
            {"action": "shout", "number": 1, "fact": "x"},
            "nonsense",
        ]
    }
    assert reconcile(facts, raw) == [
        FactChange("add", "They have a dog."),
        FactChange("update", "They live in Paris now.", 11),
    ]


async def test_clearing_while_a_turn_is_being_remembered_keeps_it_cleared(
    conversation: Conversation, ollama: FakeOllama
) -> None:
    ollama.script_json(changes(("add", 0, "They hate mornings.")), first_delay=0.5)
    [_ async for _ in conversation.turn(ANN, text="I hate mornings.", speak=False)]
    await asyncio.sleep(0.1)  # the extraction is under way (the model takes its time)
    await conversation.clear_memory(ANN)
    await conversation.memory_settled()
    assert (await conversation.memory(ANN)).facts == []


# Two processes on one database: the clear is answered by one, the turns were remembered by the other.


async def test_clearing_in_another_process_while_a_turn_is_being_remembered_here_keeps_it_cleared(
    conversation: Conversation, other_conversation: Conversation, ollama: FakeOllama
) -> None:
    ollama.script_json(changes(("add", 0, "They hate mornings.")), first_delay=0.5)
    [_ async for _ in conversation.turn(ANN, text="I hate mornings.", speak=False)]
    await asyncio.sleep(0.1)  # the extraction is under way here (the model takes its time)
    assert await other_conversation.clear_memory(ANN) == 0  # `/memory clear`, answered by the other process
    await conversation.memory_settled()
    assert (await conversation.memory(ANN)).facts == []
    assert len(ollama.json_requests) == 1


async def test_a_turn_before_a_clear_in_another_process_is_not_remembered_even_when_its_extraction_starts_after(
    conversation: Conversation, other_conversation: Conversation, ollama: FakeOllama
) -> None:
    ollama.script_json(changes(("add", 0, "They hate mornings.")), first_delay=0.5)
    ollama.script_json(changes(("add", 0, "They drink tea.")))
    [_ async for _ in conversation.turn(ANN, text="I hate mornings.", speak=False)]
    await asyncio.sleep(0.1)  # the first turn's extraction is under way: the second's waits for the worker
    [_ async for _ in conversation.turn(ANN, text="I drink tea.", speak=False)]
    await other_conversation.clear_memory(ANN)
    await conversation.memory_settled()
    assert (await conversation.memory(ANN)).facts == []
    assert len(ollama.json_requests) == 1  # the second turn, said before the clear, was not even sent to the model

    # What is said after the clear is remembered as before.
    await talk(conversation, ANN, "I drink tea.")
    assert [fact.text for fact in (await conversation.memory(ANN)).facts] == ["They drink tea."]


async def test_memory_switched_off_and_on_in_another_process_drops_what_was_said_before(
    conversation: Conversation, other_conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    ollama.script_json(changes(("add", 0, "They hate mornings.")), first_delay=0.5)
    [_ async for _ in conversation.turn(ANN, text="I hate mornings.", speak=False)]
    await asyncio.sleep(0.1)
    await other_conversation.set_memory_enabled(ANN, False)
    await other_conversation.set_memory_enabled(ANN, True)  # on again before the extraction here ends
    await conversation.memory_settled()
    assert (await conversation.memory(ANN)).facts == []
    with store.sessions() as session:
        assert session.scalar(select(Person.memory_epoch)) == 2


def test_after_a_clear_or_a_switch_the_summary_folds_in_only_what_is_said_from_then_on(store: Store) -> None:
    memory = MemoryStore(store.sessions)
    ann = store.user("telegram", "1", "Ann")
    for n in range(30):
        store.add_turn(ann.id, "chat-1", "user", f"secret {n}")
    assert [turn.text for turn in memory.turns_to_summarise(ann.person_id, 10, 100)][:1] == ["secret 0"]
    memory.clear(ann.person_id)
    assert memory.turns_to_summarise(ann.person_id, 10, 100) == []  # nothing said before the clear
    for n in range(12):
        store.add_turn(ann.id, "chat-1", "user", f"new {n}")
    assert [turn.text for turn in memory.turns_to_summarise(ann.person_id, 10, 100)] == ["new 0", "new 1"]
    memory.set_enabled(ann.person_id, False)
    for n in range(3):
        store.add_turn(ann.id, "chat-1", "user", f"while off {n}")
    assert memory.set_enabled(ann.person_id, True)
    assert memory.turns_to_summarise(ann.person_id, 10, 100) == []  # nor before, nor while memory was off
    for n in range(12):
        store.add_turn(ann.id, "chat-1", "user", f"on again {n}")
    assert not memory.set_enabled(ann.person_id, True)  # `on` once more: not a switch, nothing moves
    assert [turn.text for turn in memory.turns_to_summarise(ann.person_id, 10, 100)] == ["on again 0", "on again 1"]
    assert memory.person(ann.person_id).memory_epoch == 3  # type: ignore[union-attr]


def test_a_clear_that_commits_while_facts_are_written_is_never_undone_by_them(store: Store, database_url: str) -> None:
    memory, other = MemoryStore(store.sessions), MemoryStore(open_database(database_url))  # another process
    person = store.user("telegram", "1", "Ann").person_id
    engine = store.sessions.kw["bind"]
    clearing: list[threading.Thread] = []

    def clear_meanwhile(connection, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        # Right after the writing transaction's first look at the person: the other process clears.
        if not clearing and "people" in statement.lower():
            clearing.append(threading.Thread(target=other.clear, args=(person,)))
            clearing[0].start()
            time.sleep(0.3)  # time enough to commit, unless the write holds it back

    event.listen(engine, "after_cursor_execute", clear_meanwhile)
    try:
        memory.apply(person, [FactChange("add", "They hate mornings.")], platform="telegram", scope="chat-1",
                     cap=MAX_FACTS, epoch=0)  # fmt: skip
    finally:
        event.remove(engine, "after_cursor_execute", clear_meanwhile)
    clearing[0].join(30)
    assert memory.facts(person) == []
    assert memory.person(person).memory_epoch == 1  # type: ignore[union-attr]
