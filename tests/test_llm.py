"""engine.llm through the real `ollama` client against a fake server speaking Ollama's wire protocol."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import ollama
import pytest

from engine.errors import LlmUnavailableError
from engine.llm import SYSTEM_PROMPT, ChatMessage, OllamaChat, canonical_model, trim_history
from engine.llm.prompt import build_messages
from tests.fakes.ollama_server import FakeOllama

MODEL = "llama3.2:3b"


@pytest.fixture
async def server() -> AsyncIterator[FakeOllama]:
    async with FakeOllama(models=[MODEL, "qwen2.5:latest"]) as fake:
        yield fake


@pytest.fixture
async def chat(server: FakeOllama) -> AsyncIterator[OllamaChat]:
    async with OllamaChat(MODEL, server.host, first_token_timeout=3.0, token_timeout=3.0) as client:
        yield client


def closed_port_host() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens here any more: connection refused


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [delta async for delta in stream]


# --- streaming ---


async def test_streams_deltas_in_order(chat: OllamaChat, server: FakeOllama) -> None:
    server.script("Hi", " there", "! How are", " you?")
    deltas = await collect(chat.stream_reply([], "Hello"))
    assert deltas == ["Hi", " there", "! How are", " you?"]
    (request,) = server.chat_requests
    assert request["model"] == MODEL
    assert request["stream"] is True
    assert request["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Hello"},
    ]
    assert request["options"]["num_predict"] == 300
    assert request["keep_alive"] == "30m"


async def test_history_is_sent_between_system_prompt_and_new_turn(chat: OllamaChat, server: FakeOllama) -> None:
    history = [ChatMessage("user", "My cat is called Miso."), ChatMessage("assistant", "What a lovely name!")]
    assert await chat.reply(history, "What is my cat called?") == "Okay."  # the fake's default reply
    messages = server.chat_requests[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "My cat is called Miso."
    assert messages[-1]["content"] == "What is my cat called?"


async def test_long_history_is_trimmed_to_the_newest_turns(server: FakeOllama) -> None:
    history = [ChatMessage("user" if i % 2 == 0 else "assistant", f"turn {i:02d} " + "x" * 92) for i in range(20)]
    async with OllamaChat(MODEL, server.host, history_chars=450) as chat:
        await chat.reply(history, "latest question")  # 15 chars: 435 left, room for four 100-char turns
    messages = server.chat_requests[0]["messages"]
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}  # the system prompt always goes
    assert [m["content"][:7] for m in messages[1:-1]] == ["turn 16", "turn 17", "turn 18", "turn 19"]
    assert messages[-1] == {"role": "user", "content": "latest question"}
    assert sum(len(m["content"]) for m in messages[1:]) <= 450


def test_trim_history_keeps_an_unbroken_tail() -> None:
    history = [
        ChatMessage("user", "a" * 10),
        ChatMessage("assistant", "b" * 50),  # too big: everything older is dropped with it
        ChatMessage("user", "   "),  # blank turns carry nothing
        ChatMessage("assistant", "c" * 10),
        ChatMessage("user", "d" * 10),
    ]
    assert [m.content[0] for m in trim_history(history, 40)] == ["c", "d"]
    assert trim_history(history, 5) == []
    assert trim_history([], 100) == []


async def test_context_is_added_to_the_system_prompt(chat: OllamaChat, server: FakeOllama) -> None:
    await chat.reply([], "Hi", context="The person's name is Ada.")
    system = server.chat_requests[0]["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith(SYSTEM_PROMPT)
    assert system["content"].endswith("The person's name is Ada.")


def test_system_prompt_asks_for_speakable_text() -> None:
    prompt = SYSTEM_PROMPT.lower()
    assert "alan" in prompt and "aloud" in prompt and "brief" in prompt
    for banned in ("markdown", "lists", "emoji", "links"):
        assert banned in prompt


async def test_closing_the_stream_early_is_clean(chat: OllamaChat, server: FakeOllama) -> None:
    server.script("First sentence.", " Second", " sentence.", chunk_delay=0.05)
    stream = chat.stream_reply([], "Talk to me")
    assert await anext(stream) == "First sentence."
    await stream.aclose()  # barge-in: the user started speaking
    server.script("Next.")
    assert await chat.reply([], "Again") == "Next."  # the client still works afterwards


# --- failures: one error type that says the fix ---


async def test_server_down_says_start_ollama() -> None:
    async with OllamaChat(MODEL, closed_port_host()) as chat:
        with pytest.raises(LlmUnavailableError, match="ollama serve"):
            await collect(chat.stream_reply([], "Hello"))


async def test_missing_model_says_pull_it(server: FakeOllama) -> None:
    async with OllamaChat("mistral:7b", server.host) as chat:
        with pytest.raises(LlmUnavailableError, match=r"Run `ollama pull mistral:7b`"):
            await collect(chat.stream_reply([], "Hello"))
    assert server.chat_requests[0]["model"] == "mistral:7b"


async def test_slow_first_token_times_out(server: FakeOllama) -> None:
    server.script("Too late.", first_delay=10.0)
    async with OllamaChat(MODEL, server.host, first_token_timeout=0.3) as chat:
        started = time.monotonic()
        with pytest.raises(LlmUnavailableError, match=r"did not start answering within 0\.3 s"):
            await collect(chat.stream_reply([], "Hello"))
    assert time.monotonic() - started < 3.0


async def test_stall_mid_reply_times_out_after_the_first_words(server: FakeOllama) -> None:
    server.script("Well,", " then.", chunk_delay=10.0)
    received: list[str] = []
    async with OllamaChat(MODEL, server.host, token_timeout=0.3) as chat:
        with pytest.raises(LlmUnavailableError, match="stopped sending text"):
            async for delta in chat.stream_reply([], "Hello"):
                received.append(delta)
    assert received == ["Well,"]


async def test_error_line_mid_stream_is_reported(chat: OllamaChat, server: FakeOllama) -> None:
    server.script("Hel", error="llama runner process has terminated")
    with pytest.raises(LlmUnavailableError, match="llama runner process has terminated"):
        await collect(chat.stream_reply([], "Hello"))


# --- check() for `alan doctor` ---


async def test_check_ok(chat: OllamaChat, server: FakeOllama) -> None:
    status = await chat.check()
    assert status.ok and status.reachable and status.model_present
    assert status.available_models == (MODEL, "qwen2.5:latest")
    assert MODEL in status.message
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/api/tags")]


async def test_check_accepts_a_name_without_tag(server: FakeOllama) -> None:
    async with OllamaChat("qwen2.5", server.host) as chat:
        assert (await chat.check()).ok


async def test_check_missing_model(server: FakeOllama) -> None:
    async with OllamaChat("mistral", server.host) as chat:
        status = await chat.check()
    assert status.reachable and not status.model_present and not status.ok
    assert "ollama pull mistral" in status.message
    assert [r.path for r in server.requests] == ["/api/tags", "/api/show"]
    assert server.requests[1].body == {"model": "mistral"}


async def test_check_server_down() -> None:
    async with OllamaChat(MODEL, closed_port_host()) as chat:
        status = await chat.check()
    assert not status.reachable and not status.ok
    assert "ollama serve" in status.message


def test_canonical_model_names() -> None:
    assert canonical_model("llama3.2") == "llama3.2:latest"
    assert canonical_model("llama3.2:3b") == "llama3.2:3b"
    assert canonical_model("registry.local:5000/team/model") == "registry.local:5000/team/model:latest"


# --- the fake speaks the real protocol ---


async def test_fake_server_matches_ollama_wire_format(server: FakeOllama) -> None:
    server.script("Hello", " world.")
    async with ollama.AsyncClient(host=server.host) as client:
        response = await client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=False)
        shown = await client.show(MODEL)
        with pytest.raises(ollama.ResponseError) as missing:
            await client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert response.message.content == "Hello world."
    assert response.done and response.done_reason == "stop"
    assert response.eval_count == 2 and (response.total_duration or 0) > 0
    assert shown.details is not None and shown.details.family == "llama"
    assert missing.value.status_code == 404
    assert missing.value.error == 'model "nope" not found, try pulling it first'


async def test_a_password_in_ollama_host_never_shows_in_messages() -> None:
    async with OllamaChat(MODEL, "http://alan:s3cret-pass@127.0.0.1:9") as chat:
        status = await chat.check()
        with pytest.raises(LlmUnavailableError) as raised:
            await chat.reply([], "hello")
    assert not status.reachable and "s3cret-pass" not in status.message
    assert "s3cret-pass" not in str(raised.value) and "127.0.0.1:9" in str(raised.value)


def test_people_talking_in_a_row_are_sent_as_one_message() -> None:
    # Many chat templates (Gemma's) refuse two user messages in a row: a group's lines go as one.
    history = [ChatMessage("user", "Ann: lunch?"), ChatMessage("user", "Bob: sure"), ChatMessage("assistant", "Hi!")]
    sent = build_messages(SYSTEM_PROMPT, [*history, ChatMessage("user", "Ann: where?")], "Bob: Alan, any idea?")
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "Ann: lunch?\nBob: sure"),
        ("assistant", "Hi!"),
        ("user", "Ann: where?\nBob: Alan, any idea?"),
    ]
