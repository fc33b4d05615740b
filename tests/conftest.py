"""Shared fixtures. Tests never touch the network: hub access is switched off before anything imports it."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import numpy as np

    from tests.fakes.ollama_server import FakeOllama

os.environ["HF_HUB_OFFLINE"] = "1"
# Started in the background by a shell without job control, the tests inherit SIGINT ignored, and so would the
# `alan run` processes they start and stop with SIGINT (Ctrl+C): restored here, the children get the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SETTING_VARIABLES = (
    "ALAN_DATA_DIR",
    "ALAN_DATABASE_URL",
    "ALAN_STT_MODEL",
    "ALAN_TTS_MODEL",
    "ALAN_TTS_BACKEND",
    "ALAN_TTS_MAX_BATCH",
    "ALAN_TTS_PREFILL_CHUNK",
    "ALAN_TTS_WEIGHTS",
    "ALAN_TTS_CUDA_GRAPHS",
    "ALAN_LLM_MODEL",
    "ALAN_LLM_BACKEND",
    "ALAN_LLM_BASE_URL",
    "ALAN_LLM_API_KEY",
    "OLLAMA_HOST",
    "ALAN_OLLAMA_HOST",
    "ALAN_DEVICE",
    "ALAN_MAX_AUDIO_SECONDS",
    "ALAN_MAX_AUDIO_BYTES",
    "ALAN_LOG_LEVEL",
    "DISCORD_TOKEN",
    "TELEGRAM_TOKEN",
    "TELEGRAM_API_URL",
    "ALAN_TELEGRAM_ALLOWED_USERS",
    "ALAN_TELEGRAM_WEBHOOK_URL",
    "ALAN_TELEGRAM_WEBHOOK_PORT",
    "ALAN_TELEGRAM_WEBHOOK_SECRET",
    "ALAN_DISCORD_GUILD_IDS",
    "ALAN_DISCORD_SHARDS",
    "ALAN_DISCORD_SHARD_COUNT",
    "ALAN_SPEECH_URL",
    "ALAN_BOT_NAME",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
)


@pytest.fixture(autouse=True)
def logging_put_back() -> Iterator[None]:
    """The root logger as it was before each test. A CLI command run in-process adds its handler on the stream of
    that moment (the runner's, soon closed): left there, every later record is a "Logging error" on stderr."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No aLAN variable set and a working directory without a `.env`: settings start from their defaults."""
    for name in SETTING_VARIABLES:
        # Set first, so that the removal is recorded: a variable a command sets (HF_TOKEN from `.env`) goes after.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def duration_seconds(audio: np.ndarray, sample_rate: int) -> float:
    return float(audio.shape[-1]) / sample_rate


def espeak(text: str, path: Path, *, voice: str = "en", words_per_minute: int = 160) -> Path:
    """Real synthetic speech as a WAV file, made by espeak-ng."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: `apt-get install espeak-ng` (the CI script does this)")
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About three seconds of English speech."""
    return espeak(
        "Hello there, this is a test of the audio pipeline.",
        tmp_path_factory.mktemp("speech") / "hello.wav",
    )


# Discord voice tests: real speech as Discord sends it, a second speaker, and a transport key.
@pytest.fixture(scope="module")
def speech(speech_wav: Path):  # type: ignore[no-untyped-def]
    from tests.discord_packets import Speech  # imported here: only the Discord tests need davey and Opus

    return Speech(speech_wav)


@pytest.fixture(scope="module")
def other_speech(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.discord_packets import Speech

    wav = espeak("Seven green frogs jumped over a lazy river.", tmp_path_factory.mktemp("b") / "b.wav", voice="en+f3")
    return Speech(wav)


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def dave_group():  # type: ignore[no-untyped-def]
    """A DAVE group formed by a local voice server: (server, speaker A's session, the bot's session)."""
    from tests.discord_packets import dave_call

    return dave_call()


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'alan.db'}"


@pytest.fixture(scope="session")
def postgres_server():  # type: ignore[no-untyped-def]
    """PostgreSQL for the session: CI's (ALAN_TEST_POSTGRES_URL) or a throwaway one (see tests/postgres.py)."""
    from tests.postgres import PostgresMissingError, server_for_tests

    try:
        with server_for_tests() as server:
            yield server
    except PostgresMissingError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A new, empty PostgreSQL database for one test, dropped after it. A store test runs on both databases by
    overriding `database_url` with `tests.postgres.database_url_for` (parametrized over `DATABASES`)."""
    with postgres_server.database() as url:
        yield url


@pytest.fixture(scope="session")
def tiny_csm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CSM-1B-architecture model + processor, saved the way real weights are."""
    from tests.tiny_models.csm import build_tiny_csm

    return build_tiny_csm(tmp_path_factory.mktemp("tiny-csm"))


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Whisper converted to CTranslate2, loadable by faster-whisper like a real one."""
    from tests.tiny_models.whisper import build_tiny_whisper

    return build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="session")
def tiny_speech(tiny_csm_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny CSM loaded once through the production loader, in fp32 (the parity tests compare exact codes)."""
    from engine.tts.csm import CsmSpeech

    return CsmSpeech.load(str(tiny_csm_dir), device="cpu", weights="fp32")


def espeak_ogg(text: str, tmp_path: Path) -> bytes:
    """Speech as a Telegram-style OGG/Opus voice note."""
    from engine.audio import CSM_RATE, decode_audio, encode_ogg_opus

    wav = espeak(text, tmp_path / "speech.wav")
    return encode_ogg_opus(decode_audio(wav, CSM_RATE), CSM_RATE)


def fake_ollama_in_thread(models: list[str]) -> Iterator[FakeOllama]:
    """A fake Ollama on its own event-loop thread, for code that runs `asyncio.run` in the test's thread."""
    from tests.fakes.local_server import serve_in_thread
    from tests.fakes.ollama_server import FakeOllama

    yield from serve_in_thread(FakeOllama(models=models))


@pytest.fixture(scope="session")
def whisper(tiny_whisper_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny Whisper, loaded once, keeping whatever it decodes (see `accept_any_text`)."""
    from tests.engine_harness import make_whisper

    return make_whisper(tiny_whisper_dir)


@pytest.fixture(scope="session")
def real_whisper_dir() -> Path:
    """The real Whisper base, joined from its two PyPI packages (the dev extra installs them)."""
    from tests.real_whisper import RealWhisperMissingError, assemble_whisper_base

    try:
        return assemble_whisper_base()
    except RealWhisperMissingError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def real_whisper(real_whisper_dir: Path):  # type: ignore[no-untyped-def]
    """The production transcriber with its production defaults (beam, temperatures, filter), on 2 threads."""
    from engine.stt import WhisperTranscriber

    whisper = WhisperTranscriber(str(real_whisper_dir), "cpu", cpu_threads=2)
    whisper.load()
    return whisper


@pytest.fixture
async def ollama():  # type: ignore[no-untyped-def]
    """A local server speaking Ollama's HTTP API, with the test model pulled."""
    from tests.engine_harness import LLM_MODEL
    from tests.fakes.ollama_server import FakeOllama

    async with FakeOllama(models=[LLM_MODEL]) as server:
        yield server


@pytest.fixture
def store(database_url: str):  # type: ignore[no-untyped-def]
    from engine.store.database import open_database
    from engine.store.repository import Store

    return Store(open_database(database_url))


def _tone_conversation(store, whisper, ollama):  # type: ignore[no-untyped-def]
    from engine.conversation import Conversation
    from engine.llm import OllamaChat
    from engine.tts.tone import ToneSynthesizer
    from tests.engine_harness import LLM_MODEL

    llm = OllamaChat(LLM_MODEL, ollama.host, first_token_timeout=30, token_timeout=30)
    return Conversation(store, whisper, ToneSynthesizer(), llm, max_audio_seconds=60, max_audio_bytes=20 * 1024 * 1024)


@pytest.fixture
async def conversation(store, whisper, ollama):  # type: ignore[no-untyped-def]
    """The real conversation engine on the tone synthesizer (no torch model: the platforms' tests are about the
    platforms), the tiny Whisper, a migrated database and the fake Ollama."""
    made = _tone_conversation(store, whisper, ollama)
    yield made
    await made._keeper.aclose()  # a memory extraction still under way ends with the test, not with its loop


@pytest.fixture
async def other_conversation(database_url: str, whisper, ollama):  # type: ignore[no-untyped-def]
    """A second process's engine beside `conversation`: its own store, connections and memory worker on the same
    database, as two aLAN processes sharing PostgreSQL have."""
    from engine.store.database import open_database
    from engine.store.repository import Store

    made = _tone_conversation(Store(open_database(database_url)), whisper, ollama)
    yield made
    await made._keeper.aclose()


@pytest.fixture
async def csm_conversation(store, whisper, tiny_speech, tiny_csm_dir: Path, ollama):  # type: ignore[no-untyped-def]
    """The real conversation engine on the tiny CSM, for tests of what CSM itself does in a conversation."""
    from tests.engine_harness import make_conversation

    made = make_conversation(store, whisper, tiny_speech, tiny_csm_dir, ollama.host)
    yield made
    await made._keeper.aclose()


# Discord slash-command tests: the real command cog on the real engine, with interaction doubles ---------------

DISCORD_CLIP_TEXT = "This is my voice. I am reading a few sentences so that you can learn how I sound."


@pytest.fixture
def sessions(conversation):  # type: ignore[no-untyped-def]
    from alan.scheduler import TurnScheduler
    from bot.discord.app import VoiceSessions

    return VoiceSessions(conversation, TurnScheduler(), rejoin_delays=())


@pytest.fixture
def cog(conversation, sessions):  # type: ignore[no-untyped-def]
    from bot.discord.commands import AlanCommands

    return AlanCommands(conversation, sessions)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return espeak_ogg(DISCORD_CLIP_TEXT, tmp_path_factory.mktemp("clip"))


@pytest.fixture
def guild():  # type: ignore[no-untyped-def]
    from tests.discord_doubles import FakeGuild

    return FakeGuild()


@pytest.fixture
def ann(guild):  # type: ignore[no-untyped-def]
    from tests.discord_doubles import FakeMember

    return guild.add(FakeMember("ann"))
