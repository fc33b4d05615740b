"""One person, two accounts: /link codes, what linking shares (memory, voices, the active voice) and what it doesn't
(each chat's conversation), /unlink, and /forget from either side. On the real engine, the local Ollama server
answering the memory's structured requests, and a migrated database."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from engine.conversation import Conversation, Participant
from engine.store.links import BAD_CODE, MAX_FAILURES, OWN_CODE, TOO_MANY, LinkError
from engine.store.models import LinkCode, Memory, Person, Turn, User, Voice, utcnow
from engine.store.repository import Store
from tests.fakes.ollama_server import FakeOllama
from tests.postgres import DATABASES, database_url_for

TELEGRAM = Participant("telegram", "1001", "1001", "Ann Lee")
DISCORD = Participant("discord", "555", "777", "annie", parent_scope="42", shared=True)
MALLORY = Participant("discord", "666", "777", "mallory", parent_scope="42", shared=True)


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest) -> str:
    """The store under these tests runs on SQLite and on PostgreSQL, each time on a new, empty database."""
    return database_url_for(request)


async def talk(conversation: Conversation, who: Participant, text: str) -> None:
    [_ async for _ in conversation.turn(who, text=text, speak=False)]
    await conversation.memory_settled()


def fact(text: str) -> str:
    return json.dumps({"changes": [{"action": "add", "number": 0, "fact": text}]})


def system_prompt(ollama: FakeOllama) -> str:
    return str(ollama.chat_requests[-1]["messages"][0]["content"])


async def test_a_fact_told_on_telegram_reaches_discord_after_linking_and_not_before(
    conversation: Conversation, ollama: FakeOllama
) -> None:
    ollama.script_json(fact("Their dog is called Rex."))
    await talk(conversation, TELEGRAM, "My dog Rex chewed my shoes.")
    await talk(conversation, DISCORD, "Alan, do you know my dog's name?")
    assert "Rex" not in system_prompt(ollama)  # a stranger on Discord, for now

    code = await conversation.link_code(TELEGRAM)
    assert len(code.replace("-", "")) == 10
    offer = await conversation.link_offer(DISCORD, code.lower())  # as typed: case and dash don't matter
    assert str(offer) == "Ann Lee on Telegram"
    await talk(conversation, DISCORD, "Alan, still there?")
    assert "Rex" not in system_prompt(ollama)  # confirming is a step of its own: nothing linked yet
    assert str(await conversation.link(DISCORD, code)) == "Ann Lee on Telegram"
    await talk(conversation, DISCORD, "Alan, what's my dog called?")
    assert "Their dog is called Rex." in system_prompt(ollama)
    # The conversation stays per chat: the Discord prompt holds none of the Telegram talk.
    assert "chewed" not in json.dumps(ollama.chat_requests[-1]["messages"][1:])
    assert [str(account) for account in await conversation.linked_accounts(TELEGRAM)] == ["annie on Discord"]
    # What either account tells is the person's now.
    ollama.script_json(fact("They play the cello."))
    await talk(conversation, DISCORD, "Alan, I play the cello.")
    assert {f.text for f in (await conversation.memory(TELEGRAM)).facts} == {
        "Their dog is called Rex.",
        "They play the cello.",
    }


async def test_wrong_expired_reused_and_own_codes_link_nothing_and_say_nothing_of_whose(
    conversation: Conversation, store: Store
) -> None:
    code = await conversation.link_code(TELEGRAM)
    with pytest.raises(LinkError, match="^" + OWN_CODE):
        await conversation.link(TELEGRAM, code)
    for wrong in ("ABCDE-FGHJK", "x" * 500):  # (with the two below, four wrong tries: under the limit)
        with pytest.raises(LinkError) as raised:
            await conversation.link(DISCORD, wrong)
        assert str(raised.value) == BAD_CODE and "Ann" not in str(raised.value)
    # Expired: the same answer as a wrong code.
    with store.sessions.begin() as session:
        session.execute(update(LinkCode).values(expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(LinkError, match="mistyped, already used or expired"):
        await conversation.link(DISCORD, code)
    # A new code replaces the old one, and works once.
    old, code = code, await conversation.link_code(TELEGRAM)
    with pytest.raises(LinkError):
        await conversation.link(DISCORD, old)
    await conversation.link(DISCORD, code)
    with pytest.raises(LinkError, match="mistyped, already used or expired"):
        await conversation.link(MALLORY, code)  # used: nobody else can follow with it
    assert await conversation.linked_accounts(MALLORY) == []
    with store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Person)) == 2  # Ann (both accounts), Mallory


async def test_an_account_guessing_codes_is_stopped(conversation: Conversation) -> None:
    code = await conversation.link_code(TELEGRAM)
    for _ in range(MAX_FAILURES):
        with pytest.raises(LinkError, match="doesn't work"):
            await conversation.link_offer(MALLORY, "ZZZZZ-ZZZZZ")
    with pytest.raises(LinkError, match="^" + TOO_MANY):
        await conversation.link_offer(MALLORY, code)  # even the right code, once locked out
    assert await conversation.linked_accounts(TELEGRAM) == []


async def test_linked_accounts_share_voices_and_the_active_voice_and_unlink_splits_them(
    conversation: Conversation, store: Store
) -> None:
    ann_tg = store.user("telegram", TELEGRAM.user_id, "Ann Lee")
    voice = store.add_voice(ann_tg.id, "warm", reference_audio=b"OggS", reference_seconds=4.0, transcript="hi",
                            consent_statement="This is my voice.")  # fmt: skip
    store.choose_voice(ann_tg.id, voice.id)
    ann_dc = store.user("discord", DISCORD.user_id, "annie")
    assert store.voices_of(ann_dc.id) == [] and store.active_voice(ann_dc.id, DISCORD.scope) is None
    await conversation.link(DISCORD, await conversation.link_code(TELEGRAM))
    assert [v.name for v in await conversation.voices(DISCORD)] == ["warm"]
    active = store.active_voice(ann_dc.id, DISCORD.scope)
    assert active is not None and active.id == voice.id

    assert [str(account) for account in await conversation.unlink(DISCORD)] == ["Ann Lee on Telegram"]
    assert await conversation.linked_accounts(TELEGRAM) == []
    assert await conversation.voices(DISCORD) == [] and store.active_voice(ann_dc.id, DISCORD.scope) is None
    assert [v.name for v in await conversation.voices(TELEGRAM)] == ["warm"]  # the voice stays where it was made
    assert await conversation.unlink(DISCORD) == []  # not linked any more


async def test_unlinking_leaves_each_account_a_copy_of_the_memory(
    conversation: Conversation, ollama: FakeOllama
) -> None:
    await conversation.link(DISCORD, await conversation.link_code(TELEGRAM))
    ollama.script_json(fact("They live in Oslo."))
    await talk(conversation, TELEGRAM, "I live in Oslo.")
    await conversation.unlink(DISCORD)
    assert [f.text for f in (await conversation.memory(DISCORD)).facts] == ["They live in Oslo."]
    await conversation.clear_memory(TELEGRAM)
    assert [f.text for f in (await conversation.memory(DISCORD)).facts] == ["They live in Oslo."]  # a copy


async def test_forget_from_either_account_removes_the_person_and_both_accounts(
    conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    ollama.script_json(fact("They are a pilot."))
    await talk(conversation, TELEGRAM, "I fly planes for a living.")
    await talk(conversation, DISCORD, "Alan, hello.")
    await conversation.link(DISCORD, await conversation.link_code(TELEGRAM))
    assert await conversation.forget(DISCORD)
    with store.sessions() as session:
        for table in (User, Person, Memory, Turn, Voice, LinkCode):
            assert session.scalar(select(func.count()).select_from(table)) == 0, table.__tablename__


async def test_the_joining_accounts_voice_is_everyones_when_the_other_chose_none(
    conversation: Conversation, store: Store
) -> None:
    ann_tg = store.user("telegram", TELEGRAM.user_id, "Ann Lee")
    ann_dc = store.user("discord", DISCORD.user_id, "annie")
    voice = store.add_voice(ann_dc.id, "bright", reference_audio=b"OggS", reference_seconds=4.0, transcript="hi",
                            consent_statement="This is my voice.")  # fmt: skip
    store.choose_voice(ann_dc.id, voice.id)
    await conversation.link(DISCORD, await conversation.link_code(TELEGRAM))
    active = store.active_voice(ann_tg.id, TELEGRAM.scope)
    assert active is not None and active.id == voice.id
