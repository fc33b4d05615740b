"""What the container-file tests share: docker-compose.yml (and its CPU override) and the Dockerfile, read as
Compose and BuildKit read them.

The compose files are loaded with Compose's `!reset` tag and merged as `docker compose -f base -f override` merges
them; the Dockerfile is split into its global ARGs, its stages and its last stage's instructions.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
GPU = "gpu"


# Reading compose files as Compose does -----------------------------------------------------------------------------


class Reset:
    """Compose's `!reset` tag: the override removes this key from what it merges into."""

    def __repr__(self) -> str:
        return "!reset"


RESET = Reset()


class ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus Compose's `!reset`; any other custom tag is an error, as in Compose."""


ComposeLoader.add_constructor("!reset", lambda _loader, _node: RESET)


def load(path: Path) -> dict[str, Any]:
    document = yaml.load(path.read_text(encoding="utf-8"), Loader=ComposeLoader)
    assert isinstance(document, dict), f"{path.name} is not a mapping"
    return document


def without_resets(value: Any) -> Any:
    """`value` as the schema sees it: Compose takes `!reset` keys out before validating."""
    if isinstance(value, dict):
        return {key: without_resets(item) for key, item in value.items() if item is not RESET}
    if isinstance(value, list):
        return [without_resets(item) for item in value]
    return value


def merge(base: Any, override: Any) -> Any:
    """`override` applied to `base` as `docker compose -f base -f override` does, for what these files use:
    mappings merge key by key, scalars replace, `!reset` removes."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is RESET:
                merged.pop(key, None)
            else:
                merged[key] = merge(base[key], value) if key in base else without_resets(value)
        return merged
    if isinstance(override, list):
        # Compose merges each kind of list its own way (ports append, command replaces…); none is needed yet.
        raise NotImplementedError("the CPU file overrides a list: teach merge() Compose's rule for that key")
    return override


@cache
def gpu_project() -> dict[str, Any]:
    return load(COMPOSE)


@cache
def cpu_project() -> dict[str, Any]:
    return merge(load(COMPOSE), load(COMPOSE_CPU))


PROJECTS = {"gpu": gpu_project, "cpu": cpu_project}


def services(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return project["services"]


def named_volumes(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(volume, path in the container) for each named volume the service mounts, short or long syntax."""
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
            if source and not source.startswith((".", "/", "~", "$")):  # not a bind mount
                yield source, target
        elif volume.get("type", "volume") == "volume" and volume.get("source"):
            yield volume["source"], volume["target"]


def reserves_gpu(service: dict[str, Any]) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(GPU in device.get("capabilities", []) for device in devices) or "gpus" in service


def one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart", "no") == "no"


def health_test(service: dict[str, Any]) -> list[str] | None:
    """The service's own health check command, if it has one that is on (the image's isn't known here)."""
    check = service.get("healthcheck")
    if not check or check.get("disable") in (True, "true"):
        return None
    test = check["test"]
    return ["CMD-SHELL", test] if isinstance(test, str) else list(test)


# Reading the Dockerfile as BuildKit does ---------------------------------------------------------------------------


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile, with its global ARGs and its stages, as BuildKit reads them."""

    global_args: dict[str, str] = field(default_factory=dict)
    stages: dict[str, str] = field(default_factory=dict)  # stage name: the image it is FROM
    final: list[tuple[str, str]] = field(default_factory=list)  # the last stage's instructions
    env: dict[str, str] = field(default_factory=dict)  # the last stage's ENV

    def instruction(self, name: str) -> str:
        [value] = [value for instruction, value in self.final if instruction == name]
        return value

    def exec_form(self, name: str) -> list[str]:
        value = json.loads(self.instruction(name))
        assert isinstance(value, list), f"{name} must be in exec form (a JSON list): signals reach the process"
        return value

    def runs(self) -> list[str]:
        return [value for instruction, value in self.final if instruction == "RUN"]


def logical_lines(text: str) -> Iterator[str]:
    """Whole instructions: comments dropped (inside continued lines too), lines ending in `\\` joined."""
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        yield " ".join((pending + line).split())
        pending = ""
    assert not pending, "the Dockerfile ends in a continued line"


@cache
def dockerfile() -> Dockerfile:
    parsed = Dockerfile()
    seen_from = False
    for line in logical_lines((ROOT / "Dockerfile").read_text(encoding="utf-8")):
        instruction, _, value = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            seen_from = True
            image, _, name = value.partition(" AS ")
            parsed.final = []
            parsed.env = {}
            if name:
                parsed.stages[name.strip()] = image.strip()
            else:
                parsed.stages[""] = image.strip()
            continue
        if not seen_from:
            assert instruction == "ARG", f"only ARG may come before the first FROM, not {instruction}"
            key, _, default = value.partition("=")
            parsed.global_args[key] = default
            continue
        parsed.final.append((instruction, value))
        if instruction == "ENV":
            for assignment in shlex.split(value):
                key, _, item = assignment.partition("=")
                parsed.env[key] = item
    return parsed


def variant_stage(variant: str) -> str:
    return dockerfile().stages[""].replace("${VARIANT}", variant)
