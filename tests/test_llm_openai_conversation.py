"""A conversation turn with the OpenAI-compatible backend: the real `openai` client, a fake server speaking the
OpenAI protocol, and the rest of the engine real (tiny Whisper, tiny CSM, migrated SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engine.conversation import Conversation, Participant
from engine.errors import ServiceUnavailableError
from engine.events import ReplySentence, TurnEvent, TurnFinished
from engine.llm import OpenAIChat
from engine.store.repository import Store
from engine.stt import WhisperTranscriber
from engine.tts.csm import CsmSpeech
from tests.engine_harness import make_conversation
from tests.fakes.openai_server import FakeOpenAI

ANN = Participant("telegram", "1001", "chat-1", "Ann")
MODEL = "gemma-3-270m"
KEY = "sk-right-key-2468"


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=[MODEL], api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def build(
    store: Store, whisper: WhisperTranscriber, tiny_speech: CsmSpeech, tiny_csm_dir: Path, server: FakeOpenAI
) -> AsyncIterator[Callable[..., Conversation]]:
    made: list[OpenAIChat] = []

    def make(api_key: str = KEY) -> Conversation:
        llm = OpenAIChat(MODEL, server.base_url, api_key=api_key, first_token_timeout=30, token_timeout=30)
        made.append(llm)
        return make_conversation(store, whisper, tiny_speech, tiny_csm_dir, server.host, llm=llm)

    yield make
    # An openai client left open closes itself when collected, on whatever loop runs then: a later test's.
    for llm in made:
        await llm.aclose()


async def collect(events: AsyncIterator[TurnEvent]) -> list[TurnEvent]:
    return [event async for event in events]


def stored(store: Store) -> list[tuple[str, str]]:
    user = store.find_user("telegram", "1001")
    assert user is not None
    return [(turn.role, turn.text) for turn in store.recent_turns(user.id, "chat-1")]


async def test_a_turn_streams_sentences_and_the_next_carries_the_history(
    build: Callable[..., Conversation], server: FakeOpenAI, store: Store
) -> None:
    conversation = build()
    server.script("Hello there", ". How are", " you today?")
    events = await collect(conversation.turn(ANN, text="hi how are you"))
    assert [e.text for e in events if isinstance(e, ReplySentence)] == ["Hello there.", "How are you today?"]
    assert next(e for e in events if isinstance(e, TurnFinished)).reply_text == "Hello there. How are you today?"

    server.script("You said hi.")
    await collect(conversation.turn(ANN, text="what did I say", speak=False))
    sent = server.chat_requests[-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "hi how are you"),
        ("assistant", "Hello there. How are you today?"),
        ("user", "what did I say"),
    ]
    assert stored(store)[-1] == ("assistant", "You said hi.")


async def test_a_refused_key_is_a_clear_message_and_the_users_turn_is_kept(
    build: Callable[..., Conversation], store: Store
) -> None:
    wrong = "sk-wrong-1357"
    with pytest.raises(ServiceUnavailableError, match="language model isn't answering") as raised:
        await collect(build(api_key=wrong).turn(ANN, text="are you there"))
    assert "ALAN_LLM_API_KEY" in raised.value.detail and wrong not in raised.value.detail
    assert stored(store) == [("user", "are you there")]


async def test_a_server_that_is_down_keeps_the_users_turn(
    store: Store, whisper: WhisperTranscriber, tiny_speech: CsmSpeech, tiny_csm_dir: Path
) -> None:
    llm = OpenAIChat(MODEL, "http://127.0.0.1:9/v1", max_retries=0)  # nothing listens on the discard port
    conversation = make_conversation(store, whisper, tiny_speech, tiny_csm_dir, "http://127.0.0.1:9", llm=llm)
    with pytest.raises(ServiceUnavailableError) as raised:
        try:
            await collect(conversation.turn(ANN, text="hello?"))
        finally:
            await llm.aclose()
    assert "Cannot reach" in raised.value.detail and "ALAN_LLM_BASE_URL" in raised.value.detail
    assert stored(store) == [("user", "hello?")]


async def test_a_stream_broken_mid_reply_keeps_the_users_turn(
    build: Callable[..., Conversation], server: FakeOpenAI, store: Store
) -> None:
    server.script("I was about to", " say something", drop_after=1)
    with pytest.raises(ServiceUnavailableError) as raised:
        await collect(build().turn(ANN, text="tell me a story", speak=False))
    assert "Lost the connection" in raised.value.detail
    assert stored(store)[0] == ("user", "tell me a story")


async def test_memory_works_through_the_openai_backend_json_schema(
    build: Callable[..., Conversation], server: FakeOpenAI
) -> None:
    conversation = build()
    server.script_json('{"changes": [{"action": "add", "number": 0, "fact": "They grow tomatoes."}]}')
    await collect(conversation.turn(ANN, text="I grow tomatoes on my balcony.", speak=False))
    await conversation.memory_settled()
    [extraction] = server.json_requests
    assert extraction["response_format"]["type"] == "json_schema"
    assert extraction["response_format"]["json_schema"]["strict"] is True
    await collect(conversation.turn(ANN, text="What do I grow?", speak=False))
    assert "They grow tomatoes." in server.chat_requests[-1]["messages"][0]["content"]
