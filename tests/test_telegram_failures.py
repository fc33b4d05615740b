"""Bad input and a misbehaving Bot API: every case gets a clear reply or a retry, and the bot goes on."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from telegram.error import NetworkError, TimedOut

from bot.telegram.common import APOLOGY, TELEGRAM_TROUBLE
from bot.telegram.media import DOWNLOAD_FAILED, NOT_AUDIO, TOO_BIG_FOR_TELEGRAM, UNSUPPORTED
from bot.telegram.send import UploadTimeouts, may_have_arrived
from engine.audio import CSM_RATE, encode_wav
from engine.conversation import Conversation
from engine.store.repository import Store
from engine.stt import WhisperTranscriber
from engine.tts.csm import CsmSpeech
from tests import test_telegram as harness
from tests.conftest import espeak_ogg
from tests.engine_harness import make_conversation
from tests.fakes.ollama_server import FakeOllama
from tests.test_telegram import BOB, FAST, Start, assert_ogg_opus, eventually

# The shared fixtures (see test_telegram.py).
start_bot = harness.start_bot

ANN = {"id": 1001, "is_bot": False, "first_name": "Ann"}


def person(user_id: int) -> dict[str, object]:
    return {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"}


async def test_each_bad_input_gets_a_clear_reply_and_the_bot_goes_on(
    start_bot: Start, ollama: FakeOllama, tmp_path: Path
) -> None:
    telegram = await start_bot()
    note = espeak_ogg("Hello there, how are you today?", tmp_path)
    big_file = telegram.voice(note)
    del big_file["file_size"]  # Telegram doesn't always say; then getFile refuses files over 20 MB
    telegram.file_sizes[big_file["file_id"]] = 25 * 1024 * 1024
    cases = {
        3001: ({"voice": telegram.voice(b"\x00\x01garbage" * 100)}, "doesn't look like an audio file"),
        3002: ({"voice": telegram.voice(note[: len(note) // 2])}, "cut off"),
        3003: ({"voice": telegram.voice(note, duration=7200)}, "2.0 hours long: I can listen to at most 60 seconds"),
        3004: ({"voice": telegram.voice(note, file_size=6_000_000)}, "too large (5.7 MB): the most I take is 5 MB"),
        3005: ({"voice": big_file}, TOO_BIG_FOR_TELEGRAM),
        3006: ({"document": telegram.document(b"%PDF-1.4", file_name="cv.pdf", mime_type="application/pdf")},
               NOT_AUDIO),
        3007: ({"sticker": {"file_id": "s1", "file_unique_id": "s1", "type": "regular", "width": 512,
                            "height": 512, "is_animated": False, "is_video": False}}, UNSUPPORTED),
        3008: ({"text": "   "}, "nothing to answer"),
        3009: ({"voice": telegram.voice(encode_wav(np.zeros(3 * CSM_RATE, np.float32), CSM_RATE))}, "didn't catch"),
    }  # fmt: skip
    for user_id, (content, _) in cases.items():
        user = person(user_id)
        text = content.pop("text", None)
        telegram.push_message(telegram.private_chat(user), user, text=text, **content)
    for user_id, (_, expected) in cases.items():
        # (Some also hear that they are in the queue: the bot answers two chats at a time.)
        await telegram.wait_for("sendMessage", chat_id=user_id, where=lambda c, e=expected: e in c.text)
    # Too long and too large were refused from what the update said, without downloading anything.
    fetched = {call.params["file_id"] for call in telegram.received("getFile")}
    assert cases[3003][0]["voice"]["file_id"] not in fetched and cases[3004][0]["voice"]["file_id"] not in fetched
    assert ollama.chat_requests == []
    assert telegram.sent("sendVoice") == []

    # Still serving: an audio file sent as a document (a WAV) is heard and answered.
    ollama.script("Got your file.")
    wav = (tmp_path / "speech.wav").read_bytes()
    telegram.push_message(telegram.private_chat(ANN), ANN,
                          document=telegram.document(wav, file_name="hello.wav", mime_type="audio/x-wav"))  # fmt: skip
    [answer] = await telegram.wait_for("sendVoice", chat_id=ANN["id"])
    assert_ogg_opus(answer)


async def test_flood_control_and_server_errors_on_send_voice_are_retried(start_bot: Start, ollama: FakeOllama) -> None:
    telegram = await start_bot()
    telegram.fail("sendVoice", 429, retry_after=1)
    telegram.fail("sendVoice", 500)
    ollama.script("Patience pays.")
    telegram.push_message(telegram.private_chat(ANN), ANN, text="hello")
    [answer] = await telegram.wait_for("sendVoice", chat_id=ANN["id"])
    flooded, failed, delivered = telegram.received("sendVoice")
    assert flooded.injected is not None and flooded.injected.startswith("429")
    assert failed.injected is not None and failed.injected.startswith("500")
    assert delivered is answer and answer.params["caption"] == "Patience pays."
    assert failed.at - flooded.at >= 1.0  # waited as long as Telegram asked
    assert_ogg_opus(answer)
    assert not [call for call in telegram.sent("sendMessage") if TELEGRAM_TROUBLE in call.text]


async def test_a_timed_out_request_is_retried(start_bot: Start) -> None:
    telegram = await start_bot(replace(FAST, read_timeout_s=0.5))
    telegram.slow("sendMessage", 1.5)
    telegram.push_message(telegram.private_chat(ANN), ANN, text="/help")
    [reply] = await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    assert "/clone" in reply.text
    assert len(telegram.received("sendMessage")) == 2


async def test_a_voice_note_that_reached_telegram_before_its_answer_timed_out_is_not_sent_twice(
    start_bot: Start, ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    # Telegram stores the first note at once but answers only after the client stopped waiting.
    telegram = await start_bot(replace(FAST, read_timeout_s=0.5, uploads=UploadTimeouts(write_s=5.0, read_s=0.5)))
    telegram.answer_late("sendVoice", 1.5)
    ollama.script("First things first. Then the rest.")
    with caplog.at_level(logging.WARNING, logger="bot.telegram.send"):
        telegram.push_message(telegram.private_chat(ANN), ANN, text="hello")
        # The turn goes on: the second sentence is still sent, after the first note (the outbox keeps order).
        await telegram.wait_for("sendVoice", chat_id=ANN["id"], where=lambda c: c.text == "Then the rest.")
    notes = telegram.sent("sendVoice", ANN["id"])
    assert [note.text for note in notes] == ["First things first.", "Then the rest."]  # each exactly once
    assert len(telegram.received("sendVoice")) == 2
    assert any("sendVoice" in r.getMessage() and "not sending it again" in r.getMessage() for r in caplog.records)
    assert not [call for call in telegram.sent("sendMessage") if TELEGRAM_TROUBLE in call.text]


def _raised(error: Exception, cause: Exception) -> Exception:
    """`error` as python-telegram-bot raises it: `raise TimedOut from <the httpx error>`."""
    try:
        raise error from cause
    except Exception as raised:
        return raised


@pytest.mark.parametrize(
    ("error", "arrived"),
    [
        (_raised(TimedOut(), httpx.ReadTimeout("read")), True),  # written in full; the answer never came
        # A pooled connection the server had closed: the request was never read.
        (_raised(NetworkError("httpx.ReadError"), httpx.ReadError("reset")), False),
        (_raised(NetworkError("httpx.RemoteProtocolError"), httpx.RemoteProtocolError("closed")), False),
        (_raised(TimedOut(), httpx.ConnectTimeout("connect")), False),  # nothing was sent
        (_raised(TimedOut(), httpx.PoolTimeout("pool")), False),
        (_raised(TimedOut(), httpx.WriteTimeout("write")), False),  # the upload was cut short
        (_raised(NetworkError("httpx.ConnectError"), httpx.ConnectError("refused")), False),
        (NetworkError("Bad Gateway"), False),  # Telegram answered: it failed there
    ],
)
def test_only_a_read_timeout_after_the_request_was_written_counts_as_maybe_delivered(
    error: Exception, arrived: bool
) -> None:
    assert may_have_arrived(error) is arrived


async def test_a_voice_note_telegram_does_not_hand_over_is_asked_for_again(
    start_bot: Start, ollama: FakeOllama, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    telegram = await start_bot()
    note = espeak_ogg("Hello there, how are you today?", tmp_path)
    attempts = FAST.retry.attempts
    asked_again = DOWNLOAD_FAILED.format(kind="voice note")
    with caplog.at_level(logging.WARNING, logger="bot.telegram.media"):
        telegram.fail("download", 500, times=attempts)  # the file server fails every try
        telegram.push_message(telegram.private_chat(ANN), ANN, voice=telegram.voice(note))
        await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: c.text == asked_again)
        assert len(telegram.received("download")) == attempts

        bob = person(2002)
        telegram.fail("getFile", 502, times=attempts)  # getFile itself fails every try
        telegram.push_message(telegram.private_chat(bob), bob, voice=telegram.voice(note))
        await telegram.wait_for("sendMessage", chat_id=bob["id"], where=lambda c: c.text == asked_again)
        await eventually(lambda: len([r for r in caplog.records if r.name == "bot.telegram.media"]) >= 2)
    assert "download a voice note" in caplog.text and "getFile" in caplog.text
    assert not [call for call in telegram.sent("sendMessage") if TELEGRAM_TROUBLE in call.text]
    assert ollama.chat_requests == []


async def test_when_telegram_keeps_failing_the_user_is_told_and_the_bot_goes_on(
    start_bot: Start, ollama: FakeOllama
) -> None:
    telegram = await start_bot()
    telegram.fail("sendVoice", 500, times=FAST.retry.attempts)
    ollama.script("You won't hear this.")
    chat = telegram.private_chat(ANN)
    telegram.push_message(chat, ANN, text="hello")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: TELEGRAM_TROUBLE in c.text)
    assert len(telegram.received("sendVoice")) == FAST.retry.attempts

    # Polling survives Bot API trouble too (python-telegram-bot waits a second before polling again).
    telegram.fail("getUpdates", 502)
    await telegram.wait_until(lambda: any(call.injected for call in telegram.received("getUpdates")))
    telegram.push_message(chat, ANN, text="/start")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "What I store" in c.text)


async def test_engine_errors_are_told_and_bugs_get_an_apology_with_a_logged_traceback(
    start_bot: Start, ollama: FakeOllama, conversation: Conversation, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    telegram = await start_bot()
    chat = telegram.private_chat(ANN)
    ollama.script(error="model runner crashed")
    telegram.push_message(chat, ANN, text="are you there?")
    [down] = await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    assert "my language model isn't answering" in down.text

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(conversation, "turn", broken)
    with caplog.at_level(logging.ERROR, logger="bot.telegram.common"):
        telegram.push_message(chat, ANN, text="hello again")
        await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: c.text == APOLOGY)
    [record] = [r for r in caplog.records if r.name == "bot.telegram.common" and r.exc_info]
    assert "a bug" in str(record.exc_info[1])  # type: ignore[index]


async def test_a_full_queue_refuses_with_a_message(start_bot: Start, ollama: FakeOllama) -> None:
    # One turn at a time and no room to wait: while Ann's turn runs, Bob's is refused at once.
    telegram = await start_bot(replace(FAST, turn_concurrency=1, max_waiting_turns=0))
    ollama.script("Hello Ann.", first_delay=3.0)
    telegram.push_message(telegram.private_chat(ANN), ANN, text="hello")
    await eventually(lambda: len(ollama.chat_requests) == 1)
    telegram.push_message(telegram.private_chat(BOB), BOB, text="hello too")
    [refusal] = await telegram.wait_for("sendMessage", chat_id=BOB["id"])
    assert "talking with a lot of people" in refusal.text
    assert len(ollama.chat_requests) == 1  # Bob's words never reached the LLM


async def test_without_a_voice_model_the_answer_comes_as_text(
    start_bot: Start, ollama: FakeOllama, store: Store, whisper: WhisperTranscriber, tiny_speech: CsmSpeech,
    tiny_csm_dir: Path,
) -> None:  # fmt: skip
    def no_model() -> CsmSpeech:
        raise OSError("sesame/csm-1b is a gated repository")

    voiceless = make_conversation(store, whisper, tiny_speech, tiny_csm_dir, ollama.host, load_tts=no_model)
    telegram = await start_bot(engine=voiceless)
    ollama.script("I can only write today.")
    telegram.push_message(telegram.private_chat(ANN), ANN, text="hello")
    notice, answer = await telegram.wait_for("sendMessage", chat_id=ANN["id"], count=2)
    assert "voice model" in notice.text
    assert answer.text == "I can only write today."
    assert telegram.sent("sendVoice") == []


async def test_where_voice_notes_are_forbidden_the_answer_comes_as_audio_files(
    start_bot: Start, ollama: FakeOllama
) -> None:
    telegram = await start_bot()
    telegram.fail("sendVoice", 400, description="Bad Request: VOICE_MESSAGES_FORBIDDEN")
    ollama.script("First things first. Then the rest.")
    telegram.push_message(telegram.private_chat(ANN), ANN, text="hello")
    first, second = await telegram.wait_for("sendAudio", chat_id=ANN["id"], count=2)
    assert first.files["audio"][:4] == b"OggS"
    assert (first.text, second.text) == ("First things first.", "Then the rest.")
    assert len(telegram.received("sendVoice")) == 1  # not tried again in this turn
    assert not [call for call in telegram.sent("sendMessage") if TELEGRAM_TROUBLE in call.text]


async def test_where_no_audio_may_be_sent_the_answer_comes_as_text(start_bot: Start, ollama: FakeOllama) -> None:
    telegram = await start_bot()
    telegram.fail("sendVoice", 400, description="Bad Request: not enough rights to send voice notes to the chat")
    telegram.fail("sendAudio", 400, description="Bad Request: not enough rights to send music to the chat")
    ollama.script("First things first. Then the rest.")
    telegram.push_message(telegram.private_chat(ANN), ANN, text="hello")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: c.text == "Then the rest.")
    texts = [call.text for call in telegram.sent("sendMessage", ANN["id"])]
    assert "First things first." in texts and TELEGRAM_TROUBLE not in texts
    assert len(telegram.received("sendVoice")) == 1 and len(telegram.received("sendAudio")) == 1
