"""A chat model for tests that implements the `ChatModel` protocol in-process: scripted replies, recorded prompts.

`script(...)` queues `stream_reply`'s replies; `script_json(...)` queues `complete_json`'s, which are parsed as the
real backends parse theirs (a string as is, so malformed JSON can be scripted).

For tests of what sits on the conversation (the platform adapters), where the LLM's wire protocol isn't the
subject; the backends themselves are tested against servers that speak Ollama's and the OpenAI API's protocols.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.chat_model import ChatMessage, LlmStatus, parse_json_object
from engine.errors import LlmUnavailableError, StructuredOutputError


@dataclass
class ScriptedChat:
    model: str = "scripted"
    default_reply: str = "Okay."
    prompts: list[tuple[list[ChatMessage], str]] = field(default_factory=list)
    json_requests: list[tuple[list[ChatMessage], dict[str, Any]]] = field(default_factory=list)
    _replies: deque[tuple[list[str], str | None]] = field(default_factory=deque)
    _json_replies: deque[tuple[str, str | None]] = field(default_factory=deque)

    def script(self, *chunks: str, error: str | None = None) -> None:
        """Queue the next reply as text deltas; with `error`, the stream breaks after them with that message."""
        self._replies.append((list(chunks), error))

    def script_json(self, reply: str | dict[str, Any] | list[Any] = "{}", *, error: str | None = None) -> None:
        """Queue the next `complete_json` answer: a string is the model's raw text (malformed JSON included),
        anything else is sent as its JSON. With `error`, the call fails with `LlmUnavailableError(error)` instead.
        """
        self._json_replies.append((reply if isinstance(reply, str) else json.dumps(reply), error))

    async def stream_reply(
        self,
        history: Sequence[ChatMessage],
        user_text: str,
        *,
        context: str | None = None,
        language: str | None = None,
    ) -> AsyncIterator[str]:
        self.prompts.append((list(history), user_text))
        chunks, error = self._replies.popleft() if self._replies else ([self.default_reply], None)
        for chunk in chunks:
            await asyncio.sleep(0)  # a delta at a time, as from a server
            yield chunk
        if error is not None:
            raise LlmUnavailableError(error)

    async def complete_json(
        self,
        messages: Sequence[ChatMessage],
        schema: dict[str, Any],
        *,
        name: str,
        timeout: float = 60.0,  # noqa: ASYNC109 - the protocol's signature
    ) -> dict[str, Any]:
        self.json_requests.append((list(messages), schema))
        if not self._json_replies:
            raise StructuredOutputError("nothing scripted: call ScriptedChat.script_json first")
        text, error = self._json_replies.popleft()
        await asyncio.sleep(0)  # an answer comes later, as from a server
        if error is not None:
            raise LlmUnavailableError(error)
        return parse_json_object(text, source=f"The scripted answer for {name!r}")

    async def check(self) -> LlmStatus:
        return LlmStatus("in-process", self.model, True, True, "ready", (self.model,))

    async def aclose(self) -> None:
        return None
