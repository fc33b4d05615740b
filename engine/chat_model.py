"""The chat-model seam: what the conversation needs from any language model backend.

A backend is one small class (see `engine/llm/`): `OllamaChat` speaks Ollama's own API, `OpenAIChat` speaks the
OpenAI-compatible `/v1/chat/completions` that vLLM, llama.cpp's server, LM Studio and Ollama's `/v1` serve.
The conversation and `alan doctor` see only this protocol.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from engine.errors import StructuredOutputError


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class LlmStatus:
    """What `alan doctor` reports about the language model."""

    host: str  # where the backend is, with any user:password removed
    model: str
    reachable: bool
    model_present: bool
    message: str  # the diagnosis, with the fix when something is wrong
    available_models: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reachable and self.model_present


@runtime_checkable
class ChatModel(Protocol):
    """Streams aLAN's reply to a conversation, as text deltas; fills in JSON for the engine's own bookkeeping.

    Contract:
    - `stream_reply(history, user_text, context=…, language=…)` sends the system prompt (with the person's
      `language`, a Whisper code, and any `context` added), the trimmed `history`, then `user_text`, and yields
      the reply's text as it is generated: non-empty deltas, in order. Every failure — server down, refused
      credentials, unknown model, too slow, the stream broken — raises `engine.errors.LlmUnavailableError` whose
      message tells the operator the fix and holds no secret. Closing the iterator early (the person
      interrupted) closes the HTTP stream, so the server stops generating.
    - `complete_json(messages, schema, name=…, timeout=…)` sends exactly `messages` (no aLAN system prompt: the
      caller writes its own system message, best one that also describes the schema), not streamed, asking the
      server to constrain its answer to the JSON `schema` (`name` identifies the schema; the OpenAI API requires
      one), and returns the parsed JSON object. It is for work no person waits on (e.g. picking out what to
      remember), so it runs at temperature 0 and one `timeout` bounds the whole call. The server's failures are
      `LlmUnavailableError`, as for `stream_reply` (too slow included); an answer that came but can't be used —
      not JSON, not a JSON object, cut off at the length limit, a refusal — is `StructuredOutputError`.
    - `check()` is the same diagnosis for `alan doctor`: reachable, the model present, the fix. It never raises
      for the backend's failures.
    - `aclose()` releases the HTTP client; cheap to call twice.
    """

    model: str

    def stream_reply(
        self,
        history: Sequence[ChatMessage],
        user_text: str,
        *,
        context: str | None = None,
        language: str | None = None,
    ) -> AsyncIterator[str]: ...

    async def complete_json(
        self,
        messages: Sequence[ChatMessage],
        schema: dict[str, Any],
        *,
        name: str,
        timeout: float = 60.0,  # noqa: ASYNC109 - its own limit, so running out is an LlmUnavailableError
    ) -> dict[str, Any]: ...

    async def check(self) -> LlmStatus: ...

    async def aclose(self) -> None: ...


# What a structured answer was when it was not a JSON object, for the error's message.
_JSON_KINDS: dict[type, str] = {
    list: "a JSON array",
    str: "a JSON string",
    int: "a JSON number",
    float: "a JSON number",
}


def parse_json_object(text: str, *, source: str) -> dict[str, Any]:
    """The JSON object `text` holds; `StructuredOutputError` when it is empty, not JSON, or JSON but no object.

    `source` names the answer in the message ("the answer of 'gemma-3' for 'memories'"). The message never quotes
    the answer: it may repeat what a person said, and no log line may hold that.
    """
    if not text.strip():
        raise StructuredOutputError(f"{source} is empty.")
    try:
        value = json.loads(text)
    except ValueError as error:  # json.JSONDecodeError, whose text holds a position but not the document
        raise StructuredOutputError(f"{source} is not valid JSON ({error}; {len(text)} characters).") from error
    if not isinstance(value, dict):
        kind = "a JSON true or false" if isinstance(value, bool) else _JSON_KINDS.get(type(value), "JSON null")
        raise StructuredOutputError(f"{source} is {kind}, not a JSON object.")
    return value
