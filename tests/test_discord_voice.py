"""Hearing and speaking in a voice channel, end to end on the real engine (tiny models, fake Ollama): per-user PCM
-> VAD -> a turn -> frames played; barge-in timed on a controllable clock; the live receive layer at 16 kHz with
garbage on the wire; mentions in text channels; leaving an empty channel and coming back after a drop."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import discord
import numpy as np
import pytest
from discord.gateway import DiscordVoiceWebSocket

from alan.scheduler import TurnScheduler
from bot.discord.app import LOST_CONNECTION, AlanVoiceClient, VoiceSessions
from bot.discord.audio import DISCORD_FRAME_BYTES
from bot.discord.listen import VoiceListener
from bot.discord.session import VoiceSession, participant
from bot.discord.text import answer_mention
from engine.addressing import ListenMode
from engine.audio import CSM_RATE, WHISPER_RATE, Samples, decode_audio, is_ogg_opus
from engine.conversation import Conversation
from engine.store.repository import Store
from engine.stt import WhisperTranscriber
from engine.tts.csm import CsmSpeech
from engine.vad import Utterance
from tests.discord_doubles import (
    FakeClock,
    FakeGuild,
    FakeMember,
    FakeVoiceChannel,
    FakeVoiceClient,
    FakeVoiceState,
    play_out,
    silence,
    speech_16k,
)
from tests.discord_packets import XCHACHA20, DiscordSender, Speech
from tests.engine_harness import make_conversation
from tests.fakes.ollama_server import FakeOllama

CHUNK = 320  # 20 ms at 16 kHz: what the receive layer hands over per Opus frame


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speech_16k("Hello, can you hear me? Tell me something.", tmp_path_factory.mktemp("q") / "q.wav")


@pytest.fixture(scope="module")
def interjection(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speech_16k("Wait, stop, stop.", tmp_path_factory.mktemp("i") / "i.wav", voice="en+f3")


def chunks(audio: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(audio), CHUNK):
        yield audio[start : start + CHUNK]


class Room:
    """A server with one voice channel, Ann and Bob in it, aLAN connected (through the Discord doubles)."""

    def __init__(self) -> None:
        self.guild = FakeGuild()
        self.channel = FakeVoiceChannel(self.guild)
        self.ann = self.channel.enter(self.guild.add(FakeMember("ann")))
        self.bob = self.channel.enter(self.guild.add(FakeMember("bob")))
        self.music_bot = self.channel.enter(self.guild.add(FakeMember("jukebox", bot=True)))


async def joined(
    room: Room, conversation: Conversation, clock: FakeClock, listen: ListenMode | None = ListenMode.ALWAYS
) -> tuple[VoiceSession, FakeVoiceClient]:
    # The tiny Whisper hears gibberish, never aLAN's name: these tests of the audio path have it answer everything
    # (tests/test_group_voice.py covers when it answers, on the real Whisper).
    if listen is not None:
        await conversation.set_listen_mode(str(room.channel.id), listen)
    client = await room.channel.connect(cls=AlanVoiceClient, reconnect=True, self_deaf=False)
    session = VoiceSession(conversation, client, TurnScheduler(), clock=clock)
    session.start()
    return session, client


async def test_a_members_words_become_a_turn_whose_answer_is_played(
    conversation: Conversation, ollama: FakeOllama, store: Store, question: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, room = FakeClock(), Room()
    session, client = await joined(room, conversation, clock)
    ollama.script("Yes, I hear you.")
    given: list[object] = []
    turn = conversation.turn

    def spy(*args: object, **kwargs: object) -> object:
        given.append(kwargs.get("audio"))
        return turn(*args, **kwargs)

    monkeypatch.setattr(conversation, "turn", spy)
    on_audio = client.receiver.on_audio
    assert on_audio is not None
    # The music bot plays all along: never a turn. Ann talks, with her media timestamps, 20 ms at a time.
    for index, chunk in enumerate(chunks(np.concatenate([silence(0.2), question]))):
        on_audio(room.music_bot.id, chunk, index * 0.02)
        on_audio(room.ann.id, chunk, index * 0.02)
        clock.advance(0.02)
    assert session.listener.is_speaking(room.ann.id) and not session._tasks
    # She stops; Discord sends nothing. Only the passing time tells the VAD she is done.
    clock.advance(0.5)
    session.listener.tick()
    assert not session._tasks  # still within the 700 ms hang-over
    clock.advance(0.5)
    session.listener.tick()
    assert len(session._tasks) == 1

    frames = await play_out(client, clock)
    await asyncio.gather(*session._tasks)
    assert frames[-1] == b"" and all(len(frame) == DISCORD_FRAME_BYTES for frame in frames[:-1])
    audible = [frame for frame in frames[:-1] if any(frame)]
    assert audible, "the answer must be heard"
    # Her PCM went in as it is, at the VAD's 16 kHz: no WAV file in between.
    [heard_pcm] = given
    assert isinstance(heard_pcm, Samples) and heard_pcm.sample_rate == WHISPER_RATE
    assert heard_pcm.audio.dtype == np.float32 and heard_pcm.audio.ndim == 1

    user = store.find_user("discord", str(room.ann.id))
    assert user is not None and user.display_name == "Ann"
    turns = store.recent_turns(user.id, str(room.channel.id))  # her history, scoped to the voice channel
    assert [(turn.role, bool(turn.text)) for turn in turns] == [("user", True), ("assistant", True)]
    assert turns[1].text == "Yes, I hear you."
    assert is_ogg_opus(turns[0].audio)  # encoded once, for storage
    heard = decode_audio(turns[0].audio, WHISPER_RATE)
    assert 0.8 * len(question) / WHISPER_RATE < len(heard) / WHISPER_RATE < len(question) / WHISPER_RATE + 1.0
    # What was played is what the engine made and stored (20 ms frames, one padded).
    stored = decode_audio(turns[1].audio, CSM_RATE)
    assert abs(len(frames[:-1]) * 0.02 - len(stored) / CSM_RATE) < 0.1 + 0.02 * client.played[0].silence_frames
    assert len(ollama.chat_requests) == 1  # the music bot never got a turn
    assert room.channel.sent == []
    await session.close()


async def test_talking_over_the_reply_stops_it_within_200_ms_and_keeps_only_what_was_said(
    conversation: Conversation, ollama: FakeOllama, store: Store, interjection: np.ndarray
) -> None:
    clock, room = FakeClock(), Room()
    session, client = await joined(room, conversation, clock)
    # The first sentence comes at once; the rest of the reply only 20 s later (a slow LLM).
    ollama.script("First sentence here. S", "econd sentence there. Third one too.", chunk_delay=20.0)
    answer = asyncio.create_task(session.answer(participant(room.ann, room.channel.id), text="tell me things"))

    # Be the player: hear the whole first sentence; the engine then waits for the LLM's next words.
    frames: list[bytes] = []
    for _ in range(3000):
        playback = session.playback
        # (Less than a frame may wait for the next sentence's audio, to continue it seamlessly.)
        if playback is not None and playback.result.spoken and playback.source.buffered_seconds <= 0.02:
            break
        frame = client.pull()
        if frame is None or not any(frame):
            await asyncio.sleep(0.005)
        if frame is not None:
            frames.append(frame)
            clock.advance(0.02)
    else:
        raise AssertionError("the first sentence was never played")
    assert playback is not None and playback.audible and not answer.done()
    heard_seconds = playback.source.played_seconds

    # Bob talks over it. Each 20 ms: his audio arrives, then the player thread reads its next frame.
    on_audio = client.receiver.on_audio
    assert on_audio is not None
    lead = silence(0.1)
    speech_from = clock() + len(lead) / WHISPER_RATE
    stopped_at = None
    for index, chunk in enumerate(chunks(np.concatenate([lead, interjection]))):
        on_audio(room.bob.id, chunk, index * 0.02)
        if client.pull() in (b"", None):
            stopped_at = clock()
            break
        clock.advance(0.02)
    assert stopped_at is not None, "the reply never stopped"
    assert stopped_at - speech_from <= 0.200
    assert playback.source.stopped_at is not None and playback.source.stopped_at - speech_from <= 0.200

    result = await asyncio.wait_for(answer, 10)
    assert result.interrupted and result.sentences == ["First sentence here."]
    user = store.find_user("discord", str(room.ann.id))
    assert user is not None
    turns = store.recent_turns(user.id, str(room.channel.id))
    assert [(turn.role, turn.text) for turn in turns] == [
        ("user", "tell me things"),
        ("assistant", "First sentence here."),
    ]
    said = decode_audio(turns[1].audio, CSM_RATE)
    assert len(said) / CSM_RATE <= heard_seconds + 0.05  # nothing stored that nobody heard
    assert session.playback is None
    await session.close()


async def test_the_live_receive_layer_at_16_khz_hears_each_member_despite_garbage(speech_wav: Path) -> None:
    user_a, user_b, ssrc_a, ssrc_b = 111, 222, 0x1111, 0x2222
    speech = Speech(speech_wav)
    heard: dict[int, list[Utterance]] = {user_a: [], user_b: []}
    listener = VoiceListener(
        on_speech_start=lambda user: None, on_utterance=lambda user, utterance: heard[user].append(utterance)
    )
    key = os.urandom(32)
    async with discord.Client(intents=discord.Intents.none()) as client:
        vc = AlanVoiceClient(client, discord.Object(id=333))  # type: ignore[arg-type]
        assert vc.receiver.processor.sample_rate == WHISPER_RATE  # Opus decodes straight to Whisper's rate
        connection = vc._connection
        connection.ssrc, connection.mode, connection.secret_key = 0x9999, XCHACHA20, list(key)
        connection._create_socket()
        connection.socket.bind(("127.0.0.1", 0))
        address = connection.socket.getsockname()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            vc.receiver.start(listener.on_audio)
            ws = DiscordVoiceWebSocket(None, loop=vc.loop, hook=connection.hook)  # type: ignore[arg-type]
            ws._connection, connection.ws = connection, ws
            for user, ssrc in ((user_a, ssrc_a), (user_b, ssrc_b)):
                await ws.received_message({"op": 5, "d": {"user_id": str(user), "ssrc": ssrc, "speaking": 1}})
            sender_a, sender_b = DiscordSender(ssrc_a, key), DiscordSender(ssrc_b, key)
            wrong_key = DiscordSender(ssrc_b, os.urandom(32))
            for index, frame in enumerate(speech.opus):
                udp.sendto(sender_a.packet(frame), address)
                udp.sendto(sender_b.packet(frame), address)
                if index % 10 == 0:
                    udp.sendto(os.urandom(60), address)  # garbage
                    udp.sendto(wrong_key.packet(frame, advance=False), address)  # undecryptable
                # Paced at 5x real time (Discord sends one packet per 20 ms): in a burst a busy machine's socket
                # buffer overflows and drops packets, which real pacing doesn't.
                await asyncio.sleep(0.004)
            for _ in range(40):  # Discord sends nothing now: real time passes, the listener's tick ends the turn
                await asyncio.sleep(0.1)
                listener.tick()
                if heard[user_a] and heard[user_b]:
                    break
        finally:
            vc.receiver.close()
            connection._socket_reader.stop()
            connection.socket.close()
            udp.close()
    stats = vc.receiver.processor.stats
    assert stats.decrypt_failed > 0  # the bad packets were dropped, with a log line, not a crash
    for user in (user_a, user_b):
        assert len(heard[user]) == 1, heard
        assert heard[user][0].seconds == pytest.approx(len(speech.mono) / 48_000, abs=0.8)


class FakeTextChannel:
    def __init__(self) -> None:
        self.id = 777
        self.sent: list[str] = []
        self.typing_entered = 0

    async def send(self, text: str) -> None:
        self.sent.append(text)

    def typing(self) -> FakeTextChannel:
        return self

    async def __aenter__(self) -> None:
        self.typing_entered += 1

    async def __aexit__(self, *exc: object) -> None:
        return None


class FakeMessage:
    def __init__(self, author: FakeMember, content: str, mentions: list[FakeMember], channel: FakeTextChannel) -> None:
        self.author, self.content, self.mentions, self.channel = author, content, mentions, channel
        self.replies: list[str] = []

    async def reply(self, text: str, *, mention_author: bool = True) -> None:
        self.replies.append(text)


async def test_mentions_get_a_text_answer_and_a_spoken_one_in_our_voice_channel(
    conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    clock, room, text_channel = FakeClock(), Room(), FakeTextChannel()
    alan = room.guild.me
    queue = TurnScheduler()
    carol = room.guild.add(FakeMember("carol"))  # not in voice
    ollama.script("Lima is the capital.")
    message = FakeMessage(carol, f"<@{alan.id}> what is the capital of Peru?", [alan], text_channel)
    reply = await answer_mention(message, bot_user=alan, conversation=conversation, scheduler=queue, session=None)
    assert reply == message.replies[0] == "Lima is the capital."
    assert text_channel.typing_entered == 1
    # A server's text channel is one conversation too: the LLM reads who asked.
    assert ollama.chat_requests[-1]["messages"][-1]["content"] == "Carol: what is the capital of Peru?"
    user = store.find_user("discord", str(carol.id))
    assert user is not None and [t.role for t in store.recent_turns(user.id, str(text_channel.id))] == [
        "user",
        "assistant",
    ]

    # Ann is in the voice channel with aLAN: the answer is spoken there too, in the voice channel's scope.
    session, client = await joined(room, conversation, clock)
    ollama.script("Spoken and written.")
    message = FakeMessage(room.ann, f"<@!{alan.id}> say it aloud", [alan], text_channel)
    replying = asyncio.create_task(
        answer_mention(message, bot_user=alan, conversation=conversation, scheduler=queue, session=session)
    )
    frames = await play_out(client, clock)
    assert await replying == "Spoken and written."
    assert message.replies == ["Spoken and written."] and any(any(frame) for frame in frames)
    ann = store.find_user("discord", str(room.ann.id))
    assert ann is not None and len(store.recent_turns(ann.id, str(room.channel.id))) == 2

    # Not for us, from a bot, or too long: ignored, ignored, and a clear answer.
    assert await answer_mention(FakeMessage(carol, "hi all", [], text_channel), bot_user=alan,
                                conversation=conversation, scheduler=queue, session=None) is None  # fmt: skip
    robot = FakeMessage(room.music_bot, f"<@{alan.id}> hi", [alan], text_channel)
    assert await answer_mention(robot, bot_user=alan, conversation=conversation, scheduler=queue, session=None) is None
    assert robot.replies == []
    long = FakeMessage(carol, f"<@{alan.id}> " + "word " * 2000, [alan], text_channel)
    await answer_mention(long, bot_user=alan, conversation=conversation, scheduler=queue, session=None)
    assert "too long" in long.replies[0]
    await session.close()


async def test_leaves_when_the_last_person_leaves(conversation: Conversation) -> None:
    room = Room()
    sessions = VoiceSessions(conversation, TurnScheduler())
    session = await sessions.join(room.channel)
    client = session.voice_client
    assert room.channel.connects == [{"cls": AlanVoiceClient, "reconnect": True, "self_deaf": False}]
    assert client.receiver.listening

    async def leaves(member: FakeMember) -> None:
        room.channel.members.remove(member)
        member.voice = None
        await sessions.on_voice_state_update(member, FakeVoiceState(room.channel), FakeVoiceState(None), 0)

    await leaves(room.ann)
    assert sessions.get(room.guild.id) is session  # Bob is still there (the music bot doesn't count)
    await leaves(room.bob)
    assert sessions.get(room.guild.id) is None
    assert client.disconnects == 1 and not client.receiver.listening
    assert room.channel.connects == [{"cls": AlanVoiceClient, "reconnect": True, "self_deaf": False}]  # no rejoin


async def test_a_dropped_connection_is_re_established_unless_we_were_removed(conversation: Conversation) -> None:
    room = Room()
    sessions = VoiceSessions(conversation, TurnScheduler(), rejoin_delays=(0.0, 0.0, 0.0))
    session = await sessions.join(room.channel)
    first = session.voice_client
    room.channel.fail_connects = 1  # the first attempt times out; the second works
    first.drop()
    for _ in range(50):
        await asyncio.sleep(0)
        if session.voice_client is not first:
            break
    assert len(room.channel.connects) == 3
    second = session.voice_client
    assert second is not first and second.receiver.listening  # listening again on the new connection
    assert sessions.get(room.guild.id) is session

    # A member removes aLAN from the channel: discord.py cleans up, and aLAN stays out.
    alan = room.guild.me
    await sessions.on_voice_state_update(alan, FakeVoiceState(room.channel), FakeVoiceState(None), alan.id)
    second.drop()
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(room.channel.connects) == 3 and sessions.get(room.guild.id) is None
    assert room.channel.sent == []

    # Every attempt failing: give up, and say so in the channel.
    session = await sessions.join(room.channel)
    room.channel.fail_connects = 3
    session.voice_client.drop()
    for _ in range(50):
        await asyncio.sleep(0)
    assert sessions.get(room.guild.id) is None
    assert room.channel.sent == [LOST_CONNECTION]


async def test_discord_pys_own_reconnect_is_no_kick_and_a_later_drop_is_rejoined(conversation: Conversation) -> None:
    room = Room()
    sessions = VoiceSessions(conversation, TurnScheduler(), rejoin_delays=(0.0,))
    session = await sessions.join(room.channel)
    first, alan = session.voice_client, room.guild.me
    # discord.py reconnects by itself: it leaves voice first (channel None), then comes back in.
    await sessions.on_voice_state_update(alan, FakeVoiceState(room.channel), FakeVoiceState(None), alan.id)
    await sessions.on_voice_state_update(alan, FakeVoiceState(None), FakeVoiceState(room.channel), alan.id)
    assert not session.kicked
    first.drop()  # later, the connection is lost for good: aLAN comes back
    for _ in range(50):
        await asyncio.sleep(0)
        if session.voice_client is not first:
            break
    assert len(room.channel.connects) == 2 and session.voice_client is not first
    assert sessions.get(room.guild.id) is session
    await sessions.close()


async def test_an_engine_failure_is_said_in_the_channel_and_the_others_are_still_heard(
    store: Store, whisper: WhisperTranscriber, tiny_speech: CsmSpeech, tiny_csm_dir: Path, question: np.ndarray
) -> None:
    # Nothing listens on the discard port: the LLM is down.
    conversation = make_conversation(store, whisper, tiny_speech, tiny_csm_dir, "http://127.0.0.1:9")
    clock, room = FakeClock(), Room()
    session, client = await joined(room, conversation, clock)
    on_audio = client.receiver.on_audio
    assert on_audio is not None
    for member in (room.ann, room.bob):
        for index, chunk in enumerate(chunks(np.concatenate([silence(0.2), question]))):
            on_audio(member.id, chunk, index * 0.02)
        clock.advance(1.0)
        session.listener.tick()
        await asyncio.wait_for(asyncio.gather(*session._tasks), 30)
    # Each got the engine's own words (no traceback, no crash), and what they said was kept.
    assert len(room.channel.sent) == 2 and all("language model" in text for text in room.channel.sent)
    for member in (room.ann, room.bob):
        user = store.find_user("discord", str(member.id))
        assert user is not None and [t.role for t in store.recent_turns(user.id, str(room.channel.id))] == ["user"]
    assert client.played == []
    await session.close()
