"""What both fake LLM servers share about structured (JSON schema) requests, the engine's background work: they are
answered from a script of their own, so that they never take a chat reply a test scripted, and recorded apart."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

R = TypeVar("R")


class _Recorded(Protocol):
    path: str
    body: dict[str, Any] | None


class StructuredReplies(Generic[R]):
    """A mixin of a fake server whose `script(...)` queues replies of type R in `_replies`."""

    CHAT_PATH: ClassVar[str]  # where chat requests are posted
    SCHEMA_KEY: ClassVar[str]  # the request field that carries the JSON schema
    requests: list[Any]
    _replies: deque[R]
    _json_replies: deque[R]

    def script(self, *chunks: str, **options: Any) -> None:
        raise NotImplementedError

    def script_json(self, *chunks: str, **options: Any) -> None:
        """Queue the next structured (JSON schema) reply; the same options as `script`. Unscripted, one gets "{}"."""
        self.script(*chunks, **options)
        self._json_replies.append(self._replies.pop())

    @property
    def json_requests(self) -> list[dict[str, Any]]:
        """Structured requests (they carry a JSON schema), apart from `chat_requests`."""
        return [body for body in self._all_chat_requests if self.SCHEMA_KEY in body]

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """Chat requests (structured ones are in `json_requests`)."""
        return [body for body in self._all_chat_requests if self.SCHEMA_KEY not in body]

    @property
    def _all_chat_requests(self) -> list[dict[str, Any]]:
        recorded: list[_Recorded] = self.requests
        return [request.body or {} for request in recorded if request.path == self.CHAT_PATH]

    def _next_reply(self, body: dict[str, Any], reply: Callable[[str], R], default: str) -> R:
        """The reply to this request: the next scripted of its kind, or `reply(text)` of the default text."""
        if self.SCHEMA_KEY in body:
            return self._json_replies.popleft() if self._json_replies else reply("{}")
        return self._replies.popleft() if self._replies else reply(default)
