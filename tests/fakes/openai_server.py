"""A local fake of an OpenAI-compatible server, speaking the real wire protocol, for testing the real `openai` client.

Endpoints (as in OpenAI's API reference, and as vLLM and llama.cpp's server serve them under `/v1`):
`GET /v1/models` (`{"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}`) and
`POST /v1/chat/completions`, streamed as server-sent events (`data: {chat.completion.chunk}` lines: a first chunk
with the assistant role, one per piece of text in `choices[0].delta.content`, a last one with `finish_reason`,
then `data: [DONE]`) or not (one `chat.completion`). Errors have OpenAI's body,
`{"error": {"message", "type", "param", "code"}}`: 401 for a missing or wrong `Authorization: Bearer` key (when
the fake has one), 403 for a model the key may not use, 404 for an unknown model, any scripted status.

Replies are scripted: delayed (first chunk, between chunks), an error status, a connection dropped mid-stream,
an `error` event mid-stream, a refusal (`message.refusal`, or a `refusal` delta when streamed). Every request is
recorded (its whole body: `response_format` too), and a stream the client closed early is counted.

Usage::

    async with FakeOpenAI(models=["gemma-3-270m"]) as server:
        server.script("Hello", " there.")
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="anything")
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web

from tests.fakes.local_server import LocalServer
from tests.fakes.structured_replies import StructuredReplies

DEFAULT_MODELS = ("gemma-3-270m",)


@dataclass
class ScriptedReply:
    chunks: list[str]
    first_delay: float = 0.0  # seconds before the first text chunk (a model loading, a slow prefill)
    chunk_delay: float = 0.0  # seconds between chunks
    status: int | None = None  # answer with this HTTP error status instead of a reply
    drop_after: int | None = None  # close the connection after this many text chunks, without [DONE]
    error_event: str | None = None  # send an `error` data line after the chunks (a backend crash mid-reply)
    finish_reason: str = "stop"
    refusal: str | None = None  # the model declined: this text in `refusal`, and no content


@dataclass
class RecordedRequest:
    method: str
    path: str
    authorization: str | None
    body: dict[str, Any] | None


@dataclass
class FakeOpenAI(StructuredReplies["ScriptedReply"], LocalServer):
    CHAT_PATH: ClassVar[str] = "/v1/chat/completions"
    SCHEMA_KEY: ClassVar[str] = "response_format"

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    api_key: str | None = None  # when set, every request must carry `Authorization: Bearer <api_key>`
    forbidden_models: set[str] = field(default_factory=set)  # served, but this key may not use them: 403
    default_reply: str = "Okay."
    requests: list[RecordedRequest] = field(default_factory=list)
    streams_closed_by_client: int = 0
    _replies: deque[ScriptedReply] = field(default_factory=deque)
    # Structured (JSON schema) requests, the engine's background work, are answered from their own script, so
    # that they never take a chat reply a test scripted; unscripted, they get "{}".
    _json_replies: deque[ScriptedReply] = field(default_factory=deque)

    @property
    def base_url(self) -> str:
        return f"{self.host}/v1"

    # --- scripting and inspection ---

    def script(
        self,
        *chunks: str,
        first_delay: float = 0.0,
        chunk_delay: float = 0.0,
        status: int | None = None,
        drop_after: int | None = None,
        error_event: str | None = None,
        finish_reason: str = "stop",
        refusal: str | None = None,
    ) -> None:
        """Queue the next chat reply (replies are used in order; then `default_reply` is sent whole).

        Not streamed, the chunks are joined into one `message.content`; a structured (JSON) answer is scripted
        the same way, as its text.
        """
        self._replies.append(
            ScriptedReply(
                list(chunks), first_delay, chunk_delay, status, drop_after, error_event, finish_reason, refusal
            )
        )

    # --- lifecycle ---

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)

    # --- handlers ---

    async def _record(self, request: web.Request) -> dict[str, Any] | None:
        body: dict[str, Any] | None = None
        if request.can_read_body:
            body = await request.json()
        self.requests.append(RecordedRequest(request.method, request.path, request.headers.get("Authorization"), body))
        return body

    def _refused(self, request: web.Request) -> web.Response | None:
        """OpenAI's 401 when a key is required and not the right one; None when the request may go on."""
        if self.api_key is None:
            return None
        given = request.headers.get("Authorization", "")
        if not given.startswith("Bearer "):
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
            )
        key = given.removeprefix("Bearer ")
        if key != self.api_key:
            # A careless server echoes the whole key it got (OpenAI masks it): the client must not repeat it.
            return _error(401, f"Incorrect API key provided: {key}.", "invalid_request_error", "invalid_api_key")
        return None

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        if (refusal := self._refused(request)) is not None:
            return refusal
        created = int(time.time())
        data = [{"id": name, "object": "model", "created": created, "owned_by": "me"} for name in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request) or {}
        if (refusal := self._refused(request)) is not None:
            return refusal
        name = body.get("model")
        if not name:
            return _error(400, "you must provide a model parameter", "invalid_request_error", None, param="model")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty array", "invalid_request_error", None, "messages")
        if name not in self.models:
            return _error(
                404,
                f"The model `{name}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        if name in self.forbidden_models:
            return _error(403, f"You are not allowed to sample from this model: {name}", "permission_error", None)

        reply = self._next_reply(body, lambda text: ScriptedReply([text]), self.default_reply)
        if reply.status is not None:
            await asyncio.sleep(reply.first_delay)
            return _error(reply.status, "The server had an error while processing your request.", "server_error", None)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not body.get("stream"):
            await asyncio.sleep(reply.first_delay + reply.chunk_delay * max(len(reply.chunks) - 1, 0))
            content = None if reply.refusal is not None else "".join(reply.chunks)
            message = {"role": "assistant", "content": content, "refusal": reply.refusal}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": name,
                    "choices": [choice],
                    "usage": _usage(body, reply),
                }
            )

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            return f"data: {json.dumps(data)}\n\n".encode()

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            await response.write(chunk({"role": "assistant", "content": ""}))
            for index, text in enumerate(reply.chunks):
                if reply.drop_after is not None and index >= reply.drop_after:
                    break
                await asyncio.sleep(reply.first_delay if index == 0 else reply.chunk_delay)
                await response.write(chunk({"content": text}))
            if reply.refusal is not None:
                await response.write(chunk({"refusal": reply.refusal}))
            if reply.drop_after is not None:
                assert request.transport is not None
                request.transport.close()  # mid-stream: no final chunk, no [DONE], the chunked body never ends
                return response
            if reply.error_event is not None:
                error = {"error": {"message": reply.error_event, "type": "server_error", "param": None, "code": None}}
                await response.write(f"data: {json.dumps(error)}\n\n".encode())
            else:
                await response.write(chunk({}, reply.finish_reason))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.streams_closed_by_client += 1  # the client went away: a real server stops generating here
            raise
        return response


def _error(status: int, message: str, kind: str, code: str | None, param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}}, status=status)


def _usage(body: dict[str, Any], reply: ScriptedReply) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    return {"prompt_tokens": prompt, "completion_tokens": len(reply.chunks), "total_tokens": prompt + len(reply.chunks)}
