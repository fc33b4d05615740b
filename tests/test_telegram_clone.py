"""/clone, /voices, /voice, /reset and /forget through the fake Bot API, with inline buttons pressed."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.telegram.common import APOLOGY
from engine.store.models import ScopeVoice, Turn, User, UserVoiceChoice, Voice
from engine.store.repository import Store
from engine.voices import CONSENT_STATEMENT
from tests import test_telegram as harness
from tests.conftest import espeak_ogg
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.telegram_server import BOT_USERNAME, Call
from tests.test_telegram import FAST, Start, eventually

# The shared fixtures (see test_telegram.py).
start_bot = harness.start_bot

ANN = {"id": 1001, "is_bot": False, "first_name": "Ann"}
BOB = {"id": 2002, "is_bot": False, "first_name": "Bob"}
CLIP = "This is my voice. I am reading a few sentences so that you can learn how I sound."


def button(call: Call, label_part: str) -> str:
    """The callback data of the button whose label contains `label_part`."""
    [data] = [data for label, data in call.buttons if label_part in label]
    return data


async def test_clone_end_to_end_transcript_confirmed_consent_given_voice_stored_and_active(
    start_bot: Start, store: Store, tmp_path: Path
) -> None:
    telegram = await start_bot()
    chat = telegram.private_chat(ANN)
    telegram.push_message(chat, ANN, text="/clone Ann's voice")
    [ask] = await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    assert "Send me a voice note" in ask.text and [label for label, _ in ask.buttons] == ["Cancel"]

    telegram.push_message(chat, ANN, voice=telegram.voice(espeak_ogg(CLIP, tmp_path), duration=6))
    [heard] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "what I heard" in c.text)
    transcript = heard.text.split("“")[1].split("”")[0]
    assert transcript
    telegram.press(ANN, heard.result, button(heard, "That's right"))
    [consent] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: CONSENT_STATEMENT in c.text)
    assert any(transcript in call.text for call in telegram.sent("editMessageText", ANN["id"]))
    assert not telegram.sent("sendVoice")  # the clip was for cloning, not a conversation turn

    telegram.press(ANN, consent.result, button(consent, "I confirm"))
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "Saved “Ann's voice”" in c.text)
    user = store.find_user("telegram", str(ANN["id"]))
    assert user is not None
    [voice] = store.voices_of(user.id)
    assert voice.name == "Ann's voice" and voice.transcript == transcript
    assert voice.consent_at is not None and voice.consent_statement == CONSENT_STATEMENT
    assert voice.speech is not None and voice.reference_audio[:4] == b"OggS"
    active = store.active_voice(user.id, str(ANN["id"]))
    assert active is not None and active.id == voice.id
    assert len(telegram.sent("answerCallbackQuery")) == 2


async def test_clone_on_a_replied_voice_note_in_a_group_with_a_corrected_transcript(
    start_bot: Start, store: Store, ollama: FakeOllama, tmp_path: Path
) -> None:
    telegram = await start_bot()
    group = telegram.group_chat(-100900)
    clip = telegram.push_message(group, BOB, voice=telegram.voice(espeak_ogg(CLIP, tmp_path), duration=6))
    telegram.push_message(group, BOB, text=f"/clone@{BOT_USERNAME}", reply_to_message=clip)
    [heard] = await telegram.wait_for("sendMessage", chat_id=group["id"], where=lambda c: "what I heard" in c.text)
    assert ollama.chat_requests == []  # the voice note without a mention was not a turn

    telegram.press(ANN, heard.result, button(heard, "That's right"))  # not Ann's clone
    await telegram.wait_for("answerCallbackQuery", where=lambda c: "Only the person" in c.params.get("text", ""))
    assert "reply to this message with the exact words" in heard.text  # in a group it sees only replies to it
    telegram.push_message(group, BOB, text="Nice weather today.")  # said to the group, not to the bot
    telegram.push_message(group, BOB, text=CLIP, reply_to_message=heard.result)  # the exact words, as a correction
    [consent] = await telegram.wait_for("sendMessage", chat_id=group["id"], where=lambda c: CONSENT_STATEMENT in c.text)
    telegram.press(BOB, consent.result, button(consent, "I confirm"))
    await telegram.wait_for("sendMessage", chat_id=group["id"], where=lambda c: "Saved “my voice”" in c.text)
    user = store.find_user("telegram", str(BOB["id"]))
    assert user is not None
    [voice] = store.voices_of(user.id)
    assert voice.transcript == CLIP
    assert len([call for call in telegram.sent("sendMessage", group["id"]) if CONSENT_STATEMENT in call.text]) == 1


async def test_double_taps_on_the_clone_buttons_store_one_voice_without_an_apology(
    start_bot: Start, store: Store, tmp_path: Path
) -> None:
    telegram = await start_bot()
    chat = telegram.private_chat(ANN)
    clip = telegram.push_message(chat, ANN, voice=telegram.voice(espeak_ogg(CLIP, tmp_path), duration=6))
    telegram.push_message(chat, ANN, text="/clone", reply_to_message=clip)
    [heard] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "what I heard" in c.text)
    for _ in range(2):  # both taps arrive in one batch of updates and are handled concurrently
        telegram.press(ANN, heard.result, button(heard, "That's right"))
    [consent] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: CONSENT_STATEMENT in c.text)
    for _ in range(2):
        telegram.press(ANN, consent.result, button(consent, "I confirm"))
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "Saved “my voice”" in c.text)
    await telegram.wait_for("answerCallbackQuery", count=4)
    user = store.find_user("telegram", str(ANN["id"]))
    assert user is not None and len(store.voices_of(user.id)) == 1
    assert [call.text for call in telegram.sent("answerCallbackQuery")] == [""] * 4  # no "expired" alert
    texts = [call.text for call in telegram.sent("sendMessage", ANN["id"])]
    assert APOLOGY not in texts and len([text for text in texts if CONSENT_STATEMENT in text]) == 1


async def test_voice_name_lookups_stay_off_the_event_loop(
    start_bot: Start, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store retries a locked database with sleeps: on the event loop that would stall every chat.
    lookup_threads: list[threading.Thread] = []
    real_lookup = Store.voice_by_name

    def recording_lookup(self: Store, owner_id: int, name: str) -> Voice | None:
        lookup_threads.append(threading.current_thread())
        return real_lookup(self, owner_id, name)

    monkeypatch.setattr(Store, "voice_by_name", recording_lookup)
    telegram = await start_bot()
    chat = telegram.private_chat(ANN)
    telegram.push_message(chat, ANN, text="/clone Ann's voice")  # a name given: checked at once
    await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    clip = telegram.push_message(chat, ANN, voice=telegram.voice(espeak_ogg(CLIP, tmp_path), duration=6))
    telegram.push_message(chat, ANN, text="/clone", reply_to_message=clip)  # no name: a free one is found
    [heard] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "what I heard" in c.text)
    telegram.press(ANN, heard.result, button(heard, "That's right"))
    [consent] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: CONSENT_STATEMENT in c.text)
    telegram.press(ANN, consent.result, button(consent, "I confirm"))
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "Saved “my voice”" in c.text)
    loop_thread = threading.current_thread()  # the bot runs on this test's event loop
    assert len(lookup_threads) >= 2 and loop_thread not in lookup_threads


async def test_a_bad_clip_is_explained_and_cancel_ends_the_clone(start_bot: Start, tmp_path: Path) -> None:
    telegram = await start_bot()
    chat = telegram.private_chat(ANN)
    telegram.push_message(chat, ANN, text="/clone")
    [ask] = await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    telegram.push_message(chat, ANN, voice=telegram.voice(espeak_ogg("Hi.", tmp_path), duration=1))
    [short] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "at least 3 seconds" in c.text)
    assert "Send another clip, or tap Cancel" in short.text
    telegram.push_message(chat, ANN, text="hello?")  # while a clip is awaited
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "waiting for a voice note" in c.text)

    telegram.press(ANN, ask.result, button(ask, "Cancel"))
    await telegram.wait_for("editMessageText", chat_id=ANN["id"], where=lambda c: "Cancelled" in c.text)
    telegram.press(ANN, ask.result, button(ask, "Cancel"))  # an old button, pressed again
    await telegram.wait_for("answerCallbackQuery", where=lambda c: "expired" in c.params.get("text", ""))
    telegram.push_message(chat, ANN, text="/cancel")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "nothing to cancel" in c.text)


async def test_an_unfinished_clone_expires(start_bot: Start) -> None:
    telegram = await start_bot(replace(FAST, clone_timeout_s=0.2))
    telegram.push_message(telegram.private_chat(ANN), ANN, text="/clone")
    [ask] = await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    await asyncio.sleep(0.3)
    telegram.press(ANN, ask.result, button(ask, "Cancel"))
    await telegram.wait_for("answerCallbackQuery", where=lambda c: "expired" in c.params.get("text", ""))


async def test_voices_lists_and_switches_with_buttons_and_voice_name_chooses(start_bot: Start, store: Store) -> None:
    telegram = await start_bot()
    chat = telegram.private_chat(ANN)
    telegram.push_message(chat, ANN, text="/voices")
    [empty] = await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    assert "no voices of your own yet" in empty.text

    user = store.user("telegram", str(ANN["id"]), "Ann")
    for name in ("calm", "cheerful"):
        store.add_voice(user.id, name, reference_audio=b"OggS", reference_seconds=5.0, transcript="Hello.")
    telegram.push_message(chat, ANN, text="/voice calm")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "“calm”" in c.text)
    assert store.active_voice(user.id, str(ANN["id"])).name == "calm"  # type: ignore[union-attr]

    telegram.push_message(chat, ANN, text="/voices")
    [menu] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: bool(c.buttons))
    assert [label for label, _ in menu.buttons] == ["✓ calm", "cheerful"]
    telegram.press(ANN, menu.result, button(menu, "cheerful"))
    [edited] = await telegram.wait_for("editMessageText", chat_id=ANN["id"])
    assert [label for label, _ in edited.buttons] == ["calm", "✓ cheerful"]
    assert store.active_voice(user.id, str(ANN["id"])).name == "cheerful"  # type: ignore[union-attr]

    # Tapping the voice already chosen: Telegram refuses the unchanged edit, and no second menu is posted.
    unchanged = "Bad Request: message is not modified: specified new message content and reply markup are the same"
    telegram.fail("editMessageText", 400, description=unchanged)
    telegram.press(ANN, edited.result, button(edited, "cheerful"))
    await telegram.wait_until(lambda: len(telegram.received("editMessageText")) == 2)
    await telegram.wait_for("answerCallbackQuery", count=2)
    telegram.push_message(chat, ANN, text="/voice nobody")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "no voice called “nobody”" in c.text)
    assert len([call for call in telegram.sent("sendMessage", ANN["id"]) if call.buttons]) == 1  # no new menu


async def test_reset_keeps_voices_and_forget_after_confirmation_leaves_nothing(
    start_bot: Start, store: Store, ollama: FakeOllama
) -> None:
    telegram = await start_bot()
    chat = telegram.private_chat(ANN)
    ollama.script("Hello Ann.")
    telegram.push_message(chat, ANN, text="hello")
    await telegram.wait_for("sendVoice", chat_id=ANN["id"])
    user = store.find_user("telegram", str(ANN["id"]))
    assert user is not None
    store.add_voice(user.id, "mine", reference_audio=b"OggS", reference_seconds=5.0, transcript="Hello.")
    store.choose_voice(user.id, store.voices_of(user.id)[0].id)

    telegram.push_message(chat, ANN, text="/reset")
    await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "(2 messages)" in c.text)
    assert store.recent_turns(user.id, str(ANN["id"])) == [] and len(store.voices_of(user.id)) == 1

    telegram.push_message(chat, ANN, text="/forget")
    [question] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], where=lambda c: "Are you sure" in c.text)
    telegram.press(BOB, question.result, button(question, "Yes"))  # someone else can't
    telegram.press(ANN, question.result, button(question, "No"))
    await telegram.wait_for("editMessageText", chat_id=ANN["id"], where=lambda c: "Nothing was deleted" in c.text)
    assert store.find_user("telegram", str(ANN["id"])) is not None

    telegram.push_message(chat, ANN, text="/forget")
    *_, question = await telegram.wait_for("sendMessage", chat_id=ANN["id"], count=2, where=lambda c: "sure" in c.text)
    telegram.press(ANN, question.result, button(question, "Yes"))
    await telegram.wait_for("editMessageText", chat_id=ANN["id"], where=lambda c: "deleted everything" in c.text)
    await eventually(lambda: store.find_user("telegram", str(ANN["id"])) is None)
    assert_nothing_stored_about(store, user.id)


def assert_nothing_stored_about(store: Store, user_id: int) -> None:
    with store.sessions() as session:
        assert session.scalars(select(User).where(User.id == user_id)).all() == []
        assert session.scalars(select(Turn).where(Turn.user_id == user_id)).all() == []
        assert session.scalars(select(Voice).where(Voice.owner_id == user_id)).all() == []
        assert session.scalars(select(UserVoiceChoice).where(UserVoiceChoice.user_id == user_id)).all() == []
        assert session.scalars(select(ScopeVoice).where(ScopeVoice.set_by_user_id == user_id)).all() == []
