"""Chat-model backends behind `engine.chat_model.ChatModel`, one module each.

- `ollama`: Ollama's own API through the `ollama` client (the default).
- `openai`: any OpenAI-compatible `/v1/chat/completions` server (vLLM, llama.cpp's server, LM Studio, Ollama's
  `/v1`) through the official `openai` client.
- `prompt`: what both send — the system prompt, the person's language, the history that fits.

`OpenAIChat` is imported on first use: the `openai` package takes about two seconds to import, which a
deployment on Ollama should not pay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.chat_model import ChatMessage, ChatModel, LlmStatus
from engine.llm.ollama import DEFAULT_HOST, DEFAULT_OPTIONS, KEEP_ALIVE, OllamaChat, canonical_model
from engine.llm.prompt import (
    HISTORY_CHARS,
    LANGUAGE_NAMES,
    SYSTEM_PROMPT,
    build_messages,
    language_instruction,
    trim_history,
)

if TYPE_CHECKING:
    from engine.llm.openai import OpenAIChat

__all__ = [
    "CHAT_BACKENDS",
    "DEFAULT_HOST",
    "DEFAULT_OPTIONS",
    "HISTORY_CHARS",
    "KEEP_ALIVE",
    "LANGUAGE_NAMES",
    "SYSTEM_PROMPT",
    "ChatMessage",
    "ChatModel",
    "LlmStatus",
    "OllamaChat",
    "OpenAIChat",
    "build_messages",
    "canonical_model",
    "language_instruction",
    "make_chat_model",
    "trim_history",
]


def __getattr__(name: str) -> Any:
    if name == "OpenAIChat":
        from engine.llm.openai import OpenAIChat

        return OpenAIChat
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _ollama(model: str, url: str, api_key: str | None) -> ChatModel:
    return OllamaChat(model, url)  # a local Ollama takes no key (OLLAMA_HOST may hold user:password)


def _openai_compatible(model: str, url: str, api_key: str | None) -> ChatModel:
    from engine.llm.openai import OpenAIChat

    return OpenAIChat(model, url, api_key=api_key)


# Backend name (ALAN_LLM_BACKEND) → its constructor(model, url, api_key). A new backend is a module here and a line.
CHAT_BACKENDS: dict[str, Callable[[str, str, str | None], ChatModel]] = {
    "ollama": _ollama,
    "openai": _openai_compatible,
}


def make_chat_model(backend: str, model: str, url: str, *, api_key: str | None = None) -> ChatModel:
    """The chat model of `backend` for `model` at `url` (Ollama's host, or an OpenAI-compatible API root)."""
    try:
        make = CHAT_BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown chat-model backend {backend!r}; known: {', '.join(CHAT_BACKENDS)}") from None
    return make(model, url, api_key)
