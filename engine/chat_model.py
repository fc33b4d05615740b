"""The chat-model seam: what the conversation needs from any language model backend.

A backend is one small class (see `engine/llm/`): `OllamaChat` speaks Ollama's own API, `OpenAIChat` speaks the
OpenAI-compatible `/v1/chat/completions` that vLLM, llama.cpp's server, LM Studio and Ollama's `/v1` serve.
The conversation and `alan doctor` see only this protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable


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
    """Streams aLAN's reply to a conversation, as text deltas.

    Contract:
    - `stream_reply(history, user_text, context=…, language=…)` sends the system prompt (with the person's
      `language`, a Whisper code, and any `context` added), the trimmed `history`, then `user_text`, and yields
      the reply's text as it is generated: non-empty deltas, in order. Every failure — server down, refused
      credentials, unknown model, too slow, the stream broken — raises `engine.errors.LlmUnavailableError` whose
      message tells the operator the fix and holds no secret. Closing the iterator early (the person
      interrupted) closes the HTTP stream, so the server stops generating.
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

    async def check(self) -> LlmStatus: ...

    async def aclose(self) -> None: ...
