"""The chat-backend settings: ALAN_LLM_BACKEND, ALAN_LLM_BASE_URL, ALAN_LLM_API_KEY, and the one place a backend
is chosen."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from alan.logs import configure_logging
from alan.settings import SettingsError, load_settings
from engine.llm import CHAT_BACKENDS, OllamaChat, OpenAIChat, make_chat_model


def test_ollama_is_the_default_backend(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.llm_backend == "ollama" and settings.llm_url == "http://127.0.0.1:11434"
    assert settings.llm_api_key is None


def test_openai_backend_uses_the_base_url(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_LLM_BACKEND", "OpenAI")
    monkeypatch.setenv("ALAN_LLM_BASE_URL", "http://127.0.0.1:8000/v1/")
    settings = load_settings()
    assert settings.llm_backend == "openai" and settings.llm_url == "http://127.0.0.1:8000/v1"


def test_openai_backend_without_a_base_url_says_what_to_set(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_LLM_BACKEND", "openai")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "ALAN_LLM_BASE_URL: required with ALAN_LLM_BACKEND=openai" in str(raised.value)
    assert "http://127.0.0.1:8000/v1" in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ALAN_LLM_BACKEND", "vllm", "ALAN_LLM_BACKEND: Input should be 'ollama' or 'openai'"),
        ("ALAN_LLM_BASE_URL", "127.0.0.1:8000/v1", "ALAN_LLM_BASE_URL: Value error, must start with http://"),
    ],
)
def test_wrong_values_are_named(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=expected):
        load_settings()


def test_the_api_key_is_a_secret_scrubbed_from_logs(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALAN_LLM_BACKEND", "openai")
    monkeypatch.setenv("ALAN_LLM_BASE_URL", "https://alan:url-pass@llm.example/v1")
    monkeypatch.setenv("ALAN_LLM_API_KEY", "sk-live-abcdef123456")
    settings = load_settings()
    assert "sk-live-abcdef123456" not in repr(settings)
    assert {"sk-live-abcdef123456", "url-pass"} <= set(settings.secret_values())
    configure_logging("INFO", settings.secret_values())
    try:
        logging.getLogger("alan.test").info("calling with key %s", "sk-live-abcdef123456")
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers if h.get_name() != "alan"]
    assert "calling with key [REDACTED]" in capsys.readouterr().err


def test_a_blank_api_key_is_no_key(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_LLM_API_KEY", "  ")
    assert load_settings().llm_api_key is None


def test_the_backend_registry_builds_each_backend() -> None:
    assert set(CHAT_BACKENDS) == {"ollama", "openai"}
    assert isinstance(make_chat_model("ollama", "llama3.2:3b", "http://127.0.0.1:11434"), OllamaChat)
    chat = make_chat_model("openai", "gemma", "http://127.0.0.1:8000/v1", api_key="k")
    assert isinstance(chat, OpenAIChat) and chat.base_url == "http://127.0.0.1:8000/v1"
    with pytest.raises(ValueError, match="unknown chat-model backend 'nope'; known: ollama, openai"):
        make_chat_model("nope", "m", "http://x")


def test_debug_logging_keeps_the_openai_client_from_logging_requests() -> None:
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        configure_logging("DEBUG", [])
        # openai 1.x logs "Request options" (the messages: what the person said) at DEBUG; httpx2 each URL at INFO.
        assert not logging.getLogger("openai._base_client").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("httpx2").isEnabledFor(logging.INFO)
        assert logging.getLogger("engine.llm.openai").isEnabledFor(logging.DEBUG)  # ours stay at DEBUG
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for name in ("telegram", "discord", "openai", "httpx", "httpx2", "alembic"):
            logging.getLogger(name).setLevel(logging.NOTSET)
