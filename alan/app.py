"""Wiring: builds the engine from the settings and runs the configured chat platforms side by side."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from alan.health import Heartbeat, clear_heartbeat
from alan.platforms import BY_NAME, Platform
from alan.scheduler import TurnScheduler
from alan.settings import Settings
from engine.heap import freeze_long_lived

log = logging.getLogger(__name__)

# aLAN's own top-level packages: a module of theirs that is missing means an incomplete copy of aLAN.
OWN_PACKAGES = frozenset({"alan", "bot", "engine", "migrations"})
# Where the pip package is named otherwise than the module it installs.
DISTRIBUTIONS = {"telegram": "python-telegram-bot", "discord": "discord.py", "nacl": "PyNaCl"}


class PlatformUnavailableError(Exception):
    pass


def _platform_server(platform: Platform) -> Callable[..., Awaitable[None]]:
    try:
        server: Callable[..., Awaitable[None]] = importlib.import_module(platform.module).serve
    except ModuleNotFoundError as error:
        raise PlatformUnavailableError(missing_module_message(platform, error)) from error
    return server


def missing_module_message(platform: Platform, error: ModuleNotFoundError) -> str:
    """Why `platform` can't be imported: the module that is really missing, and the fix."""
    missing = error.name or ""
    unset = f"unset {platform.token_variable} to run the other platforms"
    if missing and (missing == platform.module or platform.module.startswith(missing + ".")):
        return f"The {platform.label} adapter ({platform.module}) is not part of this version of aLAN; {unset}."
    top = missing.partition(".")[0]
    if not top or top in OWN_PACKAGES:
        what = f"aLAN's own module {missing} is missing" if top else str(error)
        return (
            f"The {platform.label} adapter can't start: {what}. This copy of aLAN is incomplete: reinstall it "
            f"(`pip install .` in aLAN's folder), or {unset}."
        )
    return (
        f"The {platform.label} adapter needs the Python module `{missing}`, which is not installed. "
        f"`pip install .` in aLAN's folder installs it with aLAN's other dependencies "
        f"(or `pip install {DISTRIBUTIONS.get(top, top)}`); or {unset}."
    )


def build_scheduler(settings: Settings) -> TurnScheduler:
    """The app's one turn scheduler: as many turns at once as the speech service speaks together, 20 waiting.

    ALAN_TTS_MAX_BATCH, or 8 when the service sizes itself: on a GPU a frame for eight costs about what one does,
    and on a CPU eight together make 3–6.7× the frames of one after another (fp32–bf16, bench/tts.py). No per-chat bound
    here: each platform sets its own per turn (Telegram: 3 of one person's messages, and a group's chatter kept as
    light turns; a Discord voice channel's utterances are light turns too, 8 waiting at most).
    """
    return TurnScheduler(concurrency=settings.tts_max_batch or 8, max_waiting=20)


class AllPlatformsFailedError(Exception):
    pass


def run_platforms(settings: Settings) -> None:
    """Serve every configured platform until interrupted; raises `AllPlatformsFailedError` if none could run."""
    servers = {name: _platform_server(BY_NAME[name]) for name in settings.configured_platforms}
    clear_heartbeat(settings.data_dir)  # an earlier process's beat must not vouch for this one while it loads
    from alan.engine_factory import build_conversation
    from alan.model_download import warn_missing_models

    conversation = build_conversation(settings)
    warn_missing_models(settings)  # a model the first turn would download is named now, not after minutes of silence
    freeze_long_lived()  # what start-up loaded stays: full collections needn't walk it (engine/heap.py)
    try:
        asyncio.run(_serve_all(settings, conversation, servers))
    except asyncio.CancelledError:
        log.info("stopped")  # SIGTERM: a service manager stopping aLAN


async def _serve_all(settings: Settings, conversation: Any, servers: dict[str, Callable[..., Awaitable[None]]]) -> None:
    # SIGTERM (systemd, docker stop) stops as gently as Ctrl+C: platforms close their connections first.
    main = asyncio.current_task()
    if main is not None:
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows' event loop
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    # One scheduler for every platform: a chat's turns in order, chats taking turns fairly, one bound on waiting.
    scheduler = build_scheduler(settings)
    # Proof of life for the container's health check (`alan health`): the beats stop if this loop hangs.
    heartbeat = Heartbeat(settings.data_dir).start()
    # One platform failing to start (a revoked token, say) must not take the others down.
    try:
        results = await asyncio.gather(
            *(server(settings, conversation, scheduler) for server in servers.values()), return_exceptions=True
        )
    finally:
        await heartbeat.stop()
        await conversation.aclose()
    failed = []
    for name, result in zip(servers, results, strict=True):
        if isinstance(result, BaseException):
            log.error("%s stopped: %s", name, result)
            failed.append(name)
    if failed and len(failed) == len(servers):
        # Exit non-zero so that a service manager (systemd's Restart=on-failure) notices.
        raise AllPlatformsFailedError("No chat platform could run: " + ", ".join(failed) + ". See the log above.")
