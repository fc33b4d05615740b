"""`alan talk`, `alan say` and `alan voice` through the real CLI, on tiny models and a local Ollama server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alan.cli import app
from engine.audio import CSM_RATE, decode_audio, encode_wav
from engine.tts import tone
from tests.conftest import espeak, fake_ollama_in_thread
from tests.fakes.ollama_server import FakeOllama

MODEL = "llama3.2:3b"
runner = CliRunner()


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    yield from fake_ollama_in_thread([MODEL])


@pytest.fixture
def env(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tiny_csm_dir: Path, tiny_whisper_dir: Path, ollama: FakeOllama
) -> Path:
    monkeypatch.setenv("ALAN_TTS_MODEL", str(tiny_csm_dir))
    monkeypatch.setenv("ALAN_STT_MODEL", str(tiny_whisper_dir))
    monkeypatch.setenv("ALAN_LLM_MODEL", MODEL)
    monkeypatch.setenv("OLLAMA_HOST", ollama.host)
    monkeypatch.setenv("ALAN_DEVICE", "cpu")
    monkeypatch.setenv("COLUMNS", "200")
    return clean_env


def test_talk_with_text_writes_the_spoken_reply_and_remembers(env: Path, ollama: FakeOllama) -> None:
    ollama.script("Hello there. Nice to meet you.")
    result = runner.invoke(app, ["talk", "--text", "hello", "-o", "reply.ogg"])
    assert result.exit_code == 0, result.output
    assert "aLAN: Hello there." in result.output and "Nice to meet you." in result.output
    assert "Timings:" in result.output and "first_audio_s" in result.output
    reply = decode_audio(env / "reply.ogg", CSM_RATE)
    assert len(reply) > 0

    ollama.script("You said hello.")
    result = runner.invoke(app, ["talk", "--text", "what did I say", "-o", "second.wav"])
    assert result.exit_code == 0, result.output
    assert (env / "second.wav").read_bytes()[:4] == b"RIFF"
    history = [(m["role"], m["content"]) for m in ollama.chat_requests[-1]["messages"][1:]]
    assert history[:2] == [("user", "hello"), ("assistant", "Hello there. Nice to meet you.")]


def test_talk_with_silent_audio_says_it_heard_nothing(env: Path) -> None:
    (env / "silence.wav").write_bytes(encode_wav(np.zeros(2 * CSM_RATE, dtype=np.float32), CSM_RATE))
    result = runner.invoke(app, ["talk", "silence.wav"])
    assert result.exit_code == 1
    assert "didn't catch that" in result.output


def test_talk_refuses_bad_arguments(env: Path) -> None:
    assert runner.invoke(app, ["talk"]).exit_code == 2
    assert runner.invoke(app, ["talk", "--text", "hi", "-o", "reply.mp3"]).exit_code == 2
    result = runner.invoke(app, ["talk", "missing.ogg"])
    assert result.exit_code == 2 and "No such file" in result.output


def test_say_speaks_the_text_as_is(env: Path, ollama: FakeOllama) -> None:
    result = runner.invoke(app, ["say", "Good morning. How did you sleep?", "-o", "out.wav"])
    assert result.exit_code == 0, result.output
    assert len(decode_audio(env / "out.wav", CSM_RATE)) > 0
    assert ollama.chat_requests == []  # no LLM involved


@pytest.fixture
def tone_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch, ollama: FakeOllama) -> Path:
    """The tone synthesizer: no speech model at all."""
    monkeypatch.setenv("ALAN_TTS_BACKEND", "tone")
    monkeypatch.setenv("ALAN_LLM_MODEL", MODEL)
    monkeypatch.setenv("OLLAMA_HOST", ollama.host)
    monkeypatch.setenv("ALAN_DEVICE", "cpu")
    monkeypatch.setenv("COLUMNS", "200")
    return clean_env


@pytest.mark.parametrize("suffix", [".wav", ".ogg"])
@pytest.mark.parametrize("rate", [tone.SAMPLE_RATE, 16_000], ids=["tone-as-shipped", "16kHz"])
@pytest.mark.parametrize("command", [["say", "Good morning."], ["talk", "--text", "hello"]], ids=["say", "talk"])
def test_the_reply_is_written_at_the_rate_it_was_made(
    tone_env: Path, ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch, command: list[str], rate: int, suffix: str
) -> None:
    """A synthesizer whose rate is not CSM's 24 kHz: the file lasts exactly as long as the audio made."""
    monkeypatch.setattr(tone, "SAMPLE_RATE", rate)  # the tone backend's chunks and capabilities now say `rate`
    ollama.script("Good morning.")
    result = runner.invoke(app, [*command, "-o", f"reply{suffix}"])
    assert result.exit_code == 0, result.output
    made = len(tone.tone_speech("Good morning.", tone.DEFAULT_PITCH_HZ)) / rate
    written = decode_audio(tone_env / f"reply{suffix}", 48_000)
    assert len(written) / 48_000 == pytest.approx(made, abs=0.025)  # Opus: within a frame or so
    assert f"Wrote {made:.1f} s of speech" in result.output


def test_voice_clone_list_use_and_delete(env: Path) -> None:
    espeak("This is my voice. I am reading a few sentences so that you can learn how I sound.", env / "me.wav")
    result = runner.invoke(
        app, ["voice", "clone", "me.wav", "--name", "me", "--transcript", "This is my voice.", "--yes"]
    )
    assert result.exit_code == 0, result.output
    assert "saved and active" in result.output
    listed = runner.invoke(app, ["voice", "list"])
    assert "* me" in listed.output

    said = runner.invoke(app, ["say", "Hello.", "--voice", "me", "-o", "hello.ogg"])
    assert said.exit_code == 0, said.output
    unknown = runner.invoke(app, ["say", "Hello.", "--voice", "nobody", "-o", "hello.ogg"])
    assert unknown.exit_code == 1 and "no voice called" in unknown.output

    again = runner.invoke(app, ["voice", "clone", "me.wav", "--name", "me", "--transcript", "Again.", "--yes"])
    assert again.exit_code == 1 and "already have a voice" in again.output

    # A second voice becomes the active one; `use` and `rename` work by name.
    second = runner.invoke(app, ["voice", "clone", "me.wav", "--name", "other", "--transcript", "Mine.", "--yes"])
    assert second.exit_code == 0, second.output
    assert "* other" in runner.invoke(app, ["voice", "list"]).output
    used = runner.invoke(app, ["voice", "use", "me"])
    assert used.exit_code == 0 and "now answers you in “me”" in used.output
    assert "* me" in runner.invoke(app, ["voice", "list"]).output
    renamed = runner.invoke(app, ["voice", "rename", "me", "Ann's voice"])
    assert renamed.exit_code == 0 and "to “Ann's voice”" in renamed.output
    assert "* Ann's voice" in runner.invoke(app, ["voice", "list"]).output
    taken = runner.invoke(app, ["voice", "rename", "other", "Ann's voice"])
    assert taken.exit_code == 1 and "already have a voice" in taken.output
    missing = runner.invoke(app, ["voice", "use", "nobody"])
    assert missing.exit_code == 1 and "no voice called" in missing.output

    assert runner.invoke(app, ["voice", "delete", "Ann's voice"]).exit_code == 0
    assert runner.invoke(app, ["voice", "delete", "other"]).exit_code == 0
    assert "No voices yet" in runner.invoke(app, ["voice", "list"]).output


def test_voice_clone_without_consent_is_refused(env: Path) -> None:
    espeak("This is my voice. I am reading a few sentences so that you can learn how I sound.", env / "me.wav")
    result = runner.invoke(
        app, ["voice", "clone", "me.wav", "--name", "me", "--transcript", "This is my voice."], input="n\n"
    )
    assert result.exit_code == 1 and "consent" in result.output
    assert "No voices yet" in runner.invoke(app, ["voice", "list"]).output


def test_missing_tts_model_says_how_to_get_it(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_TTS_MODEL", str(env / "no-such-model"))
    result = runner.invoke(app, ["say", "Hello.", "-o", "out.ogg"])
    assert result.exit_code == 1
    assert "ALAN_TTS_MODEL" in result.output


# Bad input is refused before any model work, in words, never as a traceback ---------------------------------


@pytest.mark.parametrize("command", [["talk", "--text", "hello"], ["say", "Hello."]])
def test_an_output_path_that_cannot_be_written_is_refused_first(
    env: Path, ollama: FakeOllama, command: list[str]
) -> None:
    (env / "notes.txt").write_text("a file")
    (env / "replies").mkdir()
    refused = {
        "missing/dir/reply.ogg": "doesn't exist",
        "notes.txt/reply.ogg": "is a file",
        "replies": "must end in .ogg or .wav",
        "reply.mp3": "must end in .ogg or .wav",
    }
    for output, reason in refused.items():
        result = runner.invoke(app, [*command, "-o", output])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (output, result.exception)
        assert reason in " ".join(result.output.split()), output
    assert ollama.chat_requests == []  # no turn ran
    assert not (env / "data").exists()  # nor was the database even opened


def test_a_wrong_stt_model_is_a_message_not_a_traceback(
    env: Path, monkeypatch: pytest.MonkeyPatch, speech_wav: Path
) -> None:
    monkeypatch.setenv("ALAN_STT_MODEL", str(env / "no-such-whisper"))
    for command in (["talk", str(speech_wav)], ["voice", "clone", str(speech_wav), "--name", "me", "--yes"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (command, result.exception)
        output = " ".join(result.output.split())
        assert "speech recognition isn't available" in output and "no-such-whisper" in output


def test_voice_clone_checks_the_name_before_any_model_work(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    espeak("This is my voice. I am reading a few sentences so that you can learn how I sound.", env / "me.wav")
    clone = ["voice", "clone", "me.wav", "--transcript", "This is my voice.", "--yes"]
    assert runner.invoke(app, [*clone, "--name", "me"]).exit_code == 0
    # With no model that could load, only a check made before loading can answer.
    monkeypatch.setenv("ALAN_TTS_MODEL", str(env / "no-such-model"))
    monkeypatch.setenv("ALAN_STT_MODEL", str(env / "no-such-whisper"))
    taken = runner.invoke(app, [*clone, "--name", " me "])
    assert taken.exit_code == 1 and "already have a voice called “me”" in taken.output
    malformed = runner.invoke(app, [*clone, "--name", "<script>"])
    assert malformed.exit_code == 1 and "A voice name is 1–40 letters" in malformed.output
    assert "ALAN_TTS_MODEL" not in taken.output + malformed.output


def test_say_uses_the_current_transformers_api(env: Path) -> None:
    """No deprecation warning from transformers: each one is an argument that stops working in a later release."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["say", "Good morning.", "-o", "out.ogg"])
    assert result.exit_code == 0, result.output
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning | FutureWarning)]
    assert [f"{w.filename}:{w.lineno}: {w.message}" for w in deprecations] == []
