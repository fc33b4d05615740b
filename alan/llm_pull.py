"""The chat model ahead of time: pulled by the LLM server where its API can (Ollama's pull API, its progress
streamed), only checked where it can't (an OpenAI-compatible API). Failures are `Outcome`s that say the fix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alan.model_download import AGAIN, Outcome
from alan.settings import Settings

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class PullProgress:
    """One line of an LLM server's pull: what it is doing, and for a layer being downloaded, how far it is."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


def prepare_llm(settings: Settings, on_progress: Callable[[PullProgress], None]) -> Outcome:
    """Have the LLM server hold ALAN_LLM_MODEL: Ollama pulls it (progress to `on_progress`); other servers are
    only checked, with how to load it there when they lack it."""
    import asyncio

    from alan.engine_factory import chat_model_status

    status = asyncio.run(chat_model_status(settings))
    if status.ok:
        return Outcome(True, status.message)
    if not status.reachable:
        return Outcome(False, status.message)
    if settings.llm_backend == "ollama":
        return _ollama_pull(settings, on_progress)
    if settings.llm_backend == "openai":
        model = settings.llm_model
        return Outcome(
            False,
            f"{status.message} An OpenAI-compatible API can't pull models: load {model} on that server (vLLM: "
            f"`vllm serve {model}`; llama.cpp: `llama-server -m FILE.gguf --alias {model}`; LM Studio: "
            f"`lms load {model}`; Ollama's /v1: `ollama pull {model}`), then run `alan models download` again.",
        )
    return Outcome(False, status.message)


def _ollama_pull(settings: Settings, on_progress: Callable[[PullProgress], None]) -> Outcome:
    import httpx
    import ollama

    from engine.urls import without_credentials

    model, shown = settings.llm_model, without_credentials(settings.ollama_host)
    last = ""
    # No read timeout: a layer of several GB streams for as long as it takes, with a progress line every moment.
    with ollama.Client(host=settings.ollama_host, timeout=httpx.Timeout(None, connect=5.0)) as client:
        try:
            for part in client.pull(model, stream=True):
                last = part.status or ""
                on_progress(PullProgress(last, part.digest, part.total, part.completed))
        except ollama.ResponseError as error:
            unknown = "does not exist" in error.error or "not found" in error.error
            fix = (
                "Check the name on https://ollama.com/library, or set ALAN_LLM_MODEL to one that `ollama list` shows"
                if unknown
                else "Check the Ollama server's log"
            )
            return Outcome(False, f"Ollama at {shown} couldn't pull {model}: {error.error}. {fix}.")
        except (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError):
            return Outcome(
                False, f"Cannot reach Ollama at {shown}: start it with `ollama serve` (or the Ollama app), {AGAIN}."
            )
        except httpx.HTTPError as error:
            return Outcome(
                False,
                f"Lost the connection to Ollama at {shown} while it pulled {model} ({type(error).__name__}): "
                f"{AGAIN.removeprefix('then ')}; Ollama goes on from where it stopped.",
            )
    if last != "success":
        return Outcome(False, f"Ollama at {shown} stopped pulling {model} at “{last}”: {AGAIN.removeprefix('then ')}.")
    return Outcome(True, f"Ollama at {shown} pulled {model}")
