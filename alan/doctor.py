"""`alan doctor`: what is ready, what is missing, and the fix for each."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alan.settings import Settings
from engine.llm import LlmStatus


class Status(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # not ready yet, but aLAN can still start (e.g. a model that downloads on first use)
    FAILED = "failed"  # aLAN can't work until this is fixed


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def check_database(settings: Settings) -> Check:
    from sqlalchemy.engine import make_url

    from engine.store.database import create_db_engine, current_revision, head_revision

    url = settings.resolved_database_url
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and database and not Path(database).exists():
        folder = Path(database).parent
        while not folder.exists():
            folder = folder.parent
        if not os.access(folder, os.W_OK):
            return Check(
                "database", Status.FAILED, f"{folder} is not writable", "Set ALAN_DATA_DIR to a writable folder."
            )
        return Check("database", Status.MISSING, f"{database} will be created on first start", "")
    try:
        revision = current_revision(create_db_engine(url))
    except Exception as error:  # any driver or filesystem error is reported, not raised
        return Check(
            "database",
            Status.FAILED,
            f"cannot open: {type(error).__name__}: {error}",
            "Check ALAN_DATABASE_URL, and that ALAN_DATA_DIR is writable.",
        )
    head = head_revision()
    if revision != head:
        return Check("database", Status.MISSING, f"schema at {revision}, code expects {head}", "Run `alan db upgrade`.")
    return Check("database", Status.OK, f"schema at revision {revision} (current)")


def check_llm(settings: Settings) -> Check:
    import asyncio

    from engine.llm import OllamaChat

    async def ask() -> LlmStatus:
        async with OllamaChat(settings.llm_model, settings.ollama_host) as chat:
            return await chat.check()

    status = asyncio.run(ask())
    if status.ok:
        return Check("ollama", Status.OK, status.message)
    # The message already says what is wrong and how to fix it.
    return Check("ollama", Status.FAILED, "not reachable" if not status.reachable else "model missing", status.message)


def check_stt_model(settings: Settings) -> Check:
    from faster_whisper import download_model

    model = settings.stt_model
    if Path(model).is_dir():
        if (Path(model) / "model.bin").is_file():
            return Check("speech recognition", Status.OK, f"local CTranslate2 model in {model}")
        return Check(
            "speech recognition",
            Status.FAILED,
            f"{model} has no model.bin",
            "Point ALAN_STT_MODEL at a faster-whisper (CTranslate2) model folder, or use a size name like `small`.",
        )
    try:
        path = download_model(model, local_files_only=True)
    except Exception:  # not in the local cache (or an unknown name): it will be fetched on first use
        return Check(
            "speech recognition",
            Status.MISSING,
            f"Whisper `{model}` is not downloaded yet",
            "It downloads on first use (needs internet once); or set ALAN_STT_MODEL to a local folder.",
        )
    return Check("speech recognition", Status.OK, f"Whisper `{model}` cached in {path}")


def check_tts_model(settings: Settings) -> Check:
    from huggingface_hub import try_to_load_from_cache

    model = settings.tts_model
    if Path(model).is_dir():
        if (Path(model) / "config.json").is_file():
            return Check("speech synthesis", Status.OK, f"local CSM model in {model}")
        return Check(
            "speech synthesis",
            Status.FAILED,
            f"{model} has no config.json",
            "Point ALAN_TTS_MODEL at a folder saved with save_pretrained (CSM-1B in transformers format).",
        )
    cached = try_to_load_from_cache(model, "config.json")
    if isinstance(cached, str):
        return Check("speech synthesis", Status.OK, f"`{model}` cached")
    return Check(
        "speech synthesis",
        Status.MISSING,
        f"`{model}` is not downloaded yet",
        "It downloads on first use. sesame/csm-1b is gated: accept its licence on Hugging Face and run "
        "`hf auth login` first, or download it to a folder and set ALAN_TTS_MODEL.",
    )


def check_opus(settings: Settings) -> Check:
    import av

    if "libopus" not in av.codecs_available:
        return Check(
            "opus",
            Status.FAILED,
            "PyAV was built without libopus: voice notes can't be encoded",
            "Reinstall PyAV from PyPI wheels: `pip install --force-reinstall av`.",
        )
    if settings.discord_token is None:
        return Check("opus", Status.OK, "libopus available for voice notes")
    import discord.opus

    if discord.opus.is_loaded() or discord.opus._load_default():
        return Check("opus", Status.OK, "libopus available for voice notes and Discord voice")
    return Check(
        "opus",
        Status.FAILED,
        "discord.py can't load the system libopus for voice channels",
        "Install it: `sudo apt-get install libopus0` (Debian/Ubuntu) or `brew install opus` (macOS).",
    )


def check_platforms(settings: Settings) -> Check:
    platforms = settings.configured_platforms
    if platforms:
        return Check("platforms", Status.OK, "configured: " + ", ".join(platforms))
    return Check(
        "platforms",
        Status.FAILED,
        "no chat platform configured",
        "Set TELEGRAM_TOKEN (from @BotFather) and/or DISCORD_TOKEN (Discord developer portal) in .env.",
    )


def check_device(settings: Settings) -> Check:
    import torch

    if torch.cuda.is_available():
        return Check("device", Status.OK, f"CUDA: {torch.cuda.get_device_name(0)}")
    if settings.device == "cuda":
        return Check(
            "device",
            Status.FAILED,
            "ALAN_DEVICE=cuda but no CUDA GPU is visible to PyTorch",
            "Install a CUDA build of PyTorch and the NVIDIA driver, or set ALAN_DEVICE=auto.",
        )
    return Check("device", Status.MISSING, "CPU only: speech synthesis will be far slower than real time", "")


ALL_CHECKS: dict[str, Callable[[Settings], Check]] = {
    "platforms": check_platforms,
    "database": check_database,
    "ollama": check_llm,
    "stt": check_stt_model,
    "tts": check_tts_model,
    "opus": check_opus,
    "device": check_device,
}


def run_checks(settings: Settings, skip: set[str] | None = None) -> list[Check]:
    return [check(settings) for name, check in ALL_CHECKS.items() if name not in (skip or set())]
