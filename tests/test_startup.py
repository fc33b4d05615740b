"""A newcomer's first minutes: `alan --help` starts without the speech stack, and the docs agree with the code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from engine.voices import MAX_CLONE_SECONDS

ROOT = Path(__file__).resolve().parents[1]
# Each takes from a tenth of a second (discord, telegram) to seconds (torch, transformers) to import.
HEAVY_MODULES = ("torch", "transformers", "faster_whisper", "ctranslate2", "discord", "telegram")
SETTING_PREFIXES = ("ALAN_", "OLLAMA_", "TELEGRAM_", "DISCORD_")  # the settings' variables (see .env.example)

# Import the CLI and render the help of every command, in a fresh interpreter; print what got imported.
HELP_EVERY_COMMAND = """
import json, sys
from typer.testing import CliRunner
from alan.cli import app

runner = CliRunner()
commands = [[], ["talk"], ["say"], ["doctor"], ["run"], ["db", "upgrade"], ["voice", "clone"], ["voice", "list"]]
for command in commands:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, (command, result.output)
print(json.dumps(sorted(set(sys.modules) & set(json.loads(sys.argv[1])))))
"""


def python_in_a_fresh_process(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a new interpreter (nothing imported yet), given the heavy modules' names as argv[1]."""
    return subprocess.run(
        [sys.executable, "-c", code, json.dumps(HEAVY_MODULES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_help_imports_no_speech_or_chat_library() -> None:
    result = python_in_a_fresh_process(HELP_EVERY_COMMAND)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_importing_the_cli_leaves_heavy_modules_unloaded() -> None:
    code = "import json, sys, alan.cli; print(json.dumps([m for m in json.loads(sys.argv[1]) if m in sys.modules]))"
    result = python_in_a_fresh_process(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


# `alan forget` through the conversation API, in a fresh interpreter; print its output, then what got imported.
FORGET = """
import json, sys
from typer.testing import CliRunner
from alan.cli import app

result = CliRunner().invoke(app, ["forget", "--yes"])
assert result.exit_code == 0, result.output
print(result.output)
print(json.dumps(sorted(set(sys.modules) & set(json.loads(sys.argv[1])))))
print(json.dumps(["engine.tts.csm_synthesizer" in sys.modules, "engine.stt" in sys.modules]))
"""


def test_forget_builds_the_conversation_without_loading_a_speech_library(tmp_path: Path) -> None:
    """Building a Conversation (CSM synthesizer, Whisper transcriber, chat client) imports no model library."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(SETTING_PREFIXES)}
    env |= {"ALAN_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-c", FORGET, json.dumps(HEAVY_MODULES)],
        cwd=tmp_path,  # no .env here: the default backends, CSM included
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    *output, imported, built = result.stdout.strip().splitlines()
    assert "Nothing is stored about you" in "\n".join(output)
    assert json.loads(built) == [True, True]  # the CSM synthesizer and Whisper were set up, not bypassed
    assert json.loads(imported) == []


# "10–30 s", "10-20 seconds": the recommended clip length wherever a person reads it.
CLIP_LENGTH = re.compile(r"\b10\s*[–-]\s*(\d+)\s*(?:s\b|sec|seconds)")


def test_every_text_gives_the_same_clip_length_as_the_code() -> None:
    texts = [ROOT / "README.md", *(ROOT / "alan").glob("*.py"), *(ROOT / "bot").rglob("*.py")]
    texts += [*(ROOT / "engine").rglob("*.py")]
    found = {
        f"{path.relative_to(ROOT)}: {match.group(0)}": int(match.group(1))
        for path in texts
        for match in CLIP_LENGTH.finditer(path.read_text(encoding="utf-8"))
    }
    assert found, "no clip length found: the pattern no longer matches the texts"
    assert {place: upper for place, upper in found.items() if upper != MAX_CLONE_SECONDS} == {}


def test_python_dash_m_runs_the_app_with_every_command() -> None:
    """`python -m alan.cli` runs the module as `__main__`, a copy the command modules don't register on."""
    result = subprocess.run(
        [sys.executable, "-m", "alan.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    for command in ("run", "doctor", "talk", "say", "voice", "forget"):
        assert f" {command} " in result.stdout, command
