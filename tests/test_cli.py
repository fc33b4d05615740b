from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from alan.cli import app
from engine.store.database import head_revision
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
    assert f"revision {head_revision()}" in result.output
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
    assert f"schema at revision {head_revision()} (current)" in result.output


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


# A data dir aLAN can't write: a clear message and exit 1, before any platform or model starts ---------------


def _run_with_telegram(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("TELEGRAM_TOKEN", "123:abc")
    monkeypatch.setenv("TELEGRAM_API_URL", "http://127.0.0.1:9")  # never reached: the database check comes first
    return runner.invoke(app, ["run"])


def test_run_with_a_data_dir_below_a_file_says_what_is_wrong(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "notes.txt").write_text("a file, not a folder")
    monkeypatch.setenv("ALAN_DATA_DIR", str(clean_env / "notes.txt" / "data"))
    result = _run_with_telegram(monkeypatch)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    output = " ".join(result.output.split())
    assert f"{clean_env / 'notes.txt'} is a file" in output and "ALAN_DATA_DIR" in output


def test_run_with_a_corrupt_database_says_so(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "data").mkdir()
    (clean_env / "data" / "alan.db").write_bytes(b"not sqlite" * 200)
    result = _run_with_telegram(monkeypatch)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    output = " ".join(result.output.split())
    assert "can't open its database" in output and "file is not a database" in output


def test_db_upgrade_with_an_unusable_data_dir_says_so(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "notes.txt").write_text("a file, not a folder")
    monkeypatch.setenv("ALAN_DATA_DIR", str(clean_env / "notes.txt" / "data"))
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "is a file" in " ".join(result.output.split())


RUN_ALAN = "import sys; from alan.cli import app; sys.argv[0] = 'alan'; app()"
# As root, permission bits deny nothing: the data dir becomes a read-only mount, in a mount namespace of its own.
READ_ONLY_MOUNT = 'mount -t tmpfs -o ro tmpfs "$0" || exit 97; exec "$@"'


def test_run_with_a_read_only_data_dir_says_what_is_wrong(clean_env: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    data = clean_env / "data"
    data.mkdir()
    command = [sys.executable, "-c", RUN_ALAN, "run"]
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("running as root without util-linux's unshare: no way to make a folder read-only")
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY_MOUNT, str(data), *command]
    else:
        data.chmod(0o555)
    env = {**os.environ, "TELEGRAM_TOKEN": "123:abc", "TELEGRAM_API_URL": "http://127.0.0.1:9"}
    env.update(ALAN_DATA_DIR=str(data))
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    finally:
        data.chmod(0o755)
    if result.returncode == 97 or result.stderr.startswith("unshare:"):
        pytest.skip(f"no read-only mount possible here: {result.stderr.strip()}")
    output = " ".join(result.stderr.split())
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(data) in output and "ALAN_DATA_DIR" in output
    assert "isn't writable" in output or "read-only file system" in output


def test_a_database_url_opened_read_only_is_refused(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's `mode=ro` refuses writes even to root: the database would open, and then no turn could be stored."""
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    monkeypatch.setenv("ALAN_DATABASE_URL", f"sqlite:///file:{clean_env / 'data' / 'alan.db'}?mode=ro&uri=true")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "read-only" in result.output and "mode=ro" in result.output
