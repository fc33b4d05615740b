"""`alan run` as a user starts it: a real process, configured only through its environment.

The fake Bot API server and the fake Ollama run in this test's process on their own event loop; `alan run`
talks to them over HTTP exactly as it would to Telegram and Ollama, with the tiny models as its speech models.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import os
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from alan.platforms import PLATFORMS
from engine.audio import CSM_RATE, decode_audio
from tests.engine_harness import LLM_MODEL
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.telegram_server import TOKEN, FakeTelegram

T = TypeVar("T")
ANN = {"id": 1001, "is_bot": False, "first_name": "Ann"}


class ServerThread:
    """An event loop on a thread of its own, for servers the tested process talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def servers() -> Iterator[tuple[ServerThread, FakeTelegram, FakeOllama]]:
    thread = ServerThread()
    telegram = thread.run(FakeTelegram().start())
    ollama = thread.run(FakeOllama(models=[LLM_MODEL]).start())
    yield thread, telegram, ollama
    thread.run(telegram.close())
    thread.run(ollama.close())
    thread.stop()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "service-stop"])
def test_alan_run_answers_a_telegram_message_with_a_voice_note_and_stops_cleanly(
    servers: tuple[ServerThread, FakeTelegram, FakeOllama],
    tmp_path: Path,
    tiny_csm_dir: Path,
    tiny_whisper_dir: Path,
    stop_signal: signal.Signals,
) -> None:
    thread, telegram, ollama = servers
    ollama.script("Hello Ann, nice to meet you.")
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith(("ALAN_", "DISCORD_"))},
        "TELEGRAM_TOKEN": TOKEN,
        "TELEGRAM_API_URL": telegram.api_url,
        "OLLAMA_HOST": ollama.host,
        "ALAN_LLM_MODEL": LLM_MODEL,
        "ALAN_TTS_MODEL": str(tiny_csm_dir),
        "ALAN_STT_MODEL": str(tiny_whisper_dir),
        "ALAN_DEVICE": "cpu",
        "ALAN_DATA_DIR": str(tmp_path / "data"),
        "ALAN_LOG_LEVEL": "DEBUG",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "alan.cli", "run"],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        thread.run(telegram.wait_for("setMyCommands", within=60), timeout=70)
        thread.loop.call_soon_threadsafe(
            lambda: telegram.push_message(telegram.private_chat(ANN), ANN, text="hello there")
        )
        [answer] = thread.run(telegram.wait_for("sendVoice", chat_id=ANN["id"], within=90), timeout=100)
        assert len(decode_audio(answer.files["voice"], CSM_RATE)) > 0
        assert answer.params["caption"] == "Hello Ann, nice to meet you."
    finally:
        process.send_signal(stop_signal)
        output, _ = process.communicate(timeout=60)
    # Ctrl+C ends with the shell's usual 130; a service manager's SIGTERM is a normal stop.
    assert process.returncode == (130 if stop_signal == signal.SIGINT else 0), output
    assert "Telegram: @alan_test_bot is listening" in output
    assert "Traceback" not in output, output
    assert TOKEN not in output and TOKEN.split(":")[1] not in output  # not even at DEBUG
    assert (tmp_path / "data" / "alan.db").is_file()


# A platform that can't be imported: the message names what is really missing ---------------------------------


def unavailable(monkeypatch: pytest.MonkeyPatch, module: str, missing: str | None = None) -> str:
    """The message `alan run` gives when Telegram's adapter is `module` (which lacks `missing`, if given)."""
    from alan import app
    from alan.platforms import BY_NAME
    from alan.settings import load_settings

    monkeypatch.setitem(BY_NAME, "telegram", dataclasses.replace(BY_NAME["telegram"], module=module))
    if missing is not None:

        def import_module(name: str) -> object:
            raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

        monkeypatch.setattr(app, "importlib", types.SimpleNamespace(import_module=import_module))
    with pytest.raises(app.PlatformUnavailableError) as raised:
        app.run_platforms(load_settings(telegram_token="123:abc"))  # fails before any model loads
    return " ".join(str(raised.value).split())


def test_a_missing_adapter_says_the_adapter_is_not_part_of_this_version(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = unavailable(monkeypatch, "bot.no_such_platform")
    assert "The Telegram adapter (bot.no_such_platform) is not part of this version of aLAN" in message
    assert "unset TELEGRAM_TOKEN" in message


def test_a_missing_dependency_is_named_with_the_pip_fix(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An adapter that is there, but imports a library that is not installed (as bot.discord does davey and nacl).
    (clean_env / "adapter_with_a_missing_dependency.py").write_text(
        "import davey_not_installed\n\nasync def serve(settings, conversation):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(clean_env))
    message = unavailable(monkeypatch, "adapter_with_a_missing_dependency")
    assert "needs the Python module `davey_not_installed`, which is not installed" in message
    assert "`pip install .` in aLAN's folder installs it" in message
    assert "`pip install davey_not_installed`" in message
    assert "not part of this version" not in message


@pytest.mark.parametrize(
    ("missing", "package"), [("telegram", "python-telegram-bot"), ("nacl.bindings", "PyNaCl"), ("davey", "davey")]
)
def test_the_pip_fix_names_the_package_that_brings_the_module(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, missing: str, package: str
) -> None:
    message = unavailable(monkeypatch, "bot.telegram", missing)
    assert f"needs the Python module `{missing}`" in message and f"`pip install {package}`" in message


def test_a_missing_module_of_alan_itself_asks_for_a_reinstall(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = unavailable(monkeypatch, "bot.telegram", "bot.telegram.clone")
    assert "aLAN's own module bot.telegram.clone is missing" in message and "reinstall it" in message


def test_every_platform_package_serves() -> None:
    for platform in PLATFORMS:
        serve = importlib.import_module(platform.module).serve
        assert inspect.iscoroutinefunction(serve), platform.name
        assert list(inspect.signature(serve).parameters)[:2] == ["settings", "conversation"], platform.name
