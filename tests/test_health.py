"""`alan health`, the container's health check: fresh, stale, missing and unreadable heartbeats, and the running app
writing them from its event loop (so a hung loop reads as unhealthy)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from alan import app as alan_app
from alan.cli import app
from alan.health import Heartbeat, check_heartbeat, clear_heartbeat, heartbeat_path, write_heartbeat
from alan.settings import load_settings
from tests.test_telegram import eventually

runner = CliRunner()


# The check ---------------------------------------------------------------------------------------------------------


def test_a_fresh_heartbeat_is_healthy(tmp_path: Path) -> None:
    write_heartbeat(heartbeat_path(tmp_path), now=1000.0)
    result = check_heartbeat(tmp_path, now=1010.0)
    assert result.healthy and result.reason == "heartbeat 10 s ago"


def test_a_stale_heartbeat_is_unhealthy_and_says_how_old(tmp_path: Path) -> None:
    write_heartbeat(heartbeat_path(tmp_path), now=1000.0)
    result = check_heartbeat(tmp_path, now=1061.0)
    assert not result.healthy
    assert result.reason == "the last heartbeat is 61 s old (more than 60 s): aLAN stopped or its event loop is stuck"
    assert check_heartbeat(tmp_path, now=1061.0, max_age_s=90).healthy


def test_a_missing_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    result = check_heartbeat(tmp_path / "never-created")
    assert not result.healthy
    assert "no heartbeat at" in result.reason and "starting (loading its models) or not running" in result.reason


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "is not a heartbeat aLAN wrote (no time in it)"),
        (b"\xff\xfe not text", "is not a heartbeat aLAN wrote (no time in it)"),
        (b'{"pid": 7}', "is not a heartbeat aLAN wrote (no time in it)"),
        (b'["time"]', "is not a heartbeat aLAN wrote (no time in it)"),
        (b'{"time": "soon"}', "is not a heartbeat aLAN wrote (no time in it)"),
        (b'{"time": NaN}', "its time is not a number"),
    ],
    ids=["empty", "binary", "no-time", "a-list", "not-a-number", "nan"],
)
def test_a_heartbeat_that_is_not_one_is_unhealthy(tmp_path: Path, content: bytes, reason: str) -> None:
    heartbeat_path(tmp_path).write_bytes(content)
    result = check_heartbeat(tmp_path)
    assert not result.healthy and reason in result.reason


def test_an_unreadable_heartbeat_is_unhealthy_with_the_reason(tmp_path: Path) -> None:
    heartbeat_path(tmp_path).mkdir()  # tests run as root, which reads any file: a folder can't be read as one
    result = check_heartbeat(tmp_path)
    assert not result.healthy
    assert result.reason == f"can't read the heartbeat {heartbeat_path(tmp_path)}: Is a directory"


def test_a_heartbeat_from_far_in_the_future_is_unhealthy(tmp_path: Path) -> None:
    write_heartbeat(heartbeat_path(tmp_path), now=1000.0)
    assert check_heartbeat(tmp_path, now=995.0).healthy  # a clock a little behind is no fault
    result = check_heartbeat(tmp_path, now=900.0)
    assert not result.healthy and "100 s in the future" in result.reason


def test_each_host_has_its_own_heartbeat(tmp_path: Path) -> None:
    # Replicas sharing one data volume: one replica's beat must not make another, hung, look healthy.
    write_heartbeat(heartbeat_path(tmp_path, "replica-1"), now=1000.0)
    assert check_heartbeat(tmp_path, now=1001.0, host="replica-1").healthy
    assert not check_heartbeat(tmp_path, now=1001.0, host="replica-2").healthy
    assert heartbeat_path(tmp_path, "../../etc/passwd").parent == tmp_path  # a host name can't leave the folder


# Writing -----------------------------------------------------------------------------------------------------------


def test_the_heartbeat_is_owner_only_in_an_owner_only_folder_and_replaced_atomically(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = heartbeat_path(data)
    write_heartbeat(path, now=1.0)
    write_heartbeat(path, now=2.0)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700  # created for it (with PostgreSQL nothing else makes it)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"time": 2.0, "pid": os.getpid()}
    assert [entry.name for entry in data.iterdir()] == [path.name]  # no temporary file left behind


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = heartbeat_path(tmp_path)
    (path / "occupied").mkdir(parents=True)  # a non-empty folder where the file goes: the rename fails
    with pytest.raises(OSError):
        write_heartbeat(path)
    assert [entry.name for entry in tmp_path.iterdir()] == [path.name]


def test_clearing_removes_this_hosts_heartbeat_only(tmp_path: Path) -> None:
    write_heartbeat(heartbeat_path(tmp_path))
    write_heartbeat(heartbeat_path(tmp_path, "another-host"))
    clear_heartbeat(tmp_path)
    clear_heartbeat(tmp_path)  # nothing to clear: no error
    assert [entry.name for entry in tmp_path.iterdir()] == [heartbeat_path(tmp_path, "another-host").name]


async def test_the_heartbeat_beats_until_stopped_then_is_gone(tmp_path: Path) -> None:
    heartbeat = Heartbeat(tmp_path, interval_s=0.05).start()
    await eventually(heartbeat.path.exists)
    first = json.loads(heartbeat.path.read_text())["time"]
    await eventually(lambda: json.loads(heartbeat.path.read_text())["time"] > first)
    await heartbeat.stop()
    assert not heartbeat.path.exists()  # stopped on purpose: no heartbeat, rather than one going stale
    await asyncio.sleep(0.15)
    assert not heartbeat.path.exists()  # and nothing beats any more


async def test_a_blocked_event_loop_lets_the_heartbeat_go_stale(tmp_path: Path) -> None:
    heartbeat = Heartbeat(tmp_path, interval_s=0.05).start()
    try:
        await eventually(heartbeat.path.exists)
        time.sleep(0.6)  # a blocking call on the loop: nothing else runs meanwhile  # noqa: ASYNC251
        assert not check_heartbeat(tmp_path, max_age_s=0.4).healthy
        await asyncio.sleep(0.15)  # the loop runs again: so do the beats
        assert check_heartbeat(tmp_path, max_age_s=0.4).healthy
    finally:
        await heartbeat.stop()


async def test_a_heartbeat_that_cant_be_written_is_said_once_and_beats_again_when_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "data"
    blocked.write_text("a file where the data folder should be")
    heartbeat = Heartbeat(blocked, interval_s=0.02)
    with caplog.at_level(logging.INFO, logger="alan.health"):
        heartbeat.start()
        try:
            await asyncio.sleep(0.2)  # about ten beats, all failing
            warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
            assert len(warnings) == 1 and "Can't write the heartbeat" in warnings[0].getMessage()
            blocked.unlink()
            await eventually(heartbeat.path.exists)
            assert any("written again" in record.getMessage() for record in caplog.records)
        finally:
            await heartbeat.stop()


# The command -------------------------------------------------------------------------------------------------------


def test_alan_health_exits_0_on_a_fresh_heartbeat(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_DATA_DIR", str(clean_env / "data"))
    write_heartbeat(heartbeat_path(clean_env / "data"))
    result = runner.invoke(app, ["health"])
    assert result.exit_code == 0, result.output
    assert result.output == "healthy: heartbeat 0 s ago\n"


@pytest.mark.parametrize("age", [None, 3600.0], ids=["missing", "stale"])
def test_alan_health_exits_1_with_one_line_of_reason(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, age: float | None
) -> None:
    monkeypatch.setenv("ALAN_DATA_DIR", str(clean_env / "a-data-folder-with-a-rather-long-name-to-tempt-wrapping"))
    if age is not None:
        write_heartbeat(
            heartbeat_path(clean_env / "a-data-folder-with-a-rather-long-name-to-tempt-wrapping"), now=time.time() - age
        )
    result = runner.invoke(app, ["health"])
    assert result.exit_code == 1
    [line] = result.output.splitlines()  # one line, however long: it is what `docker inspect` shows
    assert line.startswith("unhealthy: ") and ("no heartbeat" in line if age is None else "3600 s old" in line)


def test_alan_health_honours_max_age(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_DATA_DIR", str(clean_env))
    write_heartbeat(heartbeat_path(clean_env), now=time.time() - 100)
    assert runner.invoke(app, ["health"]).exit_code == 1
    assert runner.invoke(app, ["health", "--max-age", "300"]).exit_code == 0


def test_alan_health_with_bad_settings_is_unhealthy_not_exit_2(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Docker reserves a health check's exit code 2; the variable is named, the secret isn't shown.
    monkeypatch.setenv("ALAN_DEVICE", "tpu")
    monkeypatch.setenv("TELEGRAM_TOKEN", "123:top-secret")
    result = runner.invoke(app, ["health"])
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("unhealthy: Invalid settings:") and "ALAN_DEVICE" in line and "top-secret" not in line


# The app writes it ------------------------------------------------------------------------------------------------


class FakeConversation:
    closed = False

    async def aclose(self) -> None:
        self.closed = True


def test_alan_run_beats_while_serving_and_not_with_an_old_processs_beat_while_loading(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = clean_env / "data"
    write_heartbeat(heartbeat_path(data), now=time.time() - 5)  # the last process's, dead 5 s ago
    seen: dict[str, Any] = {}
    conversation = FakeConversation()

    def build_conversation(settings: object) -> FakeConversation:
        # Loading the models: the old beat must not vouch for this process yet.
        seen["loading"] = check_heartbeat(data).healthy
        return conversation

    async def serve(settings: object, conversation: object, scheduler: object) -> None:
        await eventually(lambda: heartbeat_path(data).exists())
        seen["serving"] = check_heartbeat(data, max_age_s=2).healthy
        seen["pid"] = json.loads(heartbeat_path(data).read_text())["pid"]
        seen["mode"] = stat.S_IMODE(heartbeat_path(data).stat().st_mode)

    monkeypatch.setattr("alan.engine_factory.build_conversation", build_conversation)
    monkeypatch.setattr(alan_app, "_platform_server", lambda platform: serve)
    monkeypatch.setattr(alan_app, "freeze_long_lived", lambda: None)  # gc.freeze would outlive this test
    alan_app.run_platforms(load_settings(telegram_token="123:abc", data_dir=data))
    assert seen == {"loading": False, "serving": True, "pid": os.getpid(), "mode": 0o600}
    assert not heartbeat_path(data).exists()  # stopped: no heartbeat left to go stale
    assert conversation.closed
