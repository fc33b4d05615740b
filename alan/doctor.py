"""`alan doctor`: what is ready, what is missing, and the fix for each."""

from __future__ import annotations

import base64
import enum
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from alan.database_check import database_problem, open_failure
from alan.platforms import token_instructions
from alan.settings import Settings

if TYPE_CHECKING:
    pass


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
    from engine.store.database import create_db_engine, current_revision, head_revision, sqlite_path

    url = settings.resolved_database_url
    problem = database_problem(settings)
    if problem is not None:
        what, fix = problem
        return Check("database", Status.FAILED, what, fix)
    database = sqlite_path(url)
    if database is not None and not database.exists():
        return Check(
            "database",
            Status.MISSING,
            f"{database} will be created on first start",
            "Run `alan db upgrade` to create it now (`alan run` also creates it when it starts).",
        )
    try:
        revision = current_revision(create_db_engine(url))
    except Exception as error:  # any driver or filesystem error is reported, not raised
        what, fix = open_failure(settings, error)
        return Check("database", Status.FAILED, what, fix)
    head = head_revision()
    if revision != head:
        return Check("database", Status.MISSING, f"schema at {revision}, code expects {head}", "Run `alan db upgrade`.")
    return Check("database", Status.OK, f"schema at revision {revision} (current)")


def check_llm(settings: Settings) -> Check:
    """The chosen chat backend (ALAN_LLM_BACKEND): reachable, and serving ALAN_LLM_MODEL."""
    import asyncio

    from alan.engine_factory import chat_model_status

    name = f"llm ({settings.llm_backend})"
    status = asyncio.run(chat_model_status(settings))
    if status.ok:
        return Check(name, Status.OK, status.message)
    # The message already says what is wrong and how to fix it.
    fix = status.message
    if status.reachable and settings.llm_backend == "ollama":
        fix += " `alan models download` pulls it too."
    return Check(name, Status.FAILED, "not reachable" if not status.reachable else "model missing", fix)


def _hub_id_problem(name: str) -> str | None:
    """Why `name` can't be a Hugging Face model id (so it must be meant as a folder), or None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as error:
        return str(error)
    return None


def check_stt_model(settings: Settings) -> Check:
    from faster_whisper import available_models

    from engine.model_files import cached_path, whisper_model
    from engine.stt import WHISPER_FILES  # the files WhisperTranscriber itself refuses a folder without

    name = "speech recognition"
    model = settings.stt_model
    folder = Path(model).expanduser()
    if folder.is_dir():
        missing = [file for file in WHISPER_FILES if not (folder / file).is_file()]
        if missing:
            return Check(
                name,
                Status.FAILED,
                f"{folder} lacks {', '.join(missing)}",
                "Point ALAN_STT_MODEL at a faster-whisper (CTranslate2) model folder with its tokenizer "
                "(e.g. a download of Systran/faster-whisper-small), or use a size name like `small`.",
            )
        return Check(name, Status.OK, f"local CTranslate2 model in {folder}")
    sizes = available_models()
    if model not in sizes and ("/" not in model or _hub_id_problem(model) is not None or folder.exists()):
        return Check(
            name,
            Status.FAILED,
            f"ALAN_STT_MODEL={model} is not a folder that exists, a Whisper size or a Hugging Face id",
            "Set ALAN_STT_MODEL to a Whisper size such as `small` or `base`, a hub id such as "
            "Systran/faster-whisper-small, or the path of a folder with a CTranslate2 Whisper model.",
        )
    hub_model = whisper_model(model)
    path = cached_path(hub_model) if hub_model is not None else None  # the look-up `alan run` warns with
    if path is None:  # not in the local cache: the first voice message would wait while it downloads
        size = f" ({hub_model.approximate_size})" if hub_model and hub_model.approximate_size else ""
        return Check(
            name,
            Status.MISSING,
            f"Whisper `{model}` is not downloaded yet",
            f"Run `alan models download` to fetch it now{size}; otherwise it downloads on first use. Or set "
            "ALAN_STT_MODEL to a local folder.",
        )
    return Check(name, Status.OK, f"Whisper `{model}` cached in {path}")


def _csm_folder_problem(folder: Path) -> str | None:
    """What a local CSM folder lacks for `CsmSpeech.load` (config, weights, tokenizer), or None."""
    config = folder / "config.json"
    if not config.is_file():
        return f"{folder} has no config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        return f"{config} can't be read as a model config ({error})"
    if model_type != "csm":
        return f"{folder} holds a `{model_type}` model, not CSM"
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        return f"{folder} has no weights (*.safetensors)"
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        return f"{folder} has no tokenizer (tokenizer.json)"
    return None


def check_tts_model(settings: Settings) -> Check:
    """The chosen synthesizer's model (ALAN_TTS_BACKEND; the backends are engine.tts.SYNTHESIZERS)."""
    name = "speech synthesis"
    if settings.speech_url:
        return _check_speech_service(settings, name)
    if settings.tts_backend == "csm":
        return _check_csm_model(settings, name)
    if settings.tts_backend == "tone":
        return Check(name, Status.OK, "the tone synthesizer (ALAN_TTS_BACKEND=tone) needs no model: replies are tones")
    return Check(
        name,
        Status.MISSING,
        f"the {settings.tts_backend} synthesizer's model is not checked here",
        "It loads on first use: `alan say Hello` tries it.",
    )


def _check_speech_service(settings: Settings, name: str) -> Check:
    """ALAN_SPEECH_URL: the speech service answers, with its model loaded, and speaks with this process's model."""
    from engine.urls import without_credentials

    url, shown = settings.speech_url, without_credentials(settings.speech_url)
    fix = "Start it on the GPU node with `alan speech serve`, or unset ALAN_SPEECH_URL to speak in this process."
    parts = urlsplit(url)
    request = urllib.request.Request(f"{shown}/info")
    if parts.username is not None:  # as the bots send them (aiohttp reads them from the URL): HTTP basic auth
        login = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(login).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            info = json.load(answer)
    except urllib.error.HTTPError as error:  # 503: the replica is up, its model is not (the body says why)
        try:
            message = str(json.load(error).get("message", error))
        except ValueError:
            message = str(error)
        return Check(name, Status.FAILED, f"the speech service at {shown} can't speak: {message}", fix)
    except (OSError, ValueError) as error:
        return Check(name, Status.FAILED, f"the speech service at {shown} is not reachable ({error})", fix)
    expected = f"{settings.tts_backend}:{settings.tts_model}"
    if info.get("tag") != expected:
        return Check(
            name,
            Status.FAILED,
            f"the speech service at {shown} speaks with {info.get('tag')!r}, this process expects {expected!r}",
            "Give this process the same ALAN_TTS_BACKEND and ALAN_TTS_MODEL as the speech service.",
        )
    return Check(name, Status.OK, f"the speech service at {shown} speaks with {expected}")


def _check_csm_model(settings: Settings, name: str) -> Check:
    from engine.model_files import cached_path, csm_model

    model = settings.tts_model
    fix = "Point ALAN_TTS_MODEL at a folder saved with save_pretrained (CSM-1B in transformers format), or leave it "
    fix += "at sesame/csm-1b to download it."
    if Path(model).is_dir():
        problem = _csm_folder_problem(Path(model))
        if problem is not None:
            return Check(name, Status.FAILED, problem, fix)
        return Check(name, Status.OK, f"local CSM model in {model}")
    if _hub_id_problem(model) is not None or Path(model).exists():
        # Not a folder, and not something the hub could hold: a path that is wrong.
        return Check(name, Status.FAILED, f"ALAN_TTS_MODEL={model} is not a folder that exists", fix)
    hub_model = csm_model(model)
    path = cached_path(hub_model) if hub_model is not None else None  # every file the loader reads, not just one
    if path is not None:
        return Check(name, Status.OK, f"`{model}` cached in {path}")
    return Check(
        name,
        Status.MISSING,
        f"`{model}` is not downloaded yet",
        "Run `alan models download` to fetch it now; otherwise it downloads on first use. sesame/csm-1b is gated: "
        "accept its licence at https://huggingface.co/sesame/csm-1b and set HF_TOKEN (or `hf auth login`) first. "
        "Or download it to a folder and set ALAN_TTS_MODEL.",
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
        f"Set {token_instructions()} in .env.",
    )


def check_device(settings: Settings) -> Check:
    if settings.device == "cpu":  # a choice, not a problem (and no need to ask PyTorch)
        return Check("device", Status.OK, "CPU (as set by ALAN_DEVICE=cpu): speech is slower than real time")
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
    return Check(
        "device",
        Status.MISSING,
        "no CUDA GPU: speech synthesis runs on the CPU, far slower than real time",
        "For real-time speech use an NVIDIA GPU with PyTorch's CUDA build (see the README); to run on the CPU "
        "on purpose, set ALAN_DEVICE=cpu.",
    )


ALL_CHECKS: dict[str, Callable[[Settings], Check]] = {
    "platforms": check_platforms,
    "database": check_database,
    "llm": check_llm,
    "stt": check_stt_model,
    "tts": check_tts_model,
    "opus": check_opus,
    "device": check_device,
}


# Names a check had before, still accepted by `--skip`.
FORMER_NAMES = {"ollama": "llm"}


def run_checks(settings: Settings, skip: set[str] | None = None) -> list[Check]:
    skipped = {FORMER_NAMES.get(name, name) for name in skip or ()}
    return [check(settings) for name, check in ALL_CHECKS.items() if name not in skipped]
