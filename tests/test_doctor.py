"""`alan doctor` on wrong settings: each check says what is wrong and how to fix it, and never crashes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alan.cli import app
from alan.doctor import Status, check_database, check_device, check_stt_model, check_tts_model
from alan.settings import load_settings

runner = CliRunner()
ONLY_MODELS = ["doctor", "--skip", "ollama", "--skip", "platforms", "--skip", "opus", "--skip", "device"]


def test_a_tts_folder_that_does_not_exist_fails_with_its_path(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = clean_env / "models" / "csm-1b"
    monkeypatch.setenv("ALAN_TTS_MODEL", str(missing))
    check = check_tts_model(load_settings())
    assert check.status is Status.FAILED
    assert str(missing) in check.detail and "ALAN_TTS_MODEL" in check.fix

    result = runner.invoke(app, [*ONLY_MODELS, "--skip", "stt", "--skip", "database"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a message, not a traceback


def test_the_tone_synthesizer_needs_no_model(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_TTS_BACKEND", "tone")
    monkeypatch.setenv("ALAN_TTS_MODEL", str(clean_env / "no-such-csm-folder"))  # a CSM setting the tones don't use
    check = check_tts_model(load_settings())
    assert check.status is Status.OK
    assert "tone synthesizer" in check.detail and "needs no model" in check.detail
    assert "no-such-csm-folder" not in check.detail

    result = runner.invoke(app, [*ONLY_MODELS, "--skip", "stt", "--skip", "database"])
    assert result.exit_code == 0, result.output
    assert "needs no model" in result.output


def test_a_whisper_path_that_does_not_exist_fails(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = clean_env / "models" / "whisper-small"
    monkeypatch.setenv("ALAN_STT_MODEL", str(missing))
    check = check_stt_model(load_settings())
    assert check.status is Status.FAILED  # not "not downloaded yet": nothing would ever download it
    assert str(missing) in check.detail and "ALAN_STT_MODEL" in check.fix


def test_a_whisper_size_or_hub_id_is_downloaded_on_first_use(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_STT_MODEL", "alan-tests/whisper-never-downloaded")
    check = check_stt_model(load_settings())
    assert check.status is Status.MISSING and "not downloaded yet" in check.detail
    assert "Run `alan models download`" in check.fix
    monkeypatch.setenv("ALAN_STT_MODEL", "small")
    assert check_stt_model(load_settings()).status in (Status.MISSING, Status.OK)  # cached or not, never wrong


def test_a_csm_model_not_downloaded_yet_points_to_models_download(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALAN_TTS_MODEL", "alan-tests/csm-never-downloaded")
    check = check_tts_model(load_settings())
    assert check.status is Status.MISSING and "not downloaded yet" in check.detail
    assert "Run `alan models download`" in check.fix and "HF_TOKEN" in check.fix


def test_a_whisper_folder_without_its_config_fails(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tiny_whisper_dir: Path
) -> None:
    monkeypatch.setenv("ALAN_STT_MODEL", str(tiny_whisper_dir))
    assert check_stt_model(load_settings()).status is Status.OK

    broken = shutil.copytree(tiny_whisper_dir, clean_env / "whisper-without-config")
    (broken / "config.json").unlink()
    monkeypatch.setenv("ALAN_STT_MODEL", str(broken))
    check = check_stt_model(load_settings())
    assert check.status is Status.FAILED and "config.json" in check.detail


def test_a_csm_folder_must_hold_a_csm_model_with_weights(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tiny_csm_dir: Path, tiny_whisper_dir: Path
) -> None:
    monkeypatch.setenv("ALAN_TTS_MODEL", str(tiny_csm_dir))
    assert check_tts_model(load_settings()).status is Status.OK

    # A Whisper folder has a config.json too: a folder with "a config" is not yet a CSM model.
    monkeypatch.setenv("ALAN_TTS_MODEL", str(tiny_whisper_dir))
    check = check_tts_model(load_settings())
    assert check.status is Status.FAILED

    no_weights = shutil.copytree(tiny_csm_dir, clean_env / "csm-without-weights")
    for weights in no_weights.glob("*.safetensors"):
        weights.unlink()
    monkeypatch.setenv("ALAN_TTS_MODEL", str(no_weights))
    check = check_tts_model(load_settings())
    assert check.status is Status.FAILED and "weights" in check.detail

    other = shutil.copytree(tiny_csm_dir, clean_env / "not-csm")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    monkeypatch.setenv("ALAN_TTS_MODEL", str(other))
    check = check_tts_model(load_settings())
    assert check.status is Status.FAILED and "llama" in check.detail


def test_long_paths_are_printed_whole_when_not_a_terminal(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # CliRunner is no terminal: rich would assume 80 columns
    deep = clean_env / ("a-rather-long-folder-name-for-speech-models-" * 3) / "whisper"
    monkeypatch.setenv("ALAN_STT_MODEL", str(deep))
    result = runner.invoke(app, [*ONLY_MODELS, "--skip", "tts"])
    assert str(deep) in result.output
    assert "…" not in result.output


def test_the_cpu_chosen_on_purpose_is_ok(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_DEVICE", "cpu")
    check = check_device(load_settings())
    assert check.status is Status.OK and "CPU (as set" in check.detail


def test_no_gpu_on_auto_says_what_to_do(clean_env: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    check = check_device(load_settings())
    assert check.status is Status.MISSING and "ALAN_DEVICE=cpu" in check.fix


def test_a_missing_database_names_the_command_that_creates_it(clean_env: Path) -> None:
    check = check_database(load_settings())
    assert check.status is Status.MISSING
    assert "alan db upgrade" in check.fix
    assert not (clean_env / "data").exists()  # the check creates nothing


def test_a_data_dir_below_a_file_fails(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "notes.txt").write_text("not a folder")
    monkeypatch.setenv("ALAN_DATA_DIR", str(clean_env / "notes.txt" / "data"))
    check = check_database(load_settings())
    assert check.status is Status.FAILED
    assert "is a file" in check.detail and "ALAN_DATA_DIR" in check.fix


def test_a_corrupt_database_fails_in_words(clean_env: Path) -> None:
    (clean_env / "data").mkdir()
    (clean_env / "data" / "alan.db").write_bytes(b"this is not a database" * 100)
    check = check_database(load_settings())
    assert check.status is Status.FAILED
    assert "file is not a database" in check.detail and "sqlalche.me" not in check.detail
