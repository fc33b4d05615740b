from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from alan.cli import app
from tests.conftest import fake_ollama_in_thread

runner = CliRunner()


def test_help_lists_the_commands(clean_env: Path) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "doctor", "db"):
        assert command in result.output


def test_run_without_platforms_names_the_variables_and_fails(clean_env: Path) -> None:
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 1
    assert "TELEGRAM_TOKEN" in result.output and "DISCORD_TOKEN" in result.output


def test_bad_setting_is_reported_without_traceback_or_secret(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_TOKEN", "123:top-secret")
    monkeypatch.setenv("ALAN_DEVICE", "tpu")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2
    assert "ALAN_DEVICE" in result.output
    assert "Traceback" not in result.output and "top-secret" not in result.output


def test_db_upgrade_creates_the_database_in_the_data_dir(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_DATA_DIR", str(clean_env / "store"))
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "revision 0001" in result.output
    assert (clean_env / "store" / "alan.db").is_file()


def test_doctor_reports_each_part_with_a_fix(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("ALAN_STT_MODEL", str(clean_env / "no-such-whisper"))
    monkeypatch.setenv("COLUMNS", "250")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1  # no platform and no Ollama: not ready
    output = " ".join(result.output.split())
    assert "will be created on first start" in output
    assert not (clean_env / "data" / "alan.db").exists()  # a check doesn't create or migrate anything
    assert "ollama serve" in output
    assert "TELEGRAM_TOKEN" in output
    assert "speech synthesis" in output and "speech recognition" in output


def test_doctor_passes_platforms_when_a_token_is_set(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_TOKEN", "123:abc")
    monkeypatch.setenv("COLUMNS", "250")
    result = runner.invoke(app, ["doctor", "--skip", "ollama", "--skip", "stt", "--skip", "tts", "--skip", "device"])
    assert result.exit_code == 0, result.output
    assert "configured: telegram" in result.output
    assert "123:abc" not in result.output


@pytest.mark.parametrize(("models", "expected"), [(["llama3.2:3b"], "has llama3.2:3b"), (["other:1b"], "ollama pull")])
def test_doctor_checks_the_llm_model_on_a_live_server(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, models: list[str], expected: str
) -> None:
    for server in fake_ollama_in_thread(models):
        monkeypatch.setenv("OLLAMA_HOST", server.host)
        monkeypatch.setenv("ALAN_LLM_MODEL", "llama3.2:3b")
        monkeypatch.setenv("COLUMNS", "300")
        result = runner.invoke(app, ["doctor", "--skip", "stt", "--skip", "tts", "--skip", "platforms"])
        assert expected in " ".join(result.output.split())


def test_doctor_says_when_the_schema_is_current(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["doctor", "--skip", "ollama", "--skip", "stt", "--skip", "tts"])
    assert "schema at revision 0001 (current)" in result.output


def test_run_exits_non_zero_when_no_platform_can_run(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tiny_csm_dir: Path, tiny_whisper_dir: Path
) -> None:
    import asyncio
    import threading

    from tests.fakes.telegram_server import FakeTelegram

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    telegram = asyncio.run_coroutine_threadsafe(FakeTelegram().start(), loop).result(10)
    try:
        monkeypatch.setenv("TELEGRAM_TOKEN", "999:revoked-token")  # the server knows another token: 401
        monkeypatch.setenv("TELEGRAM_API_URL", telegram.api_url)
        monkeypatch.setenv("ALAN_TTS_MODEL", str(tiny_csm_dir))
        monkeypatch.setenv("ALAN_STT_MODEL", str(tiny_whisper_dir))
        result = runner.invoke(app, ["run"])
    finally:
        asyncio.run_coroutine_threadsafe(telegram.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert result.exit_code == 1
    assert "No chat platform could run: telegram" in result.output
    assert "revoked-token" not in result.output
