""".dockerignore and the build context it leaves: no secret, local data or cache gets in, and what pip installs and
the Dockerfile's bind mounts read does.

The patterns are translated as Docker's patternmatcher reads them, and the context is walked as `docker build .`
would send it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy_files_helpers import ROOT, dockerfile

# .dockerignore -----------------------------------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(exception?, pattern) per line of .dockerignore, translated as Docker's patternmatcher reads them."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        line = line.removeprefix("!").strip().strip("/")
        regex, index = "", 0
        while index < len(line):
            char = line[index]
            if line.startswith("**/", index):
                regex, index = regex + "(.*/)?", index + 3
                continue
            if line.startswith("**", index):
                regex, index = regex + ".*", index + 2
                continue
            if char == "*":
                regex += "[^/]*"
            elif char == "?":
                regex += "[^/]"
            elif char == "[":
                end = line.index("]", index)
                regex += "[" + line[index + 1 : end].replace("!", "^", 1) + "]"
                index = end
            else:
                regex += re.escape(char)
            index += 1
        patterns.append((exception, re.compile(regex)))
    return patterns


def ignored(path: str) -> bool:
    """Whether `path` (relative to the context) stays out of it: the last pattern matching it or a parent wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    result = False
    for exception, pattern in dockerignore_patterns():
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            result = not exception
    return result


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.local",
        "alan/.env",
        ".venv/bin/python",
        "data/alan.db",
        "data/voices/ann.ogg",
        ".git/config",
        "tests/data/compose-spec.json",
        "alan/__pycache__/cli.cpython-311.pyc",
        "alan.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/nodeids",
        "build/lib/alan/cli.py",
        "models/csm-1b/model.safetensors",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert ignored(path)


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "README.md", "alan/cli.py", "engine/tts/__init__.py", "migrations/script.py.mako"]
)
def test_dockerignore_lets_in(path: str) -> None:
    assert not ignored(path)


def context_files() -> Iterator[Path]:
    """The files of this checkout that the build context holds, as `docker build .` would send it."""
    exceptions = [pattern.pattern for exception, pattern in dockerignore_patterns() if exception]
    for path in ROOT.iterdir():
        relative = path.name
        # A left-out folder is skipped whole unless an exception might let something under it back in.
        if path.is_dir() and ignored(relative) and not any(pattern.startswith(relative) for pattern in exceptions):
            continue
        candidates = path.rglob("*") if path.is_dir() else [path]
        for candidate in candidates:
            if candidate.is_file() and not ignored(candidate.relative_to(ROOT).as_posix()):
                yield candidate


def test_the_build_context_holds_the_packages_pip_installs_and_nothing_secret() -> None:
    files = [path.relative_to(ROOT).as_posix() for path in context_files()]
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    for include in packages["packages"]["find"]["include"]:
        package = include.rstrip("*")
        assert f"{package}/__init__.py" in files, f"the package {package} is missing from the build context"
    for package, patterns in packages["package-data"].items():
        for pattern in patterns:
            for path in (ROOT / package).glob(pattern):
                assert path.relative_to(ROOT).as_posix() in files
    # The Dockerfile's bind mounts read pyproject.toml and README.md (its `readme`) from the context.
    assert {"pyproject.toml", "README.md"} <= set(files)
    assert not [name for name in files if Path(name).name.startswith(".env") or name.startswith(("data/", ".venv/"))]
    size = sum((ROOT / name).stat().st_size for name in files)
    assert size < 20 * 1024 * 1024, f"the build context is {size / 2**20:.0f} MiB: something big got in"


def test_the_dockerfiles_bind_mounts_read_what_the_context_holds() -> None:
    for run in dockerfile().runs():
        for source in re.findall(r"--mount=type=bind,source=([^,\s]+)", run):
            assert (ROOT / source).exists() and not ignored(source), source
