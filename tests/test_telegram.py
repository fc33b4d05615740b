"""The Telegram adapter end to end: the real `serve()` and python-telegram-bot, long-polling a fake Bot API
server over HTTP, answering with the real conversation engine on tiny models and a fake Ollama.

The fixtures here are shared with `test_telegram_clone.py` and `test_telegram_failures.py`, which bind them
by assignment (an import would be flagged as shadowed by the test arguments that use them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from telegram import Message

from alan.logs import configure_logging
from alan.settings import Settings
from bot.telegram.app import is_addressed, serve
from bot.telegram.common import TelegramOptions
from bot.telegram.media import CLOUD_DOWNLOAD_LIMIT, download_limit, find_audio
from bot.telegram.send import RetryPolicy
from bot.text_split import split_text
from engine.audio import CSM_RATE, decode_audio
from engine.conversation import Conversation
from engine.store.repository import Store
from tests.conftest import espeak_ogg
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.telegram_server import BOT_USERNAME, TOKEN, Call, FakeTelegram

MODEL = "llama3.2:3b"
ANN = {"id": 1001, "is_bot": False, "first_name": "Ann"}
BOB = {"id": 2002, "is_bot": False, "first_name": "Bob"}
FAST = TelegramOptions(
    poll_timeout_s=2.0,
    read_timeout_s=5.0,
    chat_action_every_s=0.3,
    follow_up_min_seconds=0.0,
    retry=RetryPolicy(attempts=4, backoff_s=0.05),
    queue_notice_after_s=0.5,
)
Start = Callable[..., Awaitable[FakeTelegram]]


def accept_any_text(segment) -> str | None:  # type: ignore[no-untyped-def]
    # A random Whisper is never confident; keep whatever it decodes so the turn goes on.
    return None if segment.text.strip() else "empty"


@pytest.fixture
async def start_bot(conversation: Conversation, database_url: str) -> AsyncIterator[Start]:
    """Start `serve()` against a fresh fake Bot API; returns the fake once the bot is polling."""
    running: list[tuple[asyncio.Task[None], FakeTelegram]] = []

    async def start(
        options: TelegramOptions = FAST, *, engine: Conversation | None = None, **settings: Any
    ) -> FakeTelegram:
        telegram = await FakeTelegram().start()
        # Every Telegram setting explicit, so that nothing in the environment running the tests leaks in.
        defaults = {"telegram_allowed_users": "", "telegram_webhook_url": "", "telegram_webhook_secret": None}
        config = Settings(
            _env_file=None,  # type: ignore[call-arg]
            telegram_token=TOKEN,
            telegram_api_url=telegram.api_url,
            database_url=database_url,
            max_audio_seconds=60,
            max_audio_bytes=5_000_000,
            **{**defaults, **settings},
        )
        task = asyncio.create_task(serve(config, engine or conversation, options=options))
        running.append((task, telegram))
        polling = "setWebhook" if config.telegram_webhook_url else "getUpdates"
        await telegram.wait_until(lambda: bool(telegram.received(polling)) or task.done(), within=10)
        if task.done():
            task.result()  # serve() failed to start: show why
        return telegram

    yield start
    for task, telegram in running:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await telegram.close()


async def eventually(condition: Callable[[], object], within: float = 10.0) -> None:
    """Poll a condition that no request signals (a database write after the last reply, say)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - nothing signals a database write; poll it
            await asyncio.sleep(0.05)


def assert_ogg_opus(call: Call) -> None:
    note = call.files["voice"]
    assert note[:4] == b"OggS" and b"OpusHead" in note[:200]
    assert len(decode_audio(note, CSM_RATE)) > 0
    assert len(note) <= 1_000_000  # shown as a voice bubble


async def test_a_voice_note_is_answered_with_a_captioned_voice_note(
    start_bot: Start, ollama: FakeOllama, store: Store, tmp_path: Path
) -> None:
    telegram = await start_bot()
    ollama.script("Nice to hear you.")
    chat = telegram.private_chat(ANN)
    note = espeak_ogg("Hello, can you hear me? I would like to talk.", tmp_path)
    sent = telegram.push_message(chat, ANN, voice=telegram.voice(note, duration=3))

    [answer] = await telegram.wait_for("sendVoice", chat_id=ANN["id"])
    assert_ogg_opus(answer)
    assert answer.params["caption"] == "Nice to hear you."
    assert answer.json("reply_parameters")["message_id"] == sent["message_id"]
    heard = telegram.sent("sendMessage", ANN["id"])
    assert heard and heard[0].text.startswith("I heard: “") and heard[0].at < answer.at
    assert any(call.params.get("action") == "record_voice" for call in telegram.sent("sendChatAction"))
    assert [call.method for call in telegram.calls].count("getFile") == 1
    assert TOKEN not in str([call.params for call in telegram.calls])
    # Kept as they were: the voice note as received, the reply as sent (each encoded once).
    user = store.find_user("telegram", str(ANN["id"]))
    assert user is not None
    await eventually(lambda: len(store.recent_turns(user.id, str(ANN["id"]))) == 2)
    said, reply = store.recent_turns(user.id, str(ANN["id"]))
    assert said.audio == note
    assert reply.audio == answer.files["voice"]


async def test_a_text_message_is_answered_with_a_voice_note_and_text_can_be_switched_off(
    start_bot: Start, ollama: FakeOllama, store: Store
) -> None:
    telegram = await start_bot()
    chat = telegram.private_chat(BOB)
    telegram.push_message(chat, BOB, text="/text off")
    await telegram.wait_for("sendMessage", chat_id=BOB["id"], where=lambda c: "voice notes only" in c.text)
    user = store.find_user("telegram", str(BOB["id"]))
    assert user is not None and user.reply_with_text is False

    ollama.script("Hello Bob.")
    telegram.push_message(chat, BOB, text="hi there")
    [answer] = await telegram.wait_for("sendVoice", chat_id=BOB["id"])
    assert_ogg_opus(answer)
    assert "caption" not in answer.params
    assert ollama.chat_requests[-1]["messages"][-1]["content"] == "hi there"
    # The reply is stored once its audio is complete, just after the last note went out.
    await eventually(lambda: len(store.recent_turns(user.id, str(BOB["id"]))) == 2)
    turns = store.recent_turns(user.id, str(BOB["id"]))
    assert [(turn.role, turn.text) for turn in turns] == [("user", "hi there"), ("assistant", "Hello Bob.")]


async def test_a_long_answer_comes_as_several_notes_cut_at_sentence_ends_the_first_one_early(
    start_bot: Start, ollama: FakeOllama, store: Store
) -> None:
    telegram = await start_bot(replace(FAST, follow_up_min_seconds=1000.0))
    # The third sentence only exists a second after the first: the first note must not wait for it.
    ollama.script("This first sentence is long enough to be a voice. Second one is", " here.", " Third one too.",
                  chunk_delay=0.5)  # fmt: skip
    telegram.push_message(telegram.private_chat(ANN), ANN, text="tell me three things")
    first, rest = await telegram.wait_for("sendVoice", chat_id=ANN["id"], count=2)
    assert first.params["caption"] == "This first sentence is long enough to be a voice."
    assert rest.params["caption"] == "Second one is here. Third one too."
    assert rest.at - first.at > 0.5
    # "recording voice…" was kept up while the answer was made (it fades after 5 s otherwise).
    assert len([call for call in telegram.sent("sendChatAction") if call.params["action"] == "record_voice"]) >= 2
    assert_ogg_opus(first)
    assert_ogg_opus(rest)
    # The stored reply is the notes as sent, back to back (a chained Ogg stream, which decodes as one).
    user = store.find_user("telegram", str(ANN["id"]))
    assert user is not None
    await eventually(lambda: len(store.recent_turns(user.id, str(ANN["id"]))) == 2)
    reply = store.recent_turns(user.id, str(ANN["id"]))[-1]
    assert reply.audio == first.files["voice"] + rest.files["voice"]
    heard = len(decode_audio(first.files["voice"], CSM_RATE)) + len(decode_audio(rest.files["voice"], CSM_RATE))
    assert len(decode_audio(reply.audio, CSM_RATE)) == heard
    # This chat had no voice: its first note, that first sentence alone, is its house voice, byte for byte.
    house = store.active_voice(user.id, str(ANN["id"]))
    assert house is not None and house.reference_audio == first.files["voice"]


async def test_two_chats_are_answered_at_once_and_a_chat_keeps_its_order(start_bot: Start, ollama: FakeOllama) -> None:
    telegram = await start_bot()
    # Slow enough that Ann's second message waits longer than a queue notice's delay.
    ollama.script("Answer one.", first_delay=1.0)
    ollama.script("Answer two.", first_delay=1.0)
    ollama.script("Answer three.")
    ann, bob = telegram.private_chat(ANN), telegram.private_chat(BOB)
    telegram.push_message(ann, ANN, text="first from Ann")
    telegram.push_message(bob, BOB, text="hello from Bob")
    telegram.push_message(ann, ANN, text="second from Ann")

    ann_notes = await telegram.wait_for("sendVoice", chat_id=ANN["id"], count=2)
    bob_notes = await telegram.wait_for("sendVoice", chat_id=BOB["id"])
    asked = [request["messages"][-1]["content"] for request in ollama.chat_requests]
    assert asked.index("first from Ann") < asked.index("second from Ann")
    assert set(asked) == {"first from Ann", "hello from Bob", "second from Ann"}
    # Ann's second message waited for her first: she was told so.
    assert any("in the queue" in call.text for call in telegram.sent("sendMessage", ANN["id"]))
    replies = {call.json("reply_parameters")["message_id"] for call in ann_notes}
    assert len(replies) == 2
    assert len(bob_notes) == 1
    for call in [*ann_notes, *bob_notes]:
        assert_ogg_opus(call)


async def test_in_a_group_only_mentions_and_replies_are_answered_and_the_rest_is_its_context(
    start_bot: Start, ollama: FakeOllama, store: Store
) -> None:
    telegram = await start_bot()
    group = telegram.group_chat(-100500)
    ollama.script("Yes, Ann?")
    ollama.script("Still here.")
    telegram.push_message(group, ANN, text="lunch at noon, everyone?")  # not for the bot
    telegram.push_message(group, ANN, text=f"@{BOT_USERNAME} are you there?")
    [answer] = await telegram.wait_for("sendVoice", chat_id=group["id"])
    # A group is one conversation: what Ann said before, not to the bot, comes with her question, under her name.
    assert [r["messages"][-1]["content"] for r in ollama.chat_requests] == [
        "Ann: lunch at noon, everyone?\nAnn: are you there?"
    ]

    telegram.push_message(group, BOB, text="pizza for me")  # not for the bot either: kept, not answered
    telegram.push_message(group, BOB, text="what do you think?", reply_to_message=answer.result)
    await telegram.wait_for("sendVoice", chat_id=group["id"], count=2)
    request = ollama.chat_requests[-1]["messages"]
    assert [(m["role"], m["content"]) for m in request[1:]] == [
        ("user", "Ann: lunch at noon, everyone?\nAnn: are you there?"),
        ("assistant", "Yes, Ann?"),
        ("user", "Bob: pizza for me\nBob: what do you think?"),
    ]
    assert "group conversation" in request[0]["content"] and "answer Bob" in request[0]["content"]
    assert all(call.chat_id == group["id"] for call in telegram.sent("sendVoice"))
    assert len(telegram.sent("sendVoice")) == 2 and telegram.sent("sendMessage", group["id"]) == []
    # Nothing waits for an answer after a restart: the words not said to the bot owe none.
    # (The reply is stored once its last note is sent.)
    await eventually(lambda: store.unanswered_turns("telegram", dt.datetime(2000, 1, 1, tzinfo=dt.UTC)) == [])


async def test_a_groups_chatter_while_the_bot_answers_never_crowds_out_the_next_question(
    start_bot: Start, ollama: FakeOllama
) -> None:
    telegram = await start_bot()  # at most 3 of a chat's turns wait: chatter must not count toward them
    group = telegram.group_chat(-100700)
    ollama.script("Let me think about that.", first_delay=1.5)
    ollama.script("Saturday works.")
    telegram.push_message(group, ANN, text=f"@{BOT_USERNAME} when shall we meet?")
    for index in range(5):
        telegram.push_message(group, BOB if index % 2 else ANN, text=f"chatter {index}")
    telegram.push_message(group, BOB, text=f"@{BOT_USERNAME} and what about Saturday?")
    await telegram.wait_for("sendVoice", chat_id=group["id"], count=2)
    first, second = (request["messages"][-1]["content"] for request in ollama.chat_requests)
    assert first == "Ann: when shall we meet?"
    assert second == "Ann: chatter 0\nBob: chatter 1\nAnn: chatter 2\nBob: chatter 3\nAnn: chatter 4\n" \
        "Bob: and what about Saturday?"  # fmt: skip
    assert not any("still have a few" in call.text for call in telegram.sent("sendMessage", group["id"]))


async def test_a_voice_note_in_a_group_not_for_the_bot_is_heard_and_kept_in_silence(
    start_bot: Start, ollama: FakeOllama, store: Store, tmp_path: Path
) -> None:
    telegram = await start_bot()
    group = telegram.group_chat(-100600)
    note = espeak_ogg("Shall we meet at the station?", tmp_path)
    telegram.push_message(group, ANN, voice=telegram.voice(note, duration=2))
    telegram.push_message(group, ANN, sticker={"file_id": "s1", "file_unique_id": "s1", "width": 1, "height": 1,
                                               "is_animated": False, "is_video": False, "type": "regular"})  # fmt: skip
    await eventually(lambda: len(store.shared_turns(str(group["id"]))) == 1)
    [(turn, name)] = store.shared_turns(str(group["id"]))
    assert name == "Ann" and not turn.addressed and turn.audio == note and turn.text  # transcribed, kept as sent
    await asyncio.sleep(0.3)  # nothing else happens: no answer, no "I heard", no queue notice
    assert ollama.chat_requests == [] and telegram.sent("sendMessage") == [] and telegram.sent("sendVoice") == []


async def test_users_outside_the_allowlist_are_refused_politely(start_bot: Start, ollama: FakeOllama) -> None:
    telegram = await start_bot(telegram_allowed_users=str(ANN["id"]))
    telegram.push_message(telegram.group_chat(-1007), BOB, text="just chatting")  # not addressed: no reply
    telegram.push_message(telegram.private_chat(BOB), BOB, text="hello?")
    [refusal] = await telegram.wait_for("sendMessage", chat_id=BOB["id"])
    assert "only talk with people my owner has allowed" in refusal.text and str(BOB["id"]) in refusal.text
    assert telegram.sent("sendMessage", -1007) == []

    ollama.script("Hi Ann.")
    telegram.push_message(telegram.private_chat(ANN), ANN, text="hello")
    await telegram.wait_for("sendVoice", chat_id=ANN["id"])
    assert [r["messages"][-1]["content"] for r in ollama.chat_requests] == ["hello"]


async def test_commands_are_registered_and_explained(start_bot: Start) -> None:
    telegram = await start_bot()
    [registered] = telegram.sent("setMyCommands")
    names = [command["command"] for command in registered.json("commands")]
    assert names == ["start", "help", "clone", "voices", "voice", "text", "memory", "link", "unlink", "reset", "forget"]
    chat = telegram.private_chat(ANN)
    telegram.push_message(chat, ANN, text="/start")
    telegram.push_message(chat, ANN, text="/help")
    telegram.push_message(chat, ANN, text="/dance now")
    replies = await telegram.wait_for("sendMessage", chat_id=ANN["id"], count=3)
    texts = " ".join(call.text for call in replies)
    assert "What I store" in texts and "/forget deletes everything" in texts
    assert f"@{BOT_USERNAME}" in texts  # /help explains groups
    assert "I don't know /dance" in texts


async def test_commands_addressed_to_another_bot_are_ignored_in_private_chats_and_groups(
    start_bot: Start, caplog: pytest.LogCaptureFixture
) -> None:
    telegram = await start_bot()
    chat, group = telegram.private_chat(ANN), telegram.group_chat(-100600)
    with caplog.at_level(logging.DEBUG, logger="bot.telegram.app"):
        telegram.push_message(chat, ANN, text="/start@otherbot")  # one of ours, for another bot
        telegram.push_message(chat, ANN, text="/dance@OtherBot now")  # unknown to us, for another bot
        telegram.push_message(group, ANN, text="/help@otherbot")
        await eventually(lambda: caplog.text.count("ignored a command addressed to another bot") == 3)
    telegram.push_message(chat, ANN, text=f"/help@{BOT_USERNAME.upper()}")  # ours by name, in any case
    [reply] = await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    assert "/clone" in reply.text
    assert len(telegram.received("sendMessage")) == 1


@pytest.mark.parametrize(
    ("chat_type", "text", "addressed"),
    [
        ("private", "/start@otherbot", False),
        ("private", f"/start@{BOT_USERNAME}", True),
        ("private", "/start", True),
        ("private", "hello @otherbot", True),  # a mention of someone else in a chat with us is still for us
        ("supergroup", "/start@otherbot", False),
        ("supergroup", "/start", True),
        ("supergroup", f"/start@{BOT_USERNAME}", True),
    ],
)
def test_a_message_is_addressed_to_the_bot_unless_its_command_names_another_bot(
    chat_type: str, text: str, addressed: bool
) -> None:
    fake = FakeTelegram()
    chat = {"id": 5, "type": chat_type}
    message = Message.de_json(fake.message(chat, ANN, text=text), None)  # type: ignore[arg-type]
    assert is_addressed(message, 123456, BOT_USERNAME) is addressed


async def test_webhook_mode_receives_updates_posted_with_the_secret(start_bot: Start, unused_tcp_port: int) -> None:
    import aiohttp

    telegram = await start_bot(
        telegram_webhook_url="https://alan.example.org/telegram/hook",
        telegram_webhook_port=unused_tcp_port,
        telegram_webhook_secret="s3cret",
    )
    await telegram.wait_for("setWebhook")
    assert telegram.webhook is not None and telegram.webhook["url"] == "https://alan.example.org/telegram/hook"
    assert telegram.webhook["secret_token"] == "s3cret"
    assert not telegram.sent("getUpdates")
    update = {"update_id": 1, "message": telegram.message(telegram.private_chat(ANN), ANN, text="/help")}
    telegram.push({"message": update["message"]})  # registers the chat with the fake; not polled in webhook mode
    url = f"http://127.0.0.1:{unused_tcp_port}/telegram/hook"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=update) as response:
            assert response.status == 403  # no secret: not from Telegram
        headers = {"X-Telegram-Bot-Api-Secret-Token": "s3cret"}
        async with http.post(url, json=update, headers=headers) as response:
            assert response.status == 200
    [reply] = await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    assert "/clone" in reply.text


async def test_a_generated_webhook_secret_is_scrubbed_from_the_logs(start_bot: Start, unused_tcp_port: int) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO", [TOKEN])
    [handler] = [handler for handler in root.handlers if handler.get_name() == "alan"]
    assert isinstance(handler, logging.StreamHandler)
    written = io.StringIO()
    handler.setStream(written)
    try:
        telegram = await start_bot(
            telegram_webhook_url="https://alan.example.org/hook", telegram_webhook_port=unused_tcp_port
        )
        await telegram.wait_for("setWebhook")
        assert telegram.webhook is not None
        secret = telegram.webhook["secret_token"]
        assert len(secret) >= 32
        logging.getLogger("tests").warning("a request with secret %s and token %s", secret, TOKEN)
        assert "a request with secret [REDACTED]" in written.getvalue()
        assert secret not in written.getvalue() and TOKEN not in written.getvalue()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_a_refused_token_stops_serve_without_showing_the_token(
    conversation: Conversation, database_url: str
) -> None:
    async with FakeTelegram(token="999:other") as telegram:
        config = Settings(_env_file=None, telegram_token=TOKEN, telegram_api_url=telegram.api_url)  # type: ignore[call-arg]
        with pytest.raises(Exception, match="refused TELEGRAM_TOKEN") as raised:
            await serve(config, conversation, options=FAST)
        assert TOKEN not in str(raised.value)
        assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_downloads_are_capped_at_20_mb_on_telegrams_cloud_only() -> None:
    assert download_limit("https://api.telegram.org", 50 * 1024 * 1024) == CLOUD_DOWNLOAD_LIMIT
    assert download_limit("https://api.telegram.org", 1024) == 1024
    assert download_limit("http://localhost:8081", 50 * 1024 * 1024) == 50 * 1024 * 1024


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        ({"voice": {"file_id": "v", "file_unique_id": "v", "duration": 4}}, "voice note"),
        ({"audio": {"file_id": "a", "file_unique_id": "a", "duration": 200}}, "audio file"),
        ({"video_note": {"file_id": "n", "file_unique_id": "n", "length": 240, "duration": 9}}, "video note"),
        ({"document": {"file_id": "d", "file_unique_id": "d", "mime_type": "audio/mpeg"}}, "audio file"),
        ({"document": {"file_id": "d", "file_unique_id": "d", "file_name": "talk.M4A"}}, "audio file"),
        ({"document": {"file_id": "d", "file_unique_id": "d", "mime_type": "application/pdf"}}, None),
        ({"text": "hello"}, None),
    ],
)
def test_audio_is_found_in_voice_notes_audio_files_video_notes_and_audio_documents(
    content: dict[str, Any], kind: str | None
) -> None:
    message = Message.de_json(
        {"message_id": 1, "date": 0, "chat": {"id": 1, "type": "private"}, **content},
        None,  # type: ignore[arg-type]
    )
    found = find_audio(message)
    assert (found.kind if found else None) == kind


def test_long_texts_are_split_within_telegrams_limit_at_word_ends() -> None:
    text = " ".join(f"word{i}" for i in range(2000))
    pieces = split_text(text, limit=4096)
    assert len(pieces) == -(-len(text) // 4096) and all(len(piece) <= 4096 for piece in pieces)
    assert " ".join(pieces) == text


async def test_chats_answered_at_once_share_the_speech_services_frames(
    start_bot: Start, csm_conversation: Conversation, ollama: FakeOllama
) -> None:
    # Two people's turns run together; the one speech service speaks both replies in the same frames.
    ollama.default_reply = "This reply is long enough to keep the voice model busy for a little while."
    telegram = await start_bot(replace(FAST, turn_concurrency=2), engine=csm_conversation)
    for person in (ANN, BOB):
        telegram.push_message(telegram.private_chat(person), person, text="hello")
    [from_ann] = await telegram.wait_for("sendVoice", chat_id=ANN["id"])
    [from_bob] = await telegram.wait_for("sendVoice", chat_id=BOB["id"])
    assert_ogg_opus(from_ann)
    assert_ogg_opus(from_bob)
    service = csm_conversation._tts._service  # type: ignore[attr-defined]
    assert service is not None and service.stats.largest_batch >= 2

