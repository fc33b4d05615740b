"""aLAN's words from a local model served by Ollama, through the official `ollama` client, streamed.

`OllamaChat` implements `engine.chat_model.ChatModel`: `stream_reply` yields text deltas as Ollama produces
them; the pipeline feeds them to `engine.speech_text.SentenceSplitter` so the TTS can speak sentence one while
sentence two is generated. Every way Ollama can fail — not running, model not pulled, too slow, connection
lost — surfaces as one `LlmUnavailableError` whose message tells the operator the fix. `check()` is the same
diagnosis for `alan doctor`. `complete_json` asks for one whole answer constrained to a JSON schema (Ollama's
`format`), for the engine's background work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import ollama

from engine.chat_model import ChatMessage, LlmStatus, parse_json_object
from engine.errors import LlmUnavailableError, StructuredOutputError
from engine.llm.prompt import (
    HISTORY_CHARS,
    MAX_JSON_TOKENS,
    MAX_REPLY_TOKENS,
    SYSTEM_PROMPT,
    TEMPERATURE,
    PromptedChat,
)
from engine.urls import without_credentials

log = logging.getLogger(__name__)

DEFAULT_HOST = "http://127.0.0.1:11434"

# Ollama's speed for a voice chat: a cold start loads the model into memory before the first token, so the
# first wait may be long; after that a gap between tokens this long means the runner is stuck.
FIRST_TOKEN_TIMEOUT = 60.0
TOKEN_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
DEFAULT_OPTIONS: dict[str, Any] = {"temperature": TEMPERATURE, "num_predict": MAX_REPLY_TOKENS}
# Keep the model in memory between turns: reloading it costs seconds of silence before the first word.
KEEP_ALIVE = "30m"


def canonical_model(name: str) -> str:
    """Ollama's naming rule: no tag means `:latest` ("llama3.2" is "llama3.2:latest")."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class OllamaChat(PromptedChat):
    """Streaming chat with one Ollama model. Cheap to create; the HTTP connection is made on first use."""

    def __init__(
        self,
        model: str,
        host: str = DEFAULT_HOST,
        *,
        system_prompt: str = SYSTEM_PROMPT,
        history_chars: int = HISTORY_CHARS,
        first_token_timeout: float = FIRST_TOKEN_TIMEOUT,
        token_timeout: float = TOKEN_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        check_timeout: float = 5.0,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = KEEP_ALIVE,
    ) -> None:
        self.model = model
        self.host = host.rstrip("/")
        # What messages and logs show: the address without any user:password in it.
        self.shown_host = without_credentials(self.host)
        self.system_prompt = system_prompt
        self.history_chars = history_chars
        self.first_token_timeout = first_token_timeout
        self.token_timeout = token_timeout
        self.connect_timeout = connect_timeout
        self.check_timeout = check_timeout
        self.options = dict(DEFAULT_OPTIONS if options is None else options)
        self.keep_alive = keep_alive
        # Reading has no httpx timeout: a slow first token is judged by `first_token_timeout` instead, which
        # can give a clearer message than a bare ReadTimeout.
        self._client = ollama.AsyncClient(host=self.host, timeout=httpx.Timeout(None, connect=connect_timeout))

    async def aclose(self) -> None:
        await self._client.close()

    async def stream_reply(
        self,
        history: Sequence[ChatMessage],
        user_text: str,
        *,
        context: str | None = None,
        language: str | None = None,
    ) -> AsyncIterator[str]:
        """Yield the reply's text deltas as they arrive. Raises `LlmUnavailableError` (with the fix) on failure.

        Closing the iterator early (the user interrupted) closes the HTTP stream, which makes Ollama stop
        generating.
        """
        messages = self.build_messages(history, user_text, context=context, language=language)
        # With stream=True this only builds the request; connecting happens on the first `anext`.
        stream = await self._client.chat(
            model=self.model,
            messages=messages,
            stream=True,
            options=self.options or None,
            keep_alive=self.keep_alive,
        )
        received_any = False
        try:
            while True:
                limit_s = self.token_timeout if received_any else self.first_token_timeout
                part = await self._next_part(stream, limit_s, first=not received_any)
                if part is None:
                    return
                received_any = True
                content = part.message.content or ""
                if content:
                    yield content
                if part.done:
                    if part.done_reason == "length":
                        log.info("Reply cut at num_predict=%s tokens", self.options.get("num_predict"))
                    return
        finally:
            await stream.aclose()

    async def _next_part(
        self, stream: AsyncIterator[ollama.ChatResponse], limit_s: float, *, first: bool
    ) -> ollama.ChatResponse | None:
        try:
            async with asyncio.timeout(limit_s):
                return await anext(stream)
        except StopAsyncIteration:
            return None
        except TimeoutError as error:
            if first:
                raise LlmUnavailableError(
                    f"Ollama did not start answering within {limit_s:g} s with model {self.model!r}. It may "
                    "still be loading the model, or the model is too big for this machine: check `ollama ps`, "
                    "try a smaller ALAN_LLM_MODEL, or give the first answer more time."
                ) from error
            raise LlmUnavailableError(
                f"Ollama stopped sending text for {limit_s:g} s in the middle of a reply from {self.model!r}; "
                "check the Ollama server's log."
            ) from error
        except Exception as error:
            raise self._unavailable(error) from error

    async def reply(self, history: Sequence[ChatMessage], user_text: str, *, context: str | None = None) -> str:
        """The whole reply as one string (for callers that don't stream, e.g. text chats)."""
        return "".join([delta async for delta in self.stream_reply(history, user_text, context=context)])

    async def complete_json(
        self,
        messages: Sequence[ChatMessage],
        schema: dict[str, Any],
        *,
        name: str,
        timeout: float = 60.0,  # noqa: ASYNC109 - its limit becomes an LlmUnavailableError with the fix
    ) -> dict[str, Any]:
        """The JSON object Ollama answers `messages` with, decoding constrained to `schema` (see `ChatModel`).

        Temperature 0 over the backend's own options: extraction wants the likeliest reading, not variety. The
        reply-length cap (`num_predict`) stays, so a model stuck repeating itself stops; an answer cut there is a
        `StructuredOutputError`.
        """
        options = {**self.options, "temperature": 0, "num_predict": MAX_JSON_TOKENS}
        try:
            async with asyncio.timeout(timeout):
                response = await self._client.chat(
                    model=self.model,
                    messages=[{"role": message.role, "content": message.content} for message in messages],
                    stream=False,
                    format=schema,
                    options=options,
                    keep_alive=self.keep_alive,
                )
        except TimeoutError as error:
            raise LlmUnavailableError(
                f"Ollama did not answer within {timeout:g} s with model {self.model!r}. It may still be loading "
                "the model, or the model is too big for this machine: check `ollama ps`, or try a smaller "
                "ALAN_LLM_MODEL."
            ) from error
        except Exception as error:
            raise self._unavailable(error) from error
        source = f"The answer of {self.model!r} for {name!r}"
        if response.done_reason == "length":
            limit = options.get("num_predict", "the model's default")
            raise StructuredOutputError(f"{source} was cut off at the length limit (num_predict: {limit}).")
        return parse_json_object(response.message.content or "", source=source)

    async def check(self) -> LlmStatus:
        """Is the server reachable, and does it have the model? Never raises for Ollama's failures."""

        def status(reachable: bool, present: bool, message: str, names: tuple[str, ...] = ()) -> LlmStatus:
            return LlmStatus(self.shown_host, self.model, reachable, present, message, names)

        try:
            async with asyncio.timeout(self.check_timeout):
                listing = await self._client.list()
        except TimeoutError:
            return status(False, False, f"Ollama at {self.shown_host} did not answer within {self.check_timeout:g} s.")
        except Exception as error:
            return status(False, False, str(self._unavailable(error)))
        names = tuple(entry.model for entry in listing.models if entry.model)
        wanted = canonical_model(self.model)
        present = wanted in {canonical_model(name) for name in names}
        if not present:
            # `list()` shows local models only; `show()` also resolves names the listing spells differently.
            try:
                async with asyncio.timeout(self.check_timeout):
                    await self._client.show(self.model)
                present = True
            except Exception as error:
                if not (isinstance(error, ollama.ResponseError) and error.status_code == 404):
                    return status(True, False, str(self._unavailable(error)), names)
        if not present:
            return status(True, False, self._missing_model_message(), names)
        return status(True, True, f"Ollama at {self.shown_host} is up and has {self.model}.", names)

    # --- errors ---

    def _missing_model_message(self) -> str:
        return (
            f"Ollama at {self.shown_host} has no model {self.model!r}. Run `ollama pull {self.model}`, or set "
            "ALAN_LLM_MODEL to one that `ollama list` shows."
        )

    def _unavailable(self, error: BaseException) -> LlmUnavailableError:
        """Translate what the ollama client / httpx raised into one error that says the fix."""
        if isinstance(error, LlmUnavailableError):
            return error
        if isinstance(error, ConnectionError | httpx.ConnectError | httpx.ConnectTimeout):
            return LlmUnavailableError(
                f"Cannot reach Ollama at {self.shown_host}. Start it with `ollama serve` (or the Ollama app), or "
                "set OLLAMA_HOST to where it runs."
            )
        if isinstance(error, ollama.ResponseError):
            if error.status_code == 404:
                return LlmUnavailableError(self._missing_model_message())
            return LlmUnavailableError(
                f"Ollama at {self.shown_host} failed to answer with {self.model!r} "
                f"(status {error.status_code}): {error.error}"
            )
        if isinstance(error, httpx.HTTPError):
            return LlmUnavailableError(
                f"Lost the connection to Ollama at {self.shown_host} ({type(error).__name__}); is it restarting?"
            )
        return LlmUnavailableError(f"Ollama call failed: {type(error).__name__}: {error}")
