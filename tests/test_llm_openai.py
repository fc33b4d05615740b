"""engine.llm.OpenAIChat through the real `openai` client against a fake server speaking the OpenAI protocol."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator

import openai
import pytest

from engine.chat_model import ChatModel
from engine.errors import LlmUnavailableError
from engine.llm import SYSTEM_PROMPT, ChatMessage, OllamaChat, OpenAIChat
from tests.fakes.openai_server import FakeOpenAI

MODEL = "gemma-3-270m"
KEY = "sk-test-9f8e7d6c5b4a"


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=[MODEL, "qwen2.5-0.5b"]) as fake:
        yield fake


@pytest.fixture
async def chat(server: FakeOpenAI) -> AsyncIterator[OpenAIChat]:
    async with OpenAIChat(MODEL, server.base_url, first_token_timeout=3.0, token_timeout=3.0) as client:
        yield client


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens here any more: connection refused


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [delta async for delta in stream]


def test_both_backends_implement_the_chat_model_protocol() -> None:
    assert isinstance(OpenAIChat(MODEL, "http://127.0.0.1:9/v1"), ChatModel)
    assert isinstance(OllamaChat("llama3.2:3b"), ChatModel)


# --- streaming and what is sent ---


async def test_streams_deltas_in_order(chat: OpenAIChat, server: FakeOpenAI) -> None:
    server.script("Hi", " there", "! How are", " you?")
    assert await collect(chat.stream_reply([], "Hello")) == ["Hi", " there", "! How are", " you?"]
    (request,) = server.chat_requests
    assert request["model"] == MODEL and request["stream"] is True
    assert request["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Hello"},
    ]
    assert request["max_tokens"] == 300 and request["temperature"] == 0.7


async def test_history_and_language_are_in_the_request(chat: OpenAIChat, server: FakeOpenAI) -> None:
    history = [ChatMessage("user", "Mi gato se llama Miso."), ChatMessage("assistant", "¡Qué nombre tan bonito!")]
    await collect(chat.stream_reply(history, "¿Cómo se llama mi gato?", language="es"))
    messages = server.chat_requests[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == f"{SYSTEM_PROMPT}\n\nThe person speaks Spanish; answer in Spanish."
    assert messages[1]["content"] == "Mi gato se llama Miso."
    assert messages[-1]["content"] == "¿Cómo se llama mi gato?"


async def test_long_history_is_trimmed_to_the_newest_turns(server: FakeOpenAI) -> None:
    history = [ChatMessage("user" if i % 2 == 0 else "assistant", f"turn {i:02d} " + "x" * 92) for i in range(20)]
    async with OpenAIChat(MODEL, server.base_url, history_chars=450) as chat:
        await collect(chat.stream_reply(history, "latest question"))
    messages = server.chat_requests[0]["messages"]
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert [m["content"][:7] for m in messages[1:-1]] == ["turn 16", "turn 17", "turn 18", "turn 19"]


async def test_no_key_sends_a_placeholder_never_the_environments_openai_key(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-account-key")
    async with OpenAIChat(MODEL, server.base_url) as chat:
        await collect(chat.stream_reply([], "Hello"))
    assert server.requests[-1].authorization == "Bearer not-needed"


async def test_a_configured_key_is_sent_as_bearer_auth(server: FakeOpenAI) -> None:
    server.api_key = KEY
    async with OpenAIChat(MODEL, server.base_url, api_key=KEY) as chat:
        assert await collect(chat.stream_reply([], "Hello")) == ["Okay."]
        assert (await chat.check()).ok
    assert {r.authorization for r in server.requests} == {f"Bearer {KEY}"}


async def test_closing_the_stream_early_closes_the_connection(chat: OpenAIChat, server: FakeOpenAI) -> None:
    server.script("First sentence.", " Second", " sentence.", " Third.", chunk_delay=0.2)
    stream = chat.stream_reply([], "Talk to me")
    assert await anext(stream) == "First sentence."
    await stream.aclose()  # barge-in: the user started speaking
    for _ in range(50):  # the server notices the closed connection on its next write
        if server.streams_closed_by_client:
            break
        await asyncio.sleep(0.05)
    assert server.streams_closed_by_client == 1
    server.script("Next.")
    assert await collect(chat.stream_reply([], "Again")) == ["Next."]  # the client still works afterwards


# --- failures: one error type that says the fix ---


async def test_server_down_names_the_url_and_the_setting() -> None:
    url = closed_port_url()
    async with OpenAIChat(MODEL, url, max_retries=0) as chat:
        with pytest.raises(LlmUnavailableError, match="Cannot reach") as raised:
            await collect(chat.stream_reply([], "Hello"))
    assert url in str(raised.value) and "ALAN_LLM_BASE_URL" in str(raised.value)


async def test_a_missing_key_says_set_it(server: FakeOpenAI) -> None:
    server.api_key = KEY
    async with OpenAIChat(MODEL, server.base_url) as chat:
        with pytest.raises(LlmUnavailableError, match=r"wants an API key \(status 401\): set ALAN_LLM_API_KEY"):
            await collect(chat.stream_reply([], "Hello"))


async def test_a_wrong_key_is_refused_and_never_repeated(server: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    server.api_key = KEY
    wrong = "sk-wrong-0123456789"
    caplog.set_level(logging.DEBUG)  # the openai client and httpx log requests at DEBUG
    async with OpenAIChat(MODEL, server.base_url, api_key=wrong) as chat:
        refused = r"refused the API key \(status 401\): check ALAN_LLM_API_KEY"
        with pytest.raises(LlmUnavailableError, match=refused) as raised:
            await collect(chat.stream_reply([], "Hello"))
        status = await chat.check()
    assert not status.ok and "ALAN_LLM_API_KEY" in status.message
    assert server.requests[0].authorization == f"Bearer {wrong}"  # the fake got it (and echoed it in its 401)
    for text in (str(raised.value), status.message, caplog.text):
        assert wrong not in text


async def test_server_text_passed_on_is_scrubbed_of_the_key(server: FakeOpenAI) -> None:
    server.api_key = KEY
    server.script("Hel", error_event=f"upstream refused key {KEY}")  # a server that echoes what it got
    async with OpenAIChat(MODEL, server.base_url, api_key=KEY) as chat:
        with pytest.raises(LlmUnavailableError, match=r"upstream refused key \[REDACTED\]") as raised:
            await collect(chat.stream_reply([], "Hello"))
    assert KEY not in str(raised.value)


async def test_forbidden_model_is_a_403_message(server: FakeOpenAI) -> None:
    server.api_key = KEY
    server.forbidden_models = {MODEL}
    async with OpenAIChat(MODEL, server.base_url, api_key=KEY) as chat:
        with pytest.raises(LlmUnavailableError, match=r"status 403.*ALAN_LLM_API_KEY"):
            await collect(chat.stream_reply([], "Hello"))


async def test_unknown_model_names_it_and_lists_what_the_server_has(server: FakeOpenAI) -> None:
    async with OpenAIChat("mistral-7b", server.base_url) as chat:
        with pytest.raises(LlmUnavailableError) as raised:
            await collect(chat.stream_reply([], "Hello"))
    message = str(raised.value)
    assert "no model 'mistral-7b'" in message and f"{MODEL}, qwen2.5-0.5b" in message and "ALAN_LLM_MODEL" in message
    assert [r.path for r in server.requests] == ["/v1/chat/completions", "/v1/models"]


async def test_a_base_url_without_v1_says_where_the_api_is(server: FakeOpenAI) -> None:
    async with OpenAIChat(MODEL, server.host) as chat:  # the server's root, not its /v1
        with pytest.raises(LlmUnavailableError, match=r"ALAN_LLM_BASE_URL.*ending in /v1"):
            await collect(chat.stream_reply([], "Hello"))
        status = await chat.check()
    assert status.reachable and not status.ok and "/v1" in status.message


async def test_a_server_error_status_is_reported_with_its_text(server: FakeOpenAI) -> None:
    server.script(status=500)
    server.script(status=500)  # the client retries once
    async with OpenAIChat(MODEL, server.base_url) as chat:
        with pytest.raises(LlmUnavailableError, match=r"status 500\): The server had an error"):
            await collect(chat.stream_reply([], "Hello"))
    assert len(server.chat_requests) == 2


async def test_slow_first_token_times_out(server: FakeOpenAI) -> None:
    server.script("Too late.", first_delay=10.0)
    async with OpenAIChat(MODEL, server.base_url, first_token_timeout=0.3) as chat:
        started = time.monotonic()
        with pytest.raises(LlmUnavailableError, match=r"did not start answering within 0\.3 s"):
            await collect(chat.stream_reply([], "Hello"))
    assert time.monotonic() - started < 5.0  # a generous bound: only "it did not wait the full 10 s"


async def test_stall_mid_reply_times_out_after_the_first_words(server: FakeOpenAI) -> None:
    server.script("Well,", " then.", chunk_delay=10.0)
    received: list[str] = []
    async with OpenAIChat(MODEL, server.base_url, token_timeout=0.3) as chat:
        with pytest.raises(LlmUnavailableError, match="stopped sending text"):
            async for delta in chat.stream_reply([], "Hello"):
                received.append(delta)
    assert received == ["Well,"]


async def test_a_connection_dropped_mid_stream_is_a_broken_stream(chat: OpenAIChat, server: FakeOpenAI) -> None:
    server.script("Hel", "lo", " there.", drop_after=2)
    received: list[str] = []
    with pytest.raises(LlmUnavailableError, match=r"Lost the connection .* in the middle of a reply"):
        async for delta in chat.stream_reply([], "Hello"):
            received.append(delta)
    assert received == ["Hel", "lo"]


async def test_an_error_event_mid_stream_is_reported(chat: OpenAIChat, server: FakeOpenAI) -> None:
    server.script("Hel", error_event="llama_decode failed: out of memory")
    with pytest.raises(LlmUnavailableError, match=r"in the middle of a reply .*out of memory"):
        await collect(chat.stream_reply([], "Hello"))


async def test_an_empty_reply_is_an_error_that_says_what_to_check(chat: OpenAIChat, server: FakeOpenAI) -> None:
    server.script(finish_reason="stop")
    with pytest.raises(LlmUnavailableError, match=r"finished without writing anything \(finish_reason: stop\)"):
        await collect(chat.stream_reply([], "Hello"))


# --- check() for `alan doctor` ---


async def test_check_ok(chat: OpenAIChat, server: FakeOpenAI) -> None:
    status = await chat.check()
    assert status.ok and status.available_models == (MODEL, "qwen2.5-0.5b")
    assert MODEL in status.message and status.host == server.base_url
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/v1/models")]


async def test_check_missing_model_lists_the_servers(server: FakeOpenAI) -> None:
    async with OpenAIChat("llama-3-8b", server.base_url) as chat:
        status = await chat.check()
    assert status.reachable and not status.model_present
    assert "no model 'llama-3-8b'" in status.message and MODEL in status.message


async def test_check_server_down() -> None:
    async with OpenAIChat(MODEL, closed_port_url(), max_retries=0) as chat:
        status = await chat.check()
    assert not status.reachable and "Cannot reach" in status.message


async def test_a_password_in_the_base_url_never_shows() -> None:
    async with OpenAIChat(MODEL, "http://alan:s3cret-pass@127.0.0.1:9/v1", max_retries=0) as chat:
        status = await chat.check()
        with pytest.raises(LlmUnavailableError) as raised:
            await collect(chat.stream_reply([], "hello"))
    assert "s3cret-pass" not in status.message and "s3cret-pass" not in str(raised.value)
    assert "127.0.0.1:9/v1" in str(raised.value)


# --- the fake speaks the real protocol ---


async def test_fake_server_matches_the_openai_wire_format(server: FakeOpenAI) -> None:
    server.script("Hello", " world.")
    server.script("Streamed", " reply.", finish_reason="length")
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client:
        whole = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
        listed = await client.models.list()
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert whole.choices[0].message.content == "Hello world." and whole.usage is not None
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Streamed reply."
    assert chunks[-1].choices[0].finish_reason == "length"
    assert [m.id for m in listed.data] == [MODEL, "qwen2.5-0.5b"]
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"
