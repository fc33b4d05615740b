"""`alan run` as a user starts it: a real process, configured only through its environment.

The fake Bot API server and the fake Ollama run in this test's process on their own event loop; `alan run`
talks to them over HTTP exactly as it would to Telegram and Ollama, with the tiny models as its speech models.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

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
