"""Models ahead of time: `alan models download` against a local Hugging Face Hub, Ollama and OpenAI-compatible server
that speak the real protocols, the start-up warning, and the engine's "downloading now" when a load will fetch.

conftest.py switches the hub off (HF_HUB_OFFLINE=1) for the whole run; the `hub` fixture switches it back on for
its test only, pointed at the fake, with an empty cache of the test's own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alan.cli import app
from alan.llm_pull import PullProgress, prepare_llm
from alan.model_download import missing_speech_models, warn_missing_models
from alan.settings import load_settings
from engine.model_files import cached_path, csm_model, whisper_model
from tests.conftest import fake_ollama_in_thread
from tests.fakes.hf_hub_server import FakeHub
from tests.fakes.local_server import serve_in_thread

runner = CliRunner()

WHISPER_REPO = "alan-tests/whisper-tiny"
CSM_REPO = "alan-tests/csm-tiny"
GATED_REPO = "alan-tests/csm-gated"
TOKEN = "hf_aLANtestTOKENwithACCESS"
# What a real CSM repository holds besides the transformers files: the original checkpoint and sample prompts.
CSM_EXTRAS = {"ckpt.pt": b"\0" * 4096, "prompts/conversational_a.wav": b"RIFF" + b"\0" * 2048, "README.md": b"# CSM"}


@pytest.fixture
def hub(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tiny_whisper_dir: Path, tiny_csm_dir: Path
) -> Iterator[FakeHub]:
    """The fake hub with a Whisper-like, a CSM-like and a gated CSM-like repository; the hub on, for this test."""
    import transformers.utils.hub as transformers_hub
    from huggingface_hub import constants, hf_api  # hf_api's shared client reads the endpoint when first imported

    fake = FakeHub()
    fake.add_repo(WHISPER_REPO, {**_files(tiny_whisper_dir), "README.md": b"# tiny"})
    fake.add_repo(CSM_REPO, {**_files(tiny_csm_dir), **CSM_EXTRAS})
    fake.add_repo(GATED_REPO, {**_files(tiny_csm_dir), **CSM_EXTRAS}, gated=True)
    for server in serve_in_thread(fake):
        for name, value in server.endpoint_constants().items():
            monkeypatch.setattr(constants, name, value)
        monkeypatch.setattr(hf_api.api, "endpoint", server.host)  # transformers lists files through it
        monkeypatch.setattr(transformers_hub, "_hf_api", None)  # and its own client, made on first use, keeps one
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(clean_env / "hf-cache"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(clean_env / "no-saved-token"))  # no `hf auth login` here
        monkeypatch.setenv("ALAN_STT_MODEL", WHISPER_REPO)
        monkeypatch.setenv("ALAN_TTS_MODEL", CSM_REPO)
        monkeypatch.setenv("ALAN_LOG_LEVEL", "WARNING")  # the fake's access log is not the command's output
        yield server


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def download(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["models", "download", *args])
    assert "Traceback" not in result.output, result.output
    if result.exception is not None:  # a message and an exit code, never an exception
        assert isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, " ".join(result.output.split())


# Speech models from the hub ------------------------------------------------------------------------------------


def test_download_fetches_what_the_loaders_read_and_they_find_it_offline(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings()
    assert {model.repo_id for model in missing_speech_models(settings)} == {WHISPER_REPO, CSM_REPO}

    code, output = download("--only", "stt", "--only", "tts")
    assert code == 0, output
    assert f"Speech recognition: Whisper `{WHISPER_REPO}`" in output and f"Speech synthesis: CSM `{CSM_REPO}`" in output
    assert output.count("✓ downloaded to") == 2
    assert "downloading 5 files" in output  # config, preprocessor config, model.bin, tokenizer, vocabulary
    # Only the files the loaders read: not the original checkpoint, the prompts, the READMEs, the tiny model's marker.
    assert hub.downloads(CSM_REPO) == [
        *("chat_template.jinja", "config.json", "generation_config.json", "model.safetensors"),
        *("processor_config.json", "tokenizer.json", "tokenizer_config.json"),
    ]
    assert hub.downloads(WHISPER_REPO) == [
        *("config.json", "model.bin", "preprocessor_config.json", "tokenizer.json", "vocabulary.json")
    ]

    # The cache check of the loaders, the doctor and the start-up warning now finds both.
    whisper, csm = whisper_model(WHISPER_REPO), csm_model(CSM_REPO)
    assert whisper is not None and csm is not None
    assert cached_path(whisper) is not None and cached_path(csm) is not None
    assert missing_speech_models(settings) == []
    from alan.doctor import Status, check_stt_model, check_tts_model

    assert check_stt_model(settings).status is Status.OK and check_tts_model(settings).status is Status.OK

    # A second run fetches nothing, and says so.
    fetched = len(hub.fetched)
    code, output = download("--only", "stt", "--only", "tts")
    assert code == 0 and output.count("✓ already downloaded") == 2, output
    assert len(hub.fetched) == fetched

    # With the hub switched off again, the real loaders load from that cache, without a word about downloading.
    from huggingface_hub import constants

    from engine.stt import WhisperTranscriber
    from engine.tts.csm import CsmSpeech

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with caplog.at_level(logging.WARNING):
        WhisperTranscriber(WHISPER_REPO, "cpu", cpu_threads=1).load()
        CsmSpeech.load(CSM_REPO, "cpu", weights="fp32")
    assert not [record for record in caplog.records if "downloading" in record.getMessage()]


def test_a_gated_model_without_a_token_says_how_to_get_access(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_TTS_MODEL", GATED_REPO)
    code, output = download("--only", "tts")
    assert code == 1
    assert (
        f"{GATED_REPO} is gated: accept the licence at https://huggingface.co/{GATED_REPO} while logged in, "
        "then set HF_TOKEN (in .env) or run `hf auth login`"
    ) in output
    assert hub.downloads(GATED_REPO) == []


def test_a_gated_model_downloads_with_the_token_from_dot_env(
    hub: FakeHub, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.grant(TOKEN, GATED_REPO)
    monkeypatch.delenv("ALAN_TTS_MODEL")
    # In .env, not in the environment: huggingface_hub can't see it unless aLAN hands it over.
    (clean_env / ".env").write_text(f"ALAN_TTS_MODEL={GATED_REPO}\nHF_TOKEN={TOKEN}\n")
    code, output = download("--only", "tts")
    assert code == 0, output
    assert "✓ downloaded to" in output
    assert TOKEN not in output
    assert "model.safetensors" in hub.downloads(GATED_REPO)
    to_hub = [r for r in hub.requests if r.path.startswith(f"/{GATED_REPO}/resolve/")]
    assert to_hub and all(r.authorization == f"Bearer {TOKEN}" for r in to_hub)
    # The weights came from the CDN the hub redirected to, and the token did not follow them there.
    to_cdn = [r for r in hub.requests if r.path.startswith("/cdn/")]
    assert to_cdn and all(r.authorization is None for r in to_cdn)


def test_a_token_without_access_or_an_unknown_one_says_which(
    hub: FakeHub, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_token("hf_noAccessYet")
    monkeypatch.setenv("ALAN_TTS_MODEL", GATED_REPO)
    monkeypatch.setenv("HF_TOKEN", "hf_noAccessYet")
    code, output = download("--only", "tts")
    assert code == 1 and "the Hugging Face account of the token in use has no access to it yet" in output, output
    assert f"https://huggingface.co/{GATED_REPO}" in output and "hf_noAccessYet" not in output

    monkeypatch.setenv("HF_TOKEN", "hf_revoked")
    code, output = download("--only", "tts")
    assert code == 1 and "Hugging Face refused the token" in output and "settings/tokens" in output, output
    assert "hf_revoked" not in output


def test_a_model_that_is_not_on_the_hub_or_not_whisper(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_STT_MODEL", "alan-tests/no-such-model")
    code, output = download("--only", "stt")
    assert code == 1 and "There is no model alan-tests/no-such-model on Hugging Face" in output, output
    assert "ALAN_STT_MODEL" in output

    monkeypatch.setenv("ALAN_STT_MODEL", CSM_REPO)  # a repository, but not a CTranslate2 Whisper
    code, output = download("--only", "stt")
    assert code == 1 and f"{CSM_REPO} on Hugging Face has no model.bin" in output, output
    assert hub.downloads(CSM_REPO) == []


def test_offline_says_hf_hub_offline_and_a_cached_model_still_counts(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, output = download("--only", "stt")
    assert code == 1 and "HF_HUB_OFFLINE is set" in output and "ALAN_STT_MODEL" in output, output
    assert hub.requests == []  # not one request: offline means offline

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert download("--only", "stt")[0] == 0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, output = download("--only", "stt")
    assert code == 0 and "downloaded (" in output and "HF_HUB_OFFLINE is set" in output, output


def test_an_unreachable_hub_is_named_with_the_fix(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    for name in ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE"):  # the discard port: nothing listens
        monkeypatch.setattr(constants, name, getattr(constants, name).replace(hub.host, "http://127.0.0.1:9"))
    code, output = download("--only", "stt")
    assert code == 1 and "Can't reach Hugging Face at http://127.0.0.1:9" in output, output


def test_a_full_disk_is_said_before_downloading(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    code, output = download("--only", "tts")
    assert code == 1, output
    assert "only 1.0 kB is free there" in output and "HF_HUB_CACHE" in output
    assert hub.downloads(CSM_REPO) == []


def test_local_folders_and_the_tone_synthesizer_need_nothing(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tiny_whisper_dir: Path, tiny_csm_dir: Path
) -> None:
    monkeypatch.setenv("ALAN_STT_MODEL", str(tiny_whisper_dir))
    monkeypatch.setenv("ALAN_TTS_MODEL", str(tiny_csm_dir))
    code, output = download("--only", "stt", "--only", "tts")  # the hub is off (conftest): nothing is asked of it
    assert code == 0, output
    assert f"local folder {tiny_whisper_dir}: nothing to fetch" in output
    assert f"local folder {tiny_csm_dir}: nothing to fetch" in output
    assert missing_speech_models(load_settings()) == []

    monkeypatch.setenv("ALAN_TTS_BACKEND", "tone")
    code, output = download("--only", "tts")
    assert code == 0 and "needs no model" in output


def test_with_a_speech_service_this_machine_needs_no_tts_model_unless_asked(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALAN_SPEECH_URL", "http://speaker:secret@speech-head:8000/speech")
    code, output = download("--only", "tts")
    assert code == 0 and "needs no speech model" in output and "--speech-node" in output, output
    assert "secret" not in output and hub.downloads(CSM_REPO) == []
    assert [model.repo_id for model in missing_speech_models(load_settings())] == [WHISPER_REPO]

    code, output = download("--only", "tts", "--speech-node")
    assert code == 0 and "✓ downloaded to" in output, output


# The chat model ----------------------------------------------------------------------------------------------


def test_ollama_pulls_a_missing_model_with_progress(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for ollama in fake_ollama_in_thread(models=[]):
        monkeypatch.setenv("OLLAMA_HOST", ollama.host)
        monkeypatch.setenv("ALAN_LLM_MODEL", "llama3.2:1b")
        steps: list[PullProgress] = []
        outcome = prepare_llm(load_settings(), steps.append)
        assert outcome.ok and "pulled llama3.2:1b" in outcome.message, outcome.message
        assert [r.body for r in ollama.requests if r.path == "/api/pull"] == [
            {"model": "llama3.2:1b", "insecure": False, "stream": True}
        ]
        assert steps[0].status == "pulling manifest" and steps[-1].status == "success"
        weights = [step for step in steps if step.total == ollama.library["llama3.2:1b"]]
        done = [step.completed or 0 for step in weights]
        assert weights[0].status.startswith("pulling ") and done == sorted(done) and done[-1] == weights[0].total

        # Now Ollama has it: said at once, without pulling again.
        code, output = download("--only", "llm")
        assert code == 0 and "is up and has llama3.2:1b" in output, output
        assert len([r for r in ollama.requests if r.path == "/api/pull"]) == 1


def test_ollama_pull_through_the_command(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for ollama in fake_ollama_in_thread(models=[]):
        monkeypatch.setenv("OLLAMA_HOST", ollama.host)
        code, output = download("--only", "llm")
        assert code == 0 and "pulled llama3.2:3b" in output and "pulling manifest" in output, output
        assert "llama3.2:3b" in ollama.models


def test_ollama_cannot_pull_a_model_the_library_lacks(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for ollama in fake_ollama_in_thread(models=[]):
        monkeypatch.setenv("OLLAMA_HOST", ollama.host)
        monkeypatch.setenv("ALAN_LLM_MODEL", "no-such-model:7b")
        code, output = download("--only", "llm")
        assert code == 1, output
        assert "couldn't pull no-such-model:7b: pull model manifest: file does not exist" in output
        assert "https://ollama.com/library" in output


def test_ollama_not_running_is_said(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    code, output = download("--only", "llm")
    assert code == 1 and "ollama serve" in output, output


def test_an_openai_server_is_checked_and_says_how_to_load_a_model(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.openai_server import FakeOpenAI

    for server in serve_in_thread(FakeOpenAI(models=["gemma-3-270m"])):
        monkeypatch.setenv("ALAN_LLM_BACKEND", "openai")
        monkeypatch.setenv("ALAN_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("ALAN_LLM_MODEL", "gemma-3-270m")
        code, output = download("--only", "llm")
        assert code == 0 and "serves gemma-3-270m" in output, output

        monkeypatch.setenv("ALAN_LLM_MODEL", "qwen3-0.6b")
        code, output = download("--only", "llm")
        assert code == 1, output
        assert "can't pull models" in output and "vllm serve qwen3-0.6b" in output and "gemma-3-270m" in output
        assert [r.path for r in server.requests] == ["/v1/models", "/v1/models"]  # only asked, never told to load


# Never a silent download in the middle of a conversation -----------------------------------------------------


def test_start_up_warns_of_each_model_a_first_turn_would_download(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(clean_env / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with caplog.at_level(logging.WARNING, logger="alan.model_download"):
        warn_missing_models(load_settings())  # the defaults: Whisper small, sesame/csm-1b
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    assert "Whisper `small` (Systran/faster-whisper-small, about 485 MB) is not downloaded yet" in messages[0]
    assert "the first voice message will wait while it downloads" in messages[0]
    assert "CSM `sesame/csm-1b` (several GB) is not downloaded yet" in messages[1]
    assert all("run `alan models download`" in message for message in messages)
    assert not (clean_env / "empty-cache").exists()  # a look, not a download


def test_the_app_warns_at_start_up(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alan import app

    warned: list[object] = []
    monkeypatch.setattr("alan.model_download.warn_missing_models", warned.append)
    monkeypatch.setattr(app, "_serve_all", lambda *args: _done())
    app.run_platforms(load_settings(telegram_token="123:abc"))
    assert len(warned) == 1


async def _done() -> None:
    return None


def test_the_engine_says_when_a_load_downloads_and_the_turn_waits(
    hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    from engine.stt import WhisperTranscriber
    from engine.tts.csm_synthesizer import _load_csm

    with caplog.at_level(logging.WARNING, logger="engine.model_files"):
        WhisperTranscriber(WHISPER_REPO, "cpu", cpu_threads=1).load()
        _load_csm(CSM_REPO, "cpu", "fp32")
    messages = [record.getMessage() for record in caplog.records if record.name == "engine.model_files"]
    assert messages == [
        f"downloading Whisper `{WHISPER_REPO}` now, first use; this turn waits",
        f"downloading CSM `{CSM_REPO}` now, first use; this turn waits",
    ]
    assert "model.bin" in hub.downloads(WHISPER_REPO) and "model.safetensors" in hub.downloads(CSM_REPO)

    caplog.clear()  # loaded once, cached: the next loads say nothing
    with caplog.at_level(logging.WARNING, logger="engine.model_files"):
        WhisperTranscriber(WHISPER_REPO, "cpu", cpu_threads=1).load()
        _load_csm(CSM_REPO, "cpu", "fp32")
    assert [record for record in caplog.records if record.name == "engine.model_files"] == []
