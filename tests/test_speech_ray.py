"""The speech service on a real local Ray cluster: `alan speech serve` deploys the tiny CSM as a Ray Serve replica,
and aLAN processes speak through it at ALAN_SPEECH_URL.

One module-wide deployment (starting Ray and loading the replica takes ~15 s on two cores): a full turn from a bot
process through the replica; then the replica's process is killed mid-sentence, and the person gets the rest of
the answer in text, not a hang, while Ray Serve brings a new replica up for the next turn.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alan.cli import app
from engine.audio import CSM_RATE, decode_audio
from tests.conftest import fake_ollama_in_thread
from tests.engine_harness import LLM_MODEL
from tests.fakes.ollama_server import FakeOllama
from tests.speech_service_harness import free_port

pytest.importorskip("ray.serve", reason="Ray Serve comes with the dev extra: pip install -e '.[dev]'")

STARTUP_S = 240


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)


@pytest.fixture(scope="module")
def speech_url(tiny_csm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`alan speech serve` in its own process, on a local Ray cluster it starts, until the module ends."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("speech-node")
    environment = {
        **os.environ,
        "ALAN_TTS_MODEL": str(tiny_csm_dir),
        "ALAN_TTS_BACKEND": "csm",
        "ALAN_TTS_WEIGHTS": "fp32",
        "ALAN_TTS_MAX_BATCH": "2",
        "ALAN_DEVICE": "cpu",
        "ALAN_DATA_DIR": str(workdir / "data"),
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "alan.cli", "speech", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--replicas", str(REPLICAS)]  # two on the CPU: a forget request must reach both
    process = subprocess.Popen(
        command, cwd=workdir, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, output), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + STARTUP_S
    try:
        while not any("Speech service ready" in line for line in seen):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("`alan speech serve` did not come up:\n" + "".join(seen))
            try:
                seen.append(output.get(timeout=1))
            except queue.Empty:
                continue
        yield f"http://127.0.0.1:{port}/speech"
    finally:
        process.send_signal(signal.SIGTERM)  # it stops its application and its local cluster
        try:
            stopped = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            pytest.fail("`alan speech serve` did not stop on SIGTERM")
        assert stopped == 0, "".join(seen)


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    yield from fake_ollama_in_thread([LLM_MODEL])


REPLICAS = 2


def replica_pid(url: str) -> int:
    with urllib.request.urlopen(f"{url}/info", timeout=60) as answer:
        return int(json.load(answer)["replica"]["pid"])


def replica_pids(url: str) -> set[int]:
    """Every replica's process (Serve routes each request to one of them)."""
    pids: set[int] = set()
    deadline = time.monotonic() + 60
    while len(pids) < REPLICAS:
        assert time.monotonic() < deadline, f"only replicas {pids} answered"
        pids.add(replica_pid(url))
    return pids


def test_a_turn_from_a_bot_process_is_spoken_by_the_ray_replica(
    speech_url: str, tiny_csm_dir: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch, ollama: FakeOllama
) -> None:
    for name, value in {
        "ALAN_SPEECH_URL": speech_url,
        "ALAN_TTS_MODEL": str(tiny_csm_dir),  # the same model as the service's: checked before speaking
        "ALAN_LLM_MODEL": LLM_MODEL,
        "OLLAMA_HOST": ollama.host,
        "ALAN_DEVICE": "cpu",
        "COLUMNS": "200",
    }.items():
        monkeypatch.setenv(name, value)
    ollama.script("Hello there. Nice to meet you.")
    result = CliRunner().invoke(app, ["talk", "--text", "hello", "-o", "reply.ogg"])
    assert result.exit_code == 0, result.output
    assert "aLAN: Hello there." in result.output and "first_audio_s" in result.output
    assert "unavailable" not in result.output.lower()
    assert len(decode_audio(clean_env / "reply.ogg", CSM_RATE)) > 0


def test_a_forget_request_reaches_every_replica(speech_url: str) -> None:
    """/forget is routed to one replica; the others learn it from the ledger at their next health check (10 s)."""
    request = urllib.request.Request(
        f"{speech_url}/forget", data=b'{"voice_key": "voice-gone"}', headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 204
    forgotten: dict[int, int] = {}
    deadline = time.monotonic() + 90
    while len([pid for pid, count in forgotten.items() if count >= 1]) < 2:
        assert time.monotonic() < deadline, f"not every replica applied the forget request: {forgotten}"
        with urllib.request.urlopen(f"{speech_url}/info", timeout=60) as answer:
            replica = json.load(answer)["replica"]
        forgotten[replica["pid"]] = replica["forgotten"]
        time.sleep(0.5)
    assert len(forgotten) == 2 and all(count == 1 for count in forgotten.values())  # each applied it once


async def test_a_replica_that_dies_mid_sentence_leaves_the_answer_in_text(
    speech_url: str, tiny_csm_dir: Path, store, whisper, ollama: FakeOllama
) -> None:  # type: ignore[no-untyped-def]
    from engine.conversation import Conversation
    from engine.events import ReplySentence, SpeechChunk, SpeechUnavailable, TurnFinished
    from engine.llm import OllamaChat
    from engine.participant import Participant
    from engine.tts.csm_synthesizer import CsmSynthesizer
    from engine.tts.remote import RemoteSynthesizer

    remote = RemoteSynthesizer(speech_url, CsmSynthesizer(str(tiny_csm_dir), "cpu"), next_chunk_timeout=30)
    llm = OllamaChat(LLM_MODEL, ollama.host, first_token_timeout=30, token_timeout=30)
    conversation = Conversation(store, whisper, remote, llm, max_audio_seconds=60, max_audio_bytes=20 * 1024**2)
    ann = Participant("telegram", "7", "telegram:7", "Ann")
    long_sentence = "This is a long first sentence that the speech replica will take a good while to speak out loud."
    try:
        pids = await asyncio.to_thread(replica_pids, speech_url)
        ollama.script(long_sentence, " And here is the second one.")
        events = []
        started = time.monotonic()
        async for event in conversation.turn(ann, text="Tell me something.", speak=True):
            events.append(event)
            if isinstance(event, SpeechChunk) and sum(isinstance(e, SpeechChunk) for e in events) == 1:
                for pid in pids:  # whichever replica is speaking dies with the sentence half made
                    os.kill(pid, signal.SIGKILL)
        assert time.monotonic() - started < 120  # no hang: the broken stream ended the speech
        unavailable = [e for e in events if isinstance(e, SpeechUnavailable)]
        assert len(unavailable) == 1
        assert [e.text for e in events if isinstance(e, ReplySentence)] == [
            long_sentence,
            "And here is the second one.",
        ]
        finished = [e for e in events if isinstance(e, TurnFinished)]
        assert finished and finished[0].reply_text == f"{long_sentence} And here is the second one."

        # Ray Serve replaces the dead replica; once it is up, the next turn is spoken again.
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                if await asyncio.to_thread(replica_pid, speech_url) not in pids:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Ray Serve did not bring a new replica up"
            await asyncio.sleep(1)
        ollama.script("I am back.")
        events = [event async for event in conversation.turn(ann, text="Are you there?", speak=True)]
        assert not [e for e in events if isinstance(e, SpeechUnavailable)]
        assert sum(e.audio.size for e in events if isinstance(e, SpeechChunk)) > 0
    finally:
        await conversation._keeper.aclose()
        await remote.aclose()
