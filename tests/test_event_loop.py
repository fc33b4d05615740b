"""No blocking call on the event loop: a platform turn run with asyncio's debug mode reports no slow callback.

Every chat shares one event loop, so a callback that holds it for 100 ms holds every other chat's audio and
messages as long. The turns run through the real Telegram adapter and the real conversation engine (store,
Whisper, audio codecs), with the tone synthesizer and a scripted chat model, which cost the loop nothing
themselves, so whatever the loop waits on is our own code.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from engine.conversation import Conversation
from engine.heap import freeze_long_lived
from engine.store.repository import Store
from engine.stt import WhisperTranscriber
from engine.tts.tone import ToneSynthesizer
from tests import test_telegram as harness
from tests.conftest import espeak_ogg
from tests.fakes.scripted_chat import ScriptedChat
from tests.test_telegram import ANN, Start, assert_ogg_opus

start_bot = harness.start_bot
SLOW_CALLBACK_S = 0.1


@pytest.fixture
def conversation(store: Store, whisper: WhisperTranscriber) -> Conversation:
    """The engine on the tone synthesizer and the scripted chat model: fast, deterministic, torch-free."""
    return Conversation(store, whisper, ToneSynthesizer(), ScriptedChat(), max_audio_seconds=60,
                        max_audio_bytes=5_000_000)  # fmt: skip


async def test_a_voice_note_and_a_text_turn_never_hold_the_event_loop(
    start_bot: Start, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    note = espeak_ogg("Hello, can you hear me? I would like to talk about the weather today.", tmp_path)
    telegram = await start_bot()
    # A first turn before measuring: one-time work (the VAD model's session, lazy imports, thread pools) happens in
    # worker threads but can hold the GIL once; what must never block is every turn after it.
    telegram.push_message(telegram.private_chat(ANN), ANN, voice=telegram.voice(note, duration=4))
    await telegram.wait_for("sendVoice", chat_id=ANN["id"])
    # As `alan run` does after start-up and the models do once loaded: a full garbage collection walking every
    # object of PyTorch and the models held the loop for ≈170 ms before (engine/heap.py).
    freeze_long_lived()
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK_S
    caplog.set_level(logging.WARNING, logger="asyncio")
    try:
        chat = telegram.private_chat(ANN)
        telegram.push_message(chat, ANN, voice=telegram.voice(note, duration=4))
        [_, first] = await telegram.wait_for("sendVoice", chat_id=ANN["id"], count=2)
        telegram.push_message(chat, ANN, text="Tell me more, please. " * 20)
        [_, _, second] = await telegram.wait_for("sendVoice", chat_id=ANN["id"], count=3)
    finally:
        loop.set_debug(False)
    assert_ogg_opus(first)
    assert_ogg_opus(second)
    # The fake Bot API server shares the loop; its request handlers (aiohttp's server side, which aLAN doesn't
    # run when polling) are a test double, not the code under test.
    slow = [record.getMessage() for record in caplog.records if record.name == "asyncio"]
    assert [message for message in slow if "aiohttp/web_protocol.py" not in message] == []
    user = store.find_user("telegram", str(ANN["id"]))
    assert user is not None and len(store.recent_turns(user.id, str(ANN["id"]))) == 6
