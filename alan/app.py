"""Wiring: builds the engine from the settings and runs the configured chat platforms side by side."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from alan.settings import Settings

log = logging.getLogger(__name__)

# Each platform is one module in `bot/` with `async def serve(settings, conversation) -> None`.
PLATFORM_MODULES = {"telegram": "bot.telegram", "discord": "bot.discord"}


class PlatformUnavailable(Exception):
    pass


def _platform_server(name: str) -> Callable[..., Awaitable[None]]:
    try:
        module = importlib.import_module(PLATFORM_MODULES[name])
    except ModuleNotFoundError as error:
        raise PlatformUnavailable(
            f"The {name} adapter is not part of this version of aLAN yet; unset its token to run the others."
        ) from error
    return module.serve


class AllPlatformsFailed(Exception):
    pass


def run_platforms(settings: Settings) -> None:
    """Serve every configured platform until interrupted; raises `AllPlatformsFailed` if none could run."""
    servers = {name: _platform_server(name) for name in settings.configured_platforms}
    from alan.engine_factory import build_conversation

    conversation = build_conversation(settings)
    try:
        asyncio.run(_serve_all(settings, conversation, servers))
    except asyncio.CancelledError:
        log.info("stopped")  # SIGTERM: a service manager stopping aLAN
    finally:
        conversation.models.worker.shutdown()


async def _serve_all(settings: Settings, conversation: Any, servers: dict[str, Callable[..., Awaitable[None]]]) -> None:
    # SIGTERM (systemd, docker stop) stops as gently as Ctrl+C: platforms close their connections first.
    main = asyncio.current_task()
    if main is not None:
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows' event loop
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    # One platform failing to start (a revoked token, say) must not take the others down.
    try:
        results = await asyncio.gather(
            *(server(settings, conversation) for server in servers.values()), return_exceptions=True
        )
    finally:
        await conversation.llm.aclose()
    failed = []
    for name, result in zip(servers, results, strict=True):
        if isinstance(result, BaseException):
            log.error("%s stopped: %s", name, result)
            failed.append(name)
    if failed and len(failed) == len(servers):
        # Exit non-zero so that a service manager (systemd's Restart=on-failure) notices.
        raise AllPlatformsFailed("No chat platform could run: " + ", ".join(failed) + ". See the log above.")
