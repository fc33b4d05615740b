"""Which hub files a speech model needs, whether they are on this machine, and a warning before a load fetches them.

The Whisper and CSM loaders download a Hugging Face model on first use. A first use in the middle of a conversation
means a person waits minutes in silence, so the loaders call `warn_before_download` first: the operator's log says
what is downloading and why the turn waits. Fetching ahead of time (`alan models download`) and the start-up check
use the same file patterns and the same cache look-up, so "downloaded" means one thing everywhere: every file the
loader reads is in the local Hugging Face cache.

Nothing here touches the network: cache look-ups only (`local_files_only`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

ModelKind = Literal["whisper", "csm"]

# What faster-whisper's own download takes (faster_whisper.utils.download_model): everything WhisperModel reads.
WHISPER_PATTERNS: tuple[str, ...] = (
    "config.json",
    "preprocessor_config.json",
    "model.bin",
    "tokenizer.json",
    "vocabulary.*",
)
# What transformers reads for CSM (`CsmSpeech.load`): the configs (model, generation, processor), the chat template,
# the safetensors weights and the tokenizer. Not the original `ckpt.pt` that sesame/csm-1b also holds (gigabytes the
# transformers loader never opens), nor its sample prompts.
CSM_PATTERNS: tuple[str, ...] = ("*.json", "*.jinja", "*.safetensors", "tokenizer.model")

# Rough download sizes of the usual models, for messages given without asking the hub (which tells exact ones).
APPROXIMATE_SIZES: dict[str, str] = {
    "Systran/faster-whisper-tiny": "about 75 MB",
    "Systran/faster-whisper-tiny.en": "about 75 MB",
    "Systran/faster-whisper-base": "about 145 MB",
    "Systran/faster-whisper-base.en": "about 145 MB",
    "Systran/faster-whisper-small": "about 485 MB",
    "Systran/faster-whisper-small.en": "about 485 MB",
    "Systran/faster-whisper-medium": "about 1.5 GB",
    "Systran/faster-whisper-medium.en": "about 1.5 GB",
    "Systran/faster-whisper-large-v1": "about 3 GB",
    "Systran/faster-whisper-large-v2": "about 3 GB",
    "Systran/faster-whisper-large-v3": "about 3 GB",
    "sesame/csm-1b": "several GB",
}


@dataclass(frozen=True)
class HubModel:
    """A speech model on the Hugging Face Hub, as a setting names it, with the files its loader reads."""

    kind: ModelKind
    name: str  # as the setting spells it: "small", or a hub id
    repo_id: str

    @property
    def patterns(self) -> tuple[str, ...]:
        return WHISPER_PATTERNS if self.kind == "whisper" else CSM_PATTERNS

    @property
    def label(self) -> str:
        """How messages name it: "Whisper `small` (Systran/faster-whisper-small)", "CSM `sesame/csm-1b`"."""
        return self._describe(with_size=False)

    @property
    def sized_label(self) -> str:
        """The label with the download's rough size, where known: "Whisper `small` (Systran/…, about 485 MB)"."""
        return self._describe(with_size=True)

    @property
    def approximate_size(self) -> str | None:
        return APPROXIMATE_SIZES.get(self.repo_id)

    def _describe(self, *, with_size: bool) -> str:
        notes = [self.repo_id] if self.name != self.repo_id else []
        if with_size and self.approximate_size:
            notes.append(self.approximate_size)
        what = "Whisper" if self.kind == "whisper" else "CSM"
        return f"{what} `{self.name}`" + (f" ({', '.join(notes)})" if notes else "")

    def missing(self, files: Collection[str]) -> list[str]:
        """What the loader needs that `files` (paths relative to the model's root) lack; empty: nothing."""
        return missing_parts(self.kind, files)


def missing_parts(kind: ModelKind, files: Collection[str]) -> list[str]:
    """The parts of a `kind` model that `files` lack, each named as a person would look for it."""
    names = set(files)
    if kind == "whisper":
        from engine.stt import WHISPER_FILES  # the files WhisperTranscriber refuses a folder without

        return [name for name in WHISPER_FILES if name not in names]
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not any(name.endswith(".safetensors") for name in names):
        missing.append("weights (*.safetensors)")
    if not names & {"tokenizer.json", "tokenizer_config.json"}:
        missing.append("tokenizer (tokenizer.json)")
    return missing


def folder_files(folder: Path) -> set[str]:
    """Every file under `folder`, as paths relative to it (what the hub calls a repository's files)."""
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def missing_in_folder(kind: ModelKind, folder: Path) -> list[str]:
    """What a model folder lacks for its loader; also the shards a sharded checkpoint's index names."""
    files = folder_files(folder)
    missing = missing_parts(kind, files)
    index = folder / "model.safetensors.index.json"
    if kind == "csm" and index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return [*missing, "a readable model.safetensors.index.json"]
        missing.extend(sorted(shards - files))
    return missing


def is_hub_id(name: str) -> bool:
    """Whether `name` has the shape of a Hugging Face repository id ("owner/name", or a bare "name")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def whisper_model(name: str) -> HubModel | None:
    """The hub model ALAN_STT_MODEL names: a faster-whisper size ("small") or a hub id of a CTranslate2 conversion.

    None for a local folder, or for a name that is neither (the loader says what is wrong with it).
    """
    if Path(name).expanduser().is_dir():
        return None
    if "/" in name:  # faster-whisper's own rule: a name with a slash is a hub id, one without a size
        return HubModel("whisper", name, name) if is_hub_id(name) else None
    # faster-whisper has no public size -> repository function (`download_model` maps and downloads in one go, with
    # its progress bars switched off), so its table is read as `download_model` reads it.
    from faster_whisper.utils import _MODELS

    repo_id = _MODELS.get(name)
    return HubModel("whisper", name, repo_id) if repo_id is not None else None


def csm_model(name: str) -> HubModel | None:
    """The hub model ALAN_TTS_MODEL names (CSM-1B in transformers format); None for a local folder or a non-id."""
    if Path(name).expanduser().is_dir() or not is_hub_id(name):
        return None
    return HubModel("csm", name, name)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: nothing will be downloaded, whatever the loaders try."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def cached_path(model: HubModel, cache_dir: str | Path | None = None) -> Path | None:
    """The model's snapshot in the local Hugging Face cache if every file its loader reads is there, else None.

    The same look-up the hub's own loaders make offline (the ref of `main`, then its snapshot); a snapshot whose
    listing the cache keeps is also checked against the patterns, so an interrupted download is not "downloaded".
    """
    from huggingface_hub import snapshot_download

    try:
        path = Path(
            snapshot_download(
                model.repo_id, allow_patterns=list(model.patterns), cache_dir=cache_dir, local_files_only=True
            )
        )
    except Exception:  # not cached (LocalEntryNotFoundError), or only part of it (IncompleteSnapshotError)
        return None
    return None if missing_in_folder(model.kind, path) else path


def warn_before_download(model: HubModel | None, cache_dir: str | Path | None = None) -> None:
    """Log a warning when loading `model` is about to download it: the operator sees why this turn waits.

    Silent for a local folder (None), a model already cached, and when the hub is switched off (then the load
    fails with its own message instead of downloading).
    """
    if model is None or hub_offline() or cached_path(model, cache_dir) is not None:
        return
    log.warning("downloading %s now, first use; this turn waits", model.sized_label)
