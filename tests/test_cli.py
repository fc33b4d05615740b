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
    output = result.output
    assert "database" in output and "ok" in output
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
