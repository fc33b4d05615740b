"""A local fake of the Ollama server, speaking its real HTTP API, for testing the real `ollama` client.

Endpoints (as documented in Ollama's docs/api.md): `GET /`, `GET /api/version`, `GET /api/tags`,
`POST /api/show` and `POST /api/chat`, streaming (NDJSON: one `done: false` line per chunk, then a final
`done: true` line with `done_reason`, durations in nanoseconds and token counts) or not. An unknown model
gets a 404 with Ollama's own error text. `POST /api/pull` fetches a model of the fake's `library` as Ollama's
server streams it: `pulling manifest`, then per layer `pulling <digest[7:19]>` lines with `digest`, `total` and
(after the first) `completed`, then `verifying sha256 digest`, `writing manifest`, `success`; a name the library
hasn't got ends the stream (still HTTP 200) with `{"error": "pull model manifest: file does not exist"}`, or with
`stream: false` answers 500 with that error. Replies are scripted, can be delayed (first chunk and between
chunks) or fail mid-stream, and every request is recorded so tests can assert what the client sent.

Usage::

    async with FakeOllama(models=["llama3.2:3b"]) as server:
        server.script("Hello", " there.")
        client = ollama.AsyncClient(host=server.host)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiohttp import web

from tests.fakes.local_server import LocalServer
from tests.fakes.structured_replies import StructuredReplies

DEFAULT_MODELS = ("llama3.2:3b",)
# What the fake registry (ollama.com) offers to `/api/pull`: name -> size of the model's weights layer.
DEFAULT_LIBRARY = {"llama3.2:3b": 2_019_377_376, "llama3.2:1b": 1_321_082_688, "gemma3:270m": 291_546_688}
# The small layers every model has besides its weights: template, licence, parameters (sizes as Ollama's).
SMALL_LAYERS = (1_429, 7_711, 96)


def canonical_model(name: str) -> str:
    """Ollama's own rule: a name without a tag means `:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass
class ScriptedReply:
    chunks: list[str]
    first_delay: float = 0.0  # seconds before the first chunk (a cold model load, a slow prefill)
    chunk_delay: float = 0.0  # seconds between chunks
    error: str | None = None  # sent as an `{"error": ...}` line after the chunks, like a runner crash
    done_reason: str = "stop"


@dataclass
class RecordedRequest:
    method: str
    path: str
    body: dict[str, Any] | None


@dataclass
class FakeOllama(StructuredReplies["ScriptedReply"], LocalServer):
    CHAT_PATH: ClassVar[str] = "/api/chat"
    SCHEMA_KEY: ClassVar[str] = "format"

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    library: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIBRARY))
    default_reply: str = "Okay."
    requests: list[RecordedRequest] = field(default_factory=list)
    _replies: deque[ScriptedReply] = field(default_factory=deque)
    # Structured (JSON schema) requests, the engine's background work, are answered from their own script, so
    # that they never take a chat reply a test scripted; unscripted, they get "{}".
    _json_replies: deque[ScriptedReply] = field(default_factory=deque)

    # --- scripting and inspection ---

    def script(
        self,
        *chunks: str,
        first_delay: float = 0.0,
        chunk_delay: float = 0.0,
        error: str | None = None,
        done_reason: str = "stop",
    ) -> None:
        """Queue the next chat reply (replies are used in order; then `default_reply` is sent whole)."""
        self._replies.append(ScriptedReply(list(chunks), first_delay, chunk_delay, error, done_reason))

    # --- lifecycle ---

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/pull", self._pull)

    # --- handlers ---

    async def _record(self, request: web.Request) -> dict[str, Any] | None:
        body: dict[str, Any] | None = None
        if request.can_read_body:
            body = await request.json()
        self.requests.append(RecordedRequest(request.method, request.path, body))
        return body

    def _find(self, name: str) -> str | None:
        wanted = canonical_model(name)
        return next((model for model in self.models if canonical_model(model) == wanted), None)

    async def _root(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"version": "0.12.6"})

    async def _tags(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"models": [_model_entry(model) for model in self.models]})

    async def _show(self, request: web.Request) -> web.Response:
        body = await self._record(request) or {}
        name = body.get("model") or body.get("name") or ""
        model = self._find(name)
        if model is None:
            return web.json_response({"error": f"model '{name}' not found"}, status=404)
        return web.json_response(
            {
                "license": "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT",
                "modelfile": f'# Modelfile generated by "ollama show"\nFROM {model}\n',
                "parameters": 'stop "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": _model_entry(model)["details"],
                "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
                "capabilities": ["completion", "tools"],
                "modified_at": _now(),
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request) or {}
        name = body.get("model", "")
        if not name:
            return web.json_response({"error": "model is required"}, status=400)
        model = self._find(name)
        if model is None:
            return web.json_response({"error": f'model "{name}" not found, try pulling it first'}, status=404)
        if not isinstance(body.get("messages", []), list):
            return web.json_response({"error": "messages must be a list"}, status=400)

        reply = self._next_reply(body, lambda text: ScriptedReply([text]), self.default_reply)
        started = time.monotonic_ns()
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        if not body.get("stream", True):  # Ollama streams unless told not to
            await asyncio.sleep(reply.first_delay + reply.chunk_delay * max(len(reply.chunks) - 1, 0))
            if reply.error:
                return web.json_response({"error": reply.error}, status=500)
            content = "".join(reply.chunks)
            final = _final_line(name, content, reply, started, prompt_tokens)
            return web.json_response(final)

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for index, chunk in enumerate(reply.chunks):
            await asyncio.sleep(reply.first_delay if index == 0 else reply.chunk_delay)
            line = {
                "model": name,
                "created_at": _now(),
                "message": {"role": "assistant", "content": chunk},
                "done": False,
            }
            await response.write(json.dumps(line).encode() + b"\n")
        if reply.error:
            await response.write(json.dumps({"error": reply.error}).encode() + b"\n")
        else:
            final = _final_line(name, "", reply, started, prompt_tokens, eval_count=len(reply.chunks))
            await response.write(json.dumps(final).encode() + b"\n")
        await response.write_eof()
        return response

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request) or {}
        name = body.get("model") or body.get("name") or ""
        size = next(
            (size for model, size in self.library.items() if canonical_model(model) == canonical_model(name)), None
        )
        error = "pull model manifest: file does not exist"
        if not body.get("stream", True):
            if size is None:
                return web.json_response({"error": error}, status=500)
            self._pulled(name)
            return web.json_response({"status": "success"})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)

        async def line(**fields: Any) -> None:
            await response.write(json.dumps(fields).encode() + b"\n")

        await line(status="pulling manifest")
        if size is None:
            await line(error=error)
        else:
            for index, total in enumerate((size, *SMALL_LAYERS)):
                digest = "sha256:" + hashlib.sha256(f"{name}:{index}".encode()).hexdigest()
                status = f"pulling {digest[7:19]}"
                await line(status=status, digest=digest, total=total)  # no `completed` until some has arrived
                for part in (1, 2, 3):
                    await line(status=status, digest=digest, total=total, completed=total * part // 3)
            for status in ("verifying sha256 digest", "writing manifest", "success"):
                await line(status=status)
            self._pulled(name)
        await response.write_eof()
        return response

    def _pulled(self, name: str) -> None:
        if self._find(name) is None:
            self.models.append(canonical_model(name))


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _model_entry(model: str) -> dict[str, Any]:
    return {
        "name": model,
        "model": model,
        "modified_at": _now(),
        "size": 2_019_393_189,
        "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        },
    }


def _final_line(
    model: str,
    content: str,
    reply: ScriptedReply,
    started_ns: int,
    prompt_tokens: int,
    eval_count: int | None = None,
) -> dict[str, Any]:
    total = time.monotonic_ns() - started_ns
    return {
        "model": model,
        "created_at": _now(),
        "message": {"role": "assistant", "content": content},
        "done": True,
        "done_reason": reply.done_reason,
        "total_duration": total,
        "load_duration": 1_000_000,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": total // 4,
        "eval_count": eval_count if eval_count is not None else len(reply.chunks),
        "eval_duration": total // 2,
    }
