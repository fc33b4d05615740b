"""aLAN's words from any OpenAI-compatible server (vLLM, llama.cpp's server, LM Studio, Ollama's `/v1`), streamed.

`OpenAIChat` implements `engine.chat_model.ChatModel` with the official `openai` client against
`{base_url}/chat/completions` (`stream=True`: server-sent events, `choices[0].delta.content`, then `[DONE]`) and
`{base_url}/models`. Every failure — server down, a refused key, an unknown model, too slow, the stream broken
off, an empty reply — is one `LlmUnavailableError` that says the fix; no message ever holds the API key.
`complete_json` asks for one whole answer constrained to a JSON schema (`response_format: json_schema`), for the
engine's background work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import openai

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
T = TypeVar("T")

# Local servers need no key, but the client insists on one; an explicit placeholder also keeps the client from
# sending the OPENAI_API_KEY of the environment (a real OpenAI key) to whatever server ALAN_LLM_BASE_URL names.
NO_API_KEY = "not-needed"
# A model server may load the model on the first request (seconds to minutes for a big one); after the first
# token, a gap this long means it is stuck.
FIRST_TOKEN_TIMEOUT = 60.0
TOKEN_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
# One retry (the client's own, with its short backoff) rides over a server that is restarting or briefly busy
# (429/5xx); more would keep a person waiting on a server that is really down.
MAX_RETRIES = 1
REDACTED = "[REDACTED]"


class OpenAIChat(PromptedChat):
    """Streaming chat with one model on an OpenAI-compatible server. The HTTP connection is made on first use."""

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key: str | None = None,
        system_prompt: str = SYSTEM_PROMPT,
        history_chars: int = HISTORY_CHARS,
        first_token_timeout: float = FIRST_TOKEN_TIMEOUT,
        token_timeout: float = TOKEN_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        check_timeout: float = 5.0,
        max_retries: int = MAX_RETRIES,
        temperature: float | None = TEMPERATURE,
        max_tokens: int | None = MAX_REPLY_TOKENS,
    ) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.shown_url = without_credentials(self.base_url)  # what messages and logs show
        self.system_prompt = system_prompt
        self.history_chars = history_chars
        self.first_token_timeout = first_token_timeout
        self.token_timeout = token_timeout
        self.check_timeout = check_timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._has_key = bool(api_key)
        # Whatever a server echoes back (some put the key they were given in their 401 text) is scrubbed of these.
        self._secrets = [secret for secret in (api_key, urlsplit(self.base_url).password) if secret]
        # Reads have no client timeout: the first token and the gaps between tokens are judged by the limits
        # above, which can say more than a bare ReadTimeout.
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or NO_API_KEY,
            timeout=openai.Timeout(None, connect=connect_timeout),
            max_retries=max_retries,
        )

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

        Closing the iterator early (the user interrupted) closes the HTTP response, which makes the server stop.
        """
        messages = self.build_messages(history, user_text, context=context, language=language)
        options: dict[str, Any] = {}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.max_tokens is not None:
            options["max_tokens"] = self.max_tokens
        started = time.monotonic()
        create = self._client.chat.completions.create(
            model=self.model,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            **options,
        )
        stream = await self._within(create, self.first_token_timeout, waiting_for_first=True, streaming=False)
        received_text = False
        finish_reason: str | None = None
        try:
            while True:
                if received_text:
                    limit_s = self.token_timeout
                else:  # the first word's limit counts from the request, not from the last (role-only) chunk
                    limit_s = max(0.0, self.first_token_timeout - (time.monotonic() - started))
                try:
                    chunk = await self._within(
                        anext(stream), limit_s, waiting_for_first=not received_text, streaming=True
                    )
                except StopAsyncIteration:
                    break
                if not chunk.choices:  # e.g. a usage-only chunk
                    continue
                choice = chunk.choices[0]
                text = choice.delta.content if choice.delta is not None else None
                if text:
                    received_text = True
                    yield text
                finish_reason = choice.finish_reason or finish_reason
        finally:
            await stream.close()
        if finish_reason == "length":
            log.info("Reply cut at max_tokens=%s", self.max_tokens)
        if not received_text:
            raise LlmUnavailableError(
                f"The model {self.model!r} at {self.shown_url} finished without writing anything "
                f"(finish_reason: {finish_reason or 'none'}). Check the server's log and the model's chat template, "
                "or set ALAN_LLM_MODEL to another model."
            )

    async def complete_json(
        self,
        messages: Sequence[ChatMessage],
        schema: dict[str, Any],
        *,
        name: str,
        timeout: float = 60.0,  # noqa: ASYNC109 - its limit becomes an LlmUnavailableError with the fix
    ) -> dict[str, Any]:
        """The JSON object the server answers `messages` with, constrained to `schema` (see `ChatModel`).

        Sent as a strict `json_schema` response format, which OpenAI's own API accepts only for a schema whose
        objects list every property as required and set `additionalProperties: false`; vLLM and llama.cpp's
        server take any schema. Temperature 0: extraction wants the likeliest reading, not variety. `max_tokens`
        stays, so a model stuck repeating itself stops; an answer cut there is a `StructuredOutputError`.
        """
        sent = [{"role": message.role, "content": message.content} for message in messages]
        options: dict[str, Any] = {}
        if self.max_tokens is not None:
            options["max_tokens"] = MAX_JSON_TOKENS
        try:
            async with asyncio.timeout(timeout):
                completion = await self._client.chat.completions.create(
                    model=self.model,
                    messages=sent,  # type: ignore[arg-type]
                    stream=False,
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": name, "schema": schema, "strict": True},
                    },
                    temperature=0,
                    **options,
                )
        except TimeoutError as error:
            raise LlmUnavailableError(
                f"The server at {self.shown_url} did not answer within {timeout:g} s with model {self.model!r}. It "
                "may still be loading the model, or the model is too big for the machine: check the server's log, "
                "or try a smaller ALAN_LLM_MODEL."
            ) from error
        except openai.NotFoundError as error:
            raise LlmUnavailableError(await self._not_found_message(error)) from error
        except Exception as error:
            raise self._unavailable(error, streaming=False) from error
        source = f"The answer of {self.model!r} for {name!r}"
        if not completion.choices:
            raise StructuredOutputError(f"{source} has no choices.")
        choice = completion.choices[0]
        if choice.message.refusal:  # not quoted: a refusal may repeat what a person said
            raise StructuredOutputError(f"{source} is a refusal.")
        if choice.finish_reason == "length":
            limit = MAX_JSON_TOKENS if self.max_tokens is not None else "the server's default"
            raise StructuredOutputError(f"{source} was cut off at the length limit (max_tokens: {limit}).")
        return parse_json_object(choice.message.content or "", source=source)

    async def check(self) -> LlmStatus:
        """Is the server reachable, and does `/models` list the model? Never raises for the server's failures."""

        def status(reachable: bool, present: bool, message: str, names: tuple[str, ...] = ()) -> LlmStatus:
            return LlmStatus(self.shown_url, self.model, reachable, present, message, names)

        try:
            async with asyncio.timeout(self.check_timeout):
                page = await self._client.models.list()
        except TimeoutError:
            silent = f"The server at {self.shown_url} did not answer within {self.check_timeout:g} s."
            return status(False, False, silent)
        except openai.APIConnectionError as error:
            return status(False, False, str(self._unavailable(error, streaming=False)))
        except openai.NotFoundError:
            return status(True, False, self._not_an_api_message())
        except Exception as error:
            return status(True, False, str(self._unavailable(error, streaming=False)))
        names = tuple(entry.id for entry in page.data)
        if self.model not in names:
            return status(True, False, self._missing_model_message(names), names)
        return status(True, True, f"The server at {self.shown_url} is up and serves {self.model}.", names)

    # --- errors ---

    async def _within(self, step: Awaitable[T], limit_s: float, *, waiting_for_first: bool, streaming: bool) -> T:
        """Await one step of a request within `limit_s`, turning every failure into an `LlmUnavailableError`."""
        try:
            async with asyncio.timeout(limit_s):
                return await step
        except StopAsyncIteration:
            raise
        except TimeoutError as error:
            if waiting_for_first:
                raise LlmUnavailableError(
                    f"The server at {self.shown_url} did not start answering within {self.first_token_timeout:g} s "
                    f"with model {self.model!r}. It may still be loading the model, or the model is too big for "
                    "the machine: check the server's log, or try a smaller ALAN_LLM_MODEL."
                ) from error
            raise LlmUnavailableError(
                f"The server at {self.shown_url} stopped sending text for {limit_s:g} s in the middle of a reply "
                f"from {self.model!r}; check the server's log."
            ) from error
        except openai.NotFoundError as error:
            raise LlmUnavailableError(await self._not_found_message(error)) from error
        except Exception as error:
            raise self._unavailable(error, streaming=streaming) from error

    def _unavailable(self, error: BaseException, *, streaming: bool) -> LlmUnavailableError:
        """Translate what the openai client raised into one error that says the fix (and holds no secret)."""
        if isinstance(error, LlmUnavailableError):
            return error
        if isinstance(error, openai.APITimeoutError):
            return LlmUnavailableError(
                f"The server at {self.shown_url} did not accept the connection in time; is it overloaded, or is "
                "ALAN_LLM_BASE_URL pointing at the wrong machine?"
            )
        if isinstance(error, openai.APIConnectionError):
            if streaming:
                return LlmUnavailableError(
                    f"Lost the connection to the server at {self.shown_url} in the middle of a reply from "
                    f"{self.model!r}; is it restarting? Check its log."
                )
            return LlmUnavailableError(
                f"Cannot reach an OpenAI-compatible server at {self.shown_url}. Start it (for example "
                "`vllm serve MODEL` or `python -m llama_cpp.server --model FILE.gguf`), or set ALAN_LLM_BASE_URL "
                "to where it runs."
            )
        if isinstance(error, openai.AuthenticationError):
            if not self._has_key:
                return LlmUnavailableError(
                    f"The server at {self.shown_url} wants an API key (status 401): set ALAN_LLM_API_KEY."
                )
            return LlmUnavailableError(
                f"The server at {self.shown_url} refused the API key (status 401): check ALAN_LLM_API_KEY."
            )
        if isinstance(error, openai.PermissionDeniedError):
            return LlmUnavailableError(
                f"The server at {self.shown_url} does not allow this API key to use {self.model!r} (status 403): "
                "check ALAN_LLM_API_KEY and the key's permissions on the server."
            )
        if isinstance(error, openai.APIStatusError):
            return LlmUnavailableError(
                f"The server at {self.shown_url} failed to answer with {self.model!r} "
                f"(status {error.status_code}): {self._server_says(error)}"
            )
        if isinstance(error, openai.APIError):  # an error event in the middle of the stream
            return LlmUnavailableError(
                f"The server at {self.shown_url} reported an error in the middle of a reply from {self.model!r}: "
                f"{self._server_says(error)}"
            )
        if streaming:  # older openai releases let the HTTP library's own error out of a broken stream unwrapped
            return LlmUnavailableError(
                f"Lost the connection to the server at {self.shown_url} in the middle of a reply from "
                f"{self.model!r} ({type(error).__name__}); is it restarting? Check its log."
            )
        return LlmUnavailableError(self._scrub(f"The call to {self.shown_url} failed: {type(error).__name__}: {error}"))

    async def _not_found_message(self, error: openai.NotFoundError) -> str:
        """A 404 is an unknown model, or a base URL that is not the API's root: `/models` tells which."""
        try:
            async with asyncio.timeout(self.check_timeout):
                page = await self._client.models.list()
        except Exception:
            return self._not_an_api_message()
        names = tuple(entry.id for entry in page.data)
        if self.model not in names:
            return self._missing_model_message(names)
        return f"The server at {self.shown_url} answered 404 for {self.model!r}: {self._server_says(error)}"

    def _missing_model_message(self, names: tuple[str, ...]) -> str:
        serves = ", ".join(names) if names else "no models"
        return (
            f"The server at {self.shown_url} has no model {self.model!r}; it serves: {serves}. Set ALAN_LLM_MODEL "
            "to one of those, or load the model on the server."
        )

    def _not_an_api_message(self) -> str:
        return (
            f"{self.shown_url} does not answer like an OpenAI-compatible API (404 for /models). Check "
            "ALAN_LLM_BASE_URL: it is the API's root, usually ending in /v1 (e.g. http://127.0.0.1:8000/v1)."
        )

    def _server_says(self, error: openai.APIError) -> str:
        body = error.body
        message = body.get("message") if isinstance(body, dict) else None
        return self._scrub(str(message or error.message))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text
