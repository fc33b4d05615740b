"""Models ahead of time: `alan models download` fetches them, `alan run` says at start-up which are missing.

The speech models come from the Hugging Face Hub through `huggingface_hub.snapshot_download` (its progress bars,
its cache), with the file patterns the loaders read (`engine.model_files`), so what is fetched here is exactly what
a load finds. The chat model is alan/llm_pull.py's. Every failure becomes one `Outcome` whose
message says the fix; nothing here raises for the hub's, the disk's or the server's errors, and the Hugging Face
token is only ever handed to `huggingface_hub`, never shown.
"""

from __future__ import annotations

import errno
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alan.settings import Settings
from engine.model_files import (
    HubModel,
    ModelKind,
    cached_path,
    csm_model,
    hub_offline,
    missing_in_folder,
    whisper_model,
)

log = logging.getLogger(__name__)

VARIABLES: dict[ModelKind, str] = {"whisper": "ALAN_STT_MODEL", "csm": "ALAN_TTS_MODEL"}
WHAT_IT_IS: dict[ModelKind, str] = {
    "whisper": "a CTranslate2 conversion for faster-whisper (e.g. Systran/faster-whisper-small)",
    "csm": "CSM-1B in transformers format (e.g. sesame/csm-1b)",
}
FIRST_USE: dict[ModelKind, str] = {"whisper": "voice message", "csm": "spoken reply"}
# Gated models' licences are accepted on huggingface.co itself, whichever mirror (HF_ENDPOINT) serves the files.
HUB_PAGE = "https://huggingface.co"
TOKEN_FIX = "set HF_TOKEN (in .env) or run `hf auth login`"
AGAIN = "then run `alan models download` again"


@dataclass(frozen=True)
class Outcome:
    """How one part of aLAN stands: ready (`ok`) or not, in a sentence that says the fix when it isn't."""

    ok: bool
    message: str


def human_size(size: int) -> str:
    """Bytes as the hub shows them, in decimal units: "484 MB", "6.2 GB", "1.0 kB"."""
    if size < 1000:
        return f"{size} B"
    value = size / 1000
    for unit in ("kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            break
        value /= 1000
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


# --- what each part needs ---------------------------------------------------------------------------------------


def stt_target(settings: Settings) -> HubModel | Outcome:
    """The Whisper model to fetch, or the outcome when there is nothing to fetch (a local folder) or it can't be."""
    folder = Path(settings.stt_model).expanduser()
    if folder.is_dir():
        return _local_folder("whisper", folder)
    model = whisper_model(settings.stt_model)
    if model is None:
        return Outcome(
            False,
            f"ALAN_STT_MODEL={settings.stt_model} is not a folder that exists, a Whisper size (such as small or "
            "base) or a Hugging Face id: set it to one of those.",
        )
    return model


def tts_target(settings: Settings, *, speech_node: bool = False) -> HubModel | Outcome:
    """The speech synthesis model to fetch, or the outcome when this machine needs none or it can't be fetched."""
    from engine.urls import without_credentials

    if settings.tts_backend == "tone":
        return Outcome(True, "the tone synthesizer (ALAN_TTS_BACKEND=tone) needs no model")
    if settings.tts_backend != "csm":
        return Outcome(
            True, f"the {settings.tts_backend} synthesizer's model is not fetched here: it loads on first use"
        )
    if settings.speech_url and not speech_node:
        return Outcome(
            True,
            f"speech is made by the speech service at {without_credentials(settings.speech_url)} (ALAN_SPEECH_URL), "
            "so this machine needs no speech model; on the speech nodes run `alan models download --speech-node`",
        )
    folder = Path(settings.tts_model).expanduser()
    if folder.is_dir():
        return _local_folder("csm", folder)
    model = csm_model(settings.tts_model)
    if model is None:
        return Outcome(
            False,
            f"ALAN_TTS_MODEL={settings.tts_model} is not a folder that exists or a Hugging Face id: set it to "
            "sesame/csm-1b, or to a folder with CSM-1B saved in transformers format.",
        )
    return model


def _local_folder(kind: ModelKind, folder: Path) -> Outcome:
    missing = missing_in_folder(kind, folder)
    if missing:
        return Outcome(False, f"{folder} lacks {', '.join(missing)}: {VARIABLES[kind]} must be {WHAT_IT_IS[kind]}.")
    return Outcome(True, f"local folder {folder}: nothing to fetch")


# --- fetching from the hub ----------------------------------------------------------------------------------------


def fetch(model: HubModel, token: str | None, say: Callable[[str], None]) -> Outcome:
    """Download what `model`'s loader reads into the Hugging Face cache (or find it there); `say` tells what's next.

    `token` is the Hugging Face token for gated models (HF_TOKEN, from the environment or .env: huggingface_hub
    reads only the environment); None lets `huggingface_hub` use its own login (`hf auth login`).
    """
    from huggingface_hub import snapshot_download

    if hub_offline():
        path = cached_path(model)
        if path is not None:
            return Outcome(True, f"downloaded ({path}); HF_HUB_OFFLINE is set, so no newer version was looked for")
        return Outcome(False, _offline_message(model))
    patterns = list(model.patterns)
    try:  # what the hub holds, and which of it the cache lacks, before a byte is downloaded
        plan = snapshot_download(
            model.repo_id, allow_patterns=patterns, token=token, dry_run=True, tqdm_class=_quiet_bars()
        )
    except Exception as error:
        path = cached_path(model)
        if path is not None and _is_connection_problem(error):
            return Outcome(True, f"downloaded ({path}); the hub can't be reached to look for a newer version")
        return Outcome(False, failure_message(model, error))
    missing = model.missing({info.filename for info in plan})
    if missing:
        return Outcome(
            False,
            f"{model.repo_id} on Hugging Face has no {', '.join(missing)}: {VARIABLES[model.kind]} must name "
            f"{WHAT_IT_IS[model.kind]}.",
        )
    wanted = [info for info in plan if info.will_download]
    if not wanted:
        return Outcome(True, f"already downloaded ({cached_path(model) or _cache_dir()})")
    size = sum(info.file_size or 0 for info in wanted)
    problem = _disk_space_problem(model, size)
    if problem is not None:
        return Outcome(False, problem)
    say(f"downloading {len(wanted)} file{'s' if len(wanted) > 1 else ''}, {human_size(size)}")
    try:
        path = Path(snapshot_download(model.repo_id, allow_patterns=patterns, token=token))
    except Exception as error:
        return Outcome(False, failure_message(model, error, size))
    return Outcome(True, f"downloaded to {path}")


def _quiet_bars() -> type:
    """Progress bars that stay hidden: the look before a download fetches nothing, so it draws no "Fetching" bars."""
    from huggingface_hub.utils import tqdm

    class Quiet(tqdm):  # type: ignore[misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


def _cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def _disk_space_problem(model: HubModel, size: int) -> str | None:
    """Why `size` more bytes won't fit in the cache, or None; asked before downloading, not gigabytes later."""
    folder = _cache_dir()
    while not folder.exists() and folder != folder.parent:  # the cache is made on first download
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None  # can't tell: the download itself will say if the disk fills up
    if free >= size:
        return None
    return _disk_full_message(model, size, free)


def _disk_full_message(model: HubModel, size: int, free: int | None = None) -> str:
    room = f" and only {human_size(free)} is free there" if free is not None else ", and the disk is full"
    return (
        f"{model.label} needs {human_size(size)} in the Hugging Face cache ({_cache_dir()}){room}: free some space, "
        f"or set HF_HUB_CACHE (or HF_HOME) to a folder on a bigger disk, {AGAIN}."
    )


def _offline_message(model: HubModel) -> str:
    return (
        f"{model.label} is not downloaded, and HF_HUB_OFFLINE is set, so nothing can be: unset it (or set "
        f"HF_HUB_OFFLINE=0) and {AGAIN.removeprefix('then ')}; or download the model on another machine, copy its "
        f"folder here and set {VARIABLES[model.kind]} to it."
    )


def _is_connection_problem(error: BaseException) -> bool:
    from huggingface_hub.errors import OfflineModeIsEnabled

    # huggingface_hub's HTTP client (httpx, or its fork httpx2) names its network failures these ways.
    names = {"NetworkError", "TimeoutException", "ProxyError"}
    return any(
        isinstance(cause, OfflineModeIsEnabled) or names & {cls.__name__ for cls in type(cause).__mro__}
        for cause in _causes(error)
    )


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what it was raised from: huggingface_hub wraps the hub's answer in its own errors."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def failure_message(model: HubModel, error: BaseException, size: int | None = None) -> str:
    """One sentence for what went wrong fetching `model`, with the fix (never a traceback, never the token)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    repo, variable = model.repo_id, VARIABLES[model.kind]
    causes = _causes(error)
    for cause in causes:
        if isinstance(cause, GatedRepoError):
            if cause.response is not None and cause.response.status_code == 403:
                return (
                    f"{repo} is gated, and the Hugging Face account of the token in use has no access to it yet: "
                    f"accept the licence at {HUB_PAGE}/{repo} while logged in as that account, {AGAIN}."
                )
            return f"{repo} is gated: accept the licence at {HUB_PAGE}/{repo} while logged in, then {TOKEN_FIX}."
        if isinstance(cause, RepositoryNotFoundError):
            return (
                f"There is no model {repo} on Hugging Face (or it is private and the token in use can't see it): "
                f"check {variable}."
            )
        if isinstance(cause, HfHubHTTPError) and cause.response is not None and cause.response.status_code == 401:
            return (
                "Hugging Face refused the token (HF_TOKEN, or the one `hf auth login` saved): it is invalid or "
                f"expired. Make a new read token at {HUB_PAGE}/settings/tokens, {TOKEN_FIX.removeprefix('set ')}."
            )
        if isinstance(cause, OfflineModeIsEnabled):
            return _offline_message(model)
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return _disk_full_message(model, size or 0)
        if isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return (
                f"Can't write to the Hugging Face cache ({_cache_dir()}): {cause.strerror}. Set HF_HOME to a "
                f"folder this user can write, {AGAIN}."
            )
    if _is_connection_problem(error):
        return (
            f"Can't reach Hugging Face at {constants.ENDPOINT} to fetch {repo}: check this machine's internet "
            "connection (and HTTPS_PROXY, if it needs a proxy), or download the model on another machine, copy its "
            f"folder here and set {variable} to it."
        )
    for cause in causes:
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            said = (cause.server_message or str(cause).splitlines()[0]).strip()
            return f"Hugging Face answered {cause.response.status_code} for {repo} ({said}): try again later."
    detail = (str(error).strip().splitlines() or [""])[0]
    return f"Couldn't download {repo} ({type(error).__name__}: {detail})."


# --- at start-up --------------------------------------------------------------------------------------------------


def missing_speech_models(settings: Settings) -> list[HubModel]:
    """The hub models this process will load that are not in the local cache (no network: cache look-ups only)."""
    wanted = [whisper_model(settings.stt_model)]
    if settings.tts_backend == "csm" and not settings.speech_url:  # with ALAN_SPEECH_URL the speech nodes load it
        wanted.append(csm_model(settings.tts_model))
    return [model for model in wanted if model is not None and cached_path(model) is None]


def warn_missing_models(settings: Settings) -> None:
    """Log a warning per speech model that the first turn needing it would download: the operator hears of it now,
    not from a person waiting minutes for an answer."""
    try:
        missing = missing_speech_models(settings)
    except Exception:  # a check that fails must not keep aLAN from starting; the load will say what's wrong
        log.debug("could not check the model cache", exc_info=True)
        return
    for model in missing:
        if hub_offline():
            log.warning(
                "%s is not downloaded, and HF_HUB_OFFLINE is set: it can't be loaded; run `alan models download` "
                "with the hub reachable, or point %s at a folder",
                model.sized_label,
                VARIABLES[model.kind],
            )
            continue
        log.warning(
            "%s is not downloaded yet: the first %s will wait while it downloads; run `alan models download` "
            "to fetch it now",
            model.sized_label,
            FIRST_USE[model.kind],
        )
