"""A chat model for tests that implements the `ChatModel` protocol in-process: scripted replies, recorded prompts.

For tests of what sits on the conversation (the platform adapters), where the LLM's wire protocol isn't the
subject; the backends themselves are tested against servers that speak Ollama's and the OpenAI API's protocols.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from engine.chat_model import ChatMessage, LlmStatus
from engine.errors import LlmUnavailableError


@dataclass
class ScriptedChat:
    model: str = "scripted"
    default_reply: str = "Okay."
    prompts: list[tuple[list[ChatMessage], str]] = field(default_factory=list)
    _replies: deque[tuple[list[str], str | None]] = field(default_factory=deque)

    def script(self, *chunks: str, error: str | None = None) -> None:
        """Queue the next reply as text deltas; with `error`, the stream breaks after them with that message."""
        self._replies.append((list(chunks), error))

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

    async def check(self) -> LlmStatus:
        return LlmStatus("in-process", self.model, True, True, "ready", (self.model,))

    async def aclose(self) -> None:
        return None
