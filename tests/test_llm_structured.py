"""`ChatModel.complete_json`: both backends through their real clients against the fake servers, and ScriptedChat.

The shared behaviour (a JSON object back; an unusable answer is a `StructuredOutputError`; a down or slow server
is an `LlmUnavailableError`) runs against both backends; what each one sends is checked on its own wire format.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from engine.chat_model import ChatModel, parse_json_object
from engine.errors import LlmUnavailableError, StructuredOutputError
from engine.llm import ChatMessage, OllamaChat, OpenAIChat
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.scripted_chat import ScriptedChat
from tests.test_llm import closed_port_host
from tests.test_llm_openai import closed_port_url

OLLAMA_MODEL = "llama3.2:3b"
OPENAI_MODEL = "gemma-3-270m"
KEY = "sk-test-9f8e7d6c5b4a"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"facts": {"type": "array", "items": {"type": "string"}}},
    "required": ["facts"],
    "additionalProperties": False,
}
MESSAGES = [
    ChatMessage("system", "List what is worth remembering about the person, as JSON."),
    ChatMessage("user", "Ann: my cat is called Miso."),
]
SENT = [{"role": "system", "content": MESSAGES[0].content}, {"role": "user", "content": MESSAGES[1].content}]
PHRASE = "zebra-marmalade-quintet"  # what a person said: never in an error message


@dataclass
class Backend:
    """One backend's client and its fake server, scripted the same way for the tests they share."""

    chat: OllamaChat | OpenAIChat
    server: FakeOllama | FakeOpenAI

    def script(self, text: str, *, delay: float = 0.0, cut_off: bool = False) -> None:
        reason = "length" if cut_off else "stop"
        if isinstance(self.server, FakeOllama):
            self.server.script_json(text, first_delay=delay, done_reason=reason)
        else:
            self.server.script_json(text, first_delay=delay, finish_reason=reason)


@pytest.fixture(params=["ollama", "openai"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "ollama":
        async with FakeOllama(models=[OLLAMA_MODEL]) as fake, OllamaChat(OLLAMA_MODEL, fake.host) as chat:
            yield Backend(chat, fake)
    else:
        async with FakeOpenAI(models=[OPENAI_MODEL]) as fake, OpenAIChat(OPENAI_MODEL, fake.base_url) as chat:
            yield Backend(chat, fake)


@pytest.fixture
async def ollama_server() -> AsyncIterator[FakeOllama]:
    async with FakeOllama(models=[OLLAMA_MODEL]) as fake:
        yield fake


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=[OPENAI_MODEL]) as fake:
        yield fake


def test_every_chat_model_has_complete_json() -> None:
    assert isinstance(OllamaChat(OLLAMA_MODEL), ChatModel)
    assert isinstance(OpenAIChat(OPENAI_MODEL, "http://127.0.0.1:9/v1"), ChatModel)
    assert isinstance(ScriptedChat(), ChatModel)


# --- both backends ---


async def test_a_json_object_is_parsed_and_returned(backend: Backend) -> None:
    backend.script('{"facts": ["Ann has a cat called Miso."]}')
    answer = await backend.chat.complete_json(MESSAGES, SCHEMA, name="memories")
    assert answer == {"facts": ["Ann has a cat called Miso."]}


async def test_malformed_json_is_a_structured_output_error(backend: Backend) -> None:
    backend.script('{"facts": ["Ann\'s secret is ' + PHRASE)
    with pytest.raises(StructuredOutputError, match=r"'memories' is not valid JSON") as raised:
        await backend.chat.complete_json(MESSAGES, SCHEMA, name="memories")
    assert PHRASE not in str(raised.value)  # the answer may repeat what a person said: never quoted


@pytest.mark.parametrize(
    ("text", "kind"), [('["a fact"]', "a JSON array"), ('"a fact"', "a JSON string"), ("", "empty")]
)
async def test_json_that_is_no_object_is_a_structured_output_error(backend: Backend, text: str, kind: str) -> None:
    backend.script(text)
    with pytest.raises(StructuredOutputError, match=kind):
        await backend.chat.complete_json(MESSAGES, SCHEMA, name="memories")


async def test_an_answer_cut_at_the_length_limit_is_a_structured_output_error(backend: Backend) -> None:
    backend.script('{"facts": ["Ann has"]}', cut_off=True)  # valid JSON by chance: still not the whole answer
    with pytest.raises(StructuredOutputError, match=r"cut off at the length limit \((num_predict|max_tokens): 1024\)"):
        await backend.chat.complete_json(MESSAGES, SCHEMA, name="memories")


async def test_a_server_slower_than_the_timeout_is_unavailable(backend: Backend) -> None:
    backend.script('{"facts": []}', delay=10.0)
    started = time.monotonic()
    with pytest.raises(LlmUnavailableError, match=r"did not answer within 0\.3 s"):
        await backend.chat.complete_json(MESSAGES, SCHEMA, name="memories", timeout=0.3)
    assert time.monotonic() - started < 5.0  # a generous bound: only "it did not wait the full 10 s"


async def test_the_client_still_works_after_a_timeout(backend: Backend) -> None:
    backend.script('{"facts": []}', delay=10.0)
    with pytest.raises(LlmUnavailableError):
        await backend.chat.complete_json(MESSAGES, SCHEMA, name="memories", timeout=0.2)
    backend.script('{"facts": ["again"]}')
    assert await backend.chat.complete_json(MESSAGES, SCHEMA, name="memories") == {"facts": ["again"]}


async def test_an_unreachable_ollama_is_unavailable() -> None:
    async with OllamaChat(OLLAMA_MODEL, closed_port_host()) as chat:
        with pytest.raises(LlmUnavailableError, match="ollama serve"):
            await chat.complete_json(MESSAGES, SCHEMA, name="memories")


async def test_an_unreachable_openai_server_is_unavailable() -> None:
    url = closed_port_url()
    async with OpenAIChat(OPENAI_MODEL, url, max_retries=0) as chat:
        with pytest.raises(LlmUnavailableError, match="Cannot reach") as raised:
            await chat.complete_json(MESSAGES, SCHEMA, name="memories")
    assert url in str(raised.value) and "ALAN_LLM_BASE_URL" in str(raised.value)


# --- Ollama: `format` ---


async def test_ollama_sends_the_schema_as_format_not_streamed(ollama_server: FakeOllama) -> None:
    ollama_server.script_json('{"facts": []}')
    async with OllamaChat(OLLAMA_MODEL, ollama_server.host) as chat:
        assert await chat.complete_json(MESSAGES, SCHEMA, name="memories") == {"facts": []}
    (request,) = ollama_server.json_requests
    assert request["format"] == SCHEMA
    assert request["stream"] is False
    assert request["messages"] == SENT  # exactly the caller's messages: no aLAN system prompt
    assert request["options"]["temperature"] == 0  # over the backend's own options, which stay
    assert request["options"]["num_predict"] == 1024
    assert request["keep_alive"] == "30m"


async def test_ollama_without_the_model_says_pull_it(ollama_server: FakeOllama) -> None:
    async with OllamaChat("mistral:7b", ollama_server.host) as chat:
        with pytest.raises(LlmUnavailableError, match=r"Run `ollama pull mistral:7b`"):
            await chat.complete_json(MESSAGES, SCHEMA, name="memories")


async def test_ollama_failing_to_answer_is_unavailable(ollama_server: FakeOllama) -> None:
    ollama_server.script_json(error="failed to load schema grammar")
    async with OllamaChat(OLLAMA_MODEL, ollama_server.host) as chat:
        with pytest.raises(LlmUnavailableError, match=r"status 500\): failed to load schema grammar"):
            await chat.complete_json(MESSAGES, SCHEMA, name="memories")


# --- OpenAI-compatible: `response_format` ---


async def test_openai_sends_a_strict_json_schema_not_streamed(openai_server: FakeOpenAI) -> None:
    openai_server.script_json('{"facts": []}')
    async with OpenAIChat(OPENAI_MODEL, openai_server.base_url) as chat:
        assert await chat.complete_json(MESSAGES, SCHEMA, name="memories") == {"facts": []}
    (request,) = openai_server.json_requests
    assert request["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "memories", "schema": SCHEMA, "strict": True},
    }
    assert request["stream"] is False
    assert request["messages"] == SENT
    assert request["temperature"] == 0 and request["max_tokens"] == 1024


async def test_openai_refusal_is_a_structured_output_error(openai_server: FakeOpenAI) -> None:
    openai_server.script_json(refusal=f"I can't help with {PHRASE}.")
    async with OpenAIChat(OPENAI_MODEL, openai_server.base_url) as chat:
        with pytest.raises(StructuredOutputError, match="is a refusal") as raised:
            await chat.complete_json(MESSAGES, SCHEMA, name="memories")
    assert PHRASE not in str(raised.value)


async def test_openai_wrong_key_is_unavailable_and_never_repeated(openai_server: FakeOpenAI) -> None:
    openai_server.api_key = KEY
    wrong = "sk-wrong-0123456789"
    async with OpenAIChat(OPENAI_MODEL, openai_server.base_url, api_key=wrong) as chat:
        with pytest.raises(LlmUnavailableError, match=r"refused the API key \(status 401\)") as raised:
            await chat.complete_json(MESSAGES, SCHEMA, name="memories")
    assert wrong not in str(raised.value)


async def test_openai_unknown_model_lists_what_the_server_has(openai_server: FakeOpenAI) -> None:
    async with OpenAIChat("mistral-7b", openai_server.base_url) as chat:
        with pytest.raises(LlmUnavailableError, match=rf"no model 'mistral-7b'; it serves: {OPENAI_MODEL}"):
            await chat.complete_json(MESSAGES, SCHEMA, name="memories")


async def test_the_openai_fake_scripts_a_refusal_in_its_wire_format(openai_server: FakeOpenAI) -> None:
    openai_server.script(refusal="No.")
    openai_server.script("Hi", refusal="No.")
    async with openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="x", max_retries=0) as client:
        whole = await client.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}])
        stream = await client.chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert whole.choices[0].message.refusal == "No." and whole.choices[0].message.content is None
    assert [c.choices[0].delta.refusal for c in chunks if c.choices[0].delta.refusal] == ["No."]


# --- ScriptedChat, for tests of what sits on the conversation ---


async def test_scripted_chat_returns_a_scripted_object_and_records_the_request() -> None:
    chat = ScriptedChat()
    chat.script_json({"facts": ["Ann has a cat."]})
    assert await chat.complete_json(MESSAGES, SCHEMA, name="memories") == {"facts": ["Ann has a cat."]}
    assert chat.json_requests == [(MESSAGES, SCHEMA)]
    assert chat.prompts == []  # the streamed conversation is untouched


async def test_scripted_chat_parses_text_as_the_backends_do() -> None:
    chat = ScriptedChat()
    chat.script_json('{"facts": []}')
    chat.script_json('{"facts": [')
    chat.script_json(["a", "list"])
    assert await chat.complete_json(MESSAGES, SCHEMA, name="memories") == {"facts": []}
    with pytest.raises(StructuredOutputError, match="not valid JSON"):
        await chat.complete_json(MESSAGES, SCHEMA, name="memories")
    with pytest.raises(StructuredOutputError, match="a JSON array"):
        await chat.complete_json(MESSAGES, SCHEMA, name="memories")
    assert len(chat.json_requests) == 3


async def test_scripted_chat_errors_and_an_empty_script_are_noticed() -> None:
    chat = ScriptedChat()
    chat.script_json(error="the server is down")
    with pytest.raises(LlmUnavailableError, match="the server is down"):
        await chat.complete_json(MESSAGES, SCHEMA, name="memories")
    with pytest.raises(StructuredOutputError, match="nothing scripted"):
        await chat.complete_json(MESSAGES, SCHEMA, name="memories")


# --- parsing ---


@pytest.mark.parametrize(
    ("value", "kind"),
    [(3, "a JSON number"), (2.5, "a JSON number"), (True, "a JSON true or false"), (None, "JSON null")],
)
def test_parse_names_what_came_instead_of_an_object(value: object, kind: str) -> None:
    with pytest.raises(StructuredOutputError, match=rf"^The answer is {kind}, not a JSON object\.$"):
        parse_json_object(json.dumps(value), source="The answer")
