"""`alan talk` and `alan doctor` with ALAN_LLM_BACKEND=openai, through the real CLI, against a local server speaking
the OpenAI protocol (tiny CSM and Whisper for the rest)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alan.cli import app
from alan.doctor import Status, check_llm
from alan.settings import load_settings
from tests.conftest import fake_ollama_in_thread
from tests.fakes.local_server import serve_in_thread
from tests.fakes.openai_server import FakeOpenAI

MODEL = "gemma-3-270m"
KEY = "sk-cli-key-112233"
runner = CliRunner()
ONLY_LLM = ["doctor", "--skip", "platforms", "--skip", "database", "--skip", "stt", "--skip", "tts"]
ONLY_LLM += ["--skip", "opus", "--skip", "device"]


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    yield from serve_in_thread(FakeOpenAI(models=[MODEL, "qwen2.5-0.5b"], api_key=KEY))


@pytest.fixture
def env(clean_env: Path, monkeypatch: pytest.MonkeyPatch, server: FakeOpenAI) -> Path:
    monkeypatch.setenv("ALAN_LLM_BACKEND", "openai")
    monkeypatch.setenv("ALAN_LLM_BASE_URL", server.base_url)
    monkeypatch.setenv("ALAN_LLM_MODEL", MODEL)
    monkeypatch.setenv("ALAN_LLM_API_KEY", KEY)
    monkeypatch.setenv("COLUMNS", "200")
    return clean_env


@pytest.fixture
def talk_env(env: Path, monkeypatch: pytest.MonkeyPatch, tiny_csm_dir: Path, tiny_whisper_dir: Path) -> Path:
    monkeypatch.setenv("ALAN_TTS_MODEL", str(tiny_csm_dir))
    monkeypatch.setenv("ALAN_STT_MODEL", str(tiny_whisper_dir))
    monkeypatch.setenv("ALAN_DEVICE", "cpu")
    return env


def test_talk_answers_through_the_server_and_the_next_call_carries_the_history(
    talk_env: Path, server: FakeOpenAI
) -> None:
    server.script("Hello there. Nice to meet you.")
    result = runner.invoke(app, ["talk", "--text", "hello", "-o", "reply.wav"])
    assert result.exit_code == 0, result.output
    assert "aLAN: Hello there." in result.output and "Nice to meet you." in result.output
    assert (talk_env / "reply.wav").read_bytes()[:4] == b"RIFF"

    server.script("You said hello.")
    result = runner.invoke(app, ["talk", "--text", "what did I say", "-o", "second.wav"])
    assert result.exit_code == 0, result.output
    assert "You said hello." in result.output
    history = [(m["role"], m["content"]) for m in server.chat_requests[-1]["messages"][1:]]
    assert history == [("user", "hello"), ("assistant", "Hello there. Nice to meet you."), ("user", "what did I say")]
    assert {r.authorization for r in server.requests} == {f"Bearer {KEY}"}


def test_talk_with_a_wrong_key_is_a_clear_message_and_exit_code_1(
    talk_env: Path, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALAN_LLM_API_KEY", "sk-wrong-998877")
    result = runner.invoke(app, ["talk", "--text", "hello", "-o", "reply.wav"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert "refused the API key" in result.output and "ALAN_LLM_API_KEY" in result.output
    assert "sk-wrong-998877" not in result.output and "Traceback" not in result.output


def test_openai_without_a_base_url_is_refused_by_name(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_LLM_BACKEND", "openai")
    result = runner.invoke(app, ["talk", "--text", "hello", "-o", "reply.wav"])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "ALAN_LLM_BASE_URL: required with ALAN_LLM_BACKEND=openai" in result.output


# --- `alan doctor` checks the chosen backend ---


def test_doctor_ok_when_the_server_serves_the_model(env: Path) -> None:
    check = check_llm(load_settings())
    assert check.status is Status.OK and check.name == "llm (openai)" and MODEL in check.detail
    result = runner.invoke(app, ONLY_LLM)
    assert result.exit_code == 0, result.output


def test_doctor_names_the_models_the_server_has(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_LLM_MODEL", "llama-3-8b")
    check = check_llm(load_settings())
    assert check.status is Status.FAILED and check.detail == "model missing"
    assert f"serves: {MODEL}, qwen2.5-0.5b" in check.fix and "ALAN_LLM_MODEL" in check.fix


def test_doctor_on_a_wrong_key_says_the_fix_and_never_prints_the_key(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALAN_LLM_API_KEY", "sk-wrong-445566")
    check = check_llm(load_settings())
    assert check.status is Status.FAILED and "ALAN_LLM_API_KEY" in check.fix
    result = runner.invoke(app, ONLY_LLM)
    assert result.exit_code == 1 and "sk-wrong-445566" not in result.output


def test_doctor_on_a_server_that_is_down_names_the_url(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_LLM_BACKEND", "openai")
    monkeypatch.setenv("ALAN_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    check = check_llm(load_settings())
    assert check.status is Status.FAILED and check.detail == "not reachable"
    assert "http://127.0.0.1:9/v1" in check.fix and "ALAN_LLM_BASE_URL" in check.fix


def test_doctor_checks_ollama_by_default(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for ollama in fake_ollama_in_thread(["llama3.2:3b"]):
        monkeypatch.setenv("OLLAMA_HOST", ollama.host)
        check = check_llm(load_settings())
        assert check.status is Status.OK and check.name == "llm (ollama)"
        assert [r.path for r in ollama.requests] == ["/api/tags"]


@pytest.mark.parametrize("name", ["llm", "ollama"])  # "ollama" is the check's former name
def test_doctor_skips_the_llm_check_by_either_name(clean_env: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # would fail if checked
    args = ["doctor", "--skip", name, "--skip", "platforms", "--skip", "database", "--skip", "stt", "--skip", "tts"]
    result = runner.invoke(app, [*args, "--skip", "opus", "--skip", "device"])
    assert result.exit_code == 0, result.output
    assert "llm" not in result.output
