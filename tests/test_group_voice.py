"""A group conversation in a Discord voice channel, end to end: real speech (espeak-ng) heard per member through the
VAD and the real Whisper base, one shared conversation per channel, answers only when aLAN is addressed, the LLM
request as the local Ollama server receives it, and the reply played through the Discord player doubles.

The clock is the test's: follow-up windows are crossed by advancing it, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from alan.scheduler import TurnScheduler
from bot.discord.app import AlanVoiceClient
from bot.discord.session import VoiceSession, participant
from engine.addressing import ListenMode
from engine.conversation import Conversation
from engine.llm import OllamaChat
from engine.store.repository import Store
from engine.stt import WhisperTranscriber
from engine.tts.tone import ToneSynthesizer
from tests.discord_doubles import (
    FakeClock,
    FakeGuild,
    FakeMember,
    FakeVoiceChannel,
    FakeVoiceClient,
    silence,
    speech_16k,
)
from tests.engine_harness import LLM_MODEL
from tests.fakes.ollama_server import FakeOllama

CHUNK = 320  # 20 ms at 16 kHz, as the receive layer hands it over
LINES = {
    "game": ("Did you watch the game last night?", "en"),
    "ask": ("Alan, what do you think?", "en+m3"),
    "more": ("And what about tomorrow?", "en+m3"),
    "joke": ("Alan, tell us a joke.", "en"),
    "beach": ("We should go to the beach.", "en"),  # Whisper base writes it in lower case
    "plans": (
        "We should go to the beach on Saturday. The weather will be warm and the water is calm. My brother wants "
        "to come along with his dog, and my sister will bring some sandwiches and cold drinks for everyone.",
        "en",
    ),
}


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    folder = tmp_path_factory.mktemp("lines")
    return {key: speech_16k(text, folder / f"{key}.wav", voice=voice) for key, (text, voice) in LINES.items()}


@pytest.fixture
def group_conversation(store: Store, real_whisper: WhisperTranscriber, ollama: FakeOllama) -> Conversation:
    """The real engine on the real Whisper (names must be heard right) and the tone synthesizer."""
    llm = OllamaChat(LLM_MODEL, ollama.host, first_token_timeout=30, token_timeout=30)
    return Conversation(
        store, real_whisper, ToneSynthesizer(), llm, max_audio_seconds=60, max_audio_bytes=20 * 1024 * 1024
    )


class Room:
    """A voice channel with aLAN connected, and whoever the test lets in."""

    def __init__(self, *names: str) -> None:
        self.guild = FakeGuild()
        self.channel = FakeVoiceChannel(self.guild)
        self.members = {name: self.channel.enter(self.guild.add(FakeMember(name))) for name in names}
        self.channel.enter(self.guild.add(FakeMember("jukebox", bot=True)))  # a bot is nobody to talk to
        self.scope = str(self.channel.id)

    def __getitem__(self, name: str) -> FakeMember:
        return self.members[name]


async def join(room: Room, conversation: Conversation, clock: FakeClock) -> tuple[VoiceSession, FakeVoiceClient]:
    client = await room.channel.connect(cls=AlanVoiceClient, reconnect=True, self_deaf=False)
    session = VoiceSession(conversation, client, TurnScheduler(), clock=clock)
    session.start()
    return session, client


def chunks(audio: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(audio), CHUNK):
        yield audio[start : start + CHUNK]


def say(session: VoiceSession, clock: FakeClock, member: FakeMember, audio: np.ndarray) -> None:
    """`member` says `audio`, 20 ms at a time, then stays quiet until the VAD ends their utterance."""
    on_audio = session.voice_client.receiver.on_audio
    for index, chunk in enumerate(chunks(np.concatenate([silence(0.2), audio]))):
        on_audio(member.id, chunk, index * 0.02)
        clock.advance(0.02)
    clock.advance(1.0)
    session.listener.tick()


async def turns_done(session: VoiceSession, client: FakeVoiceClient, clock: FakeClock) -> int:
    """Be the player while the queued turns run; returns how many audible frames were played."""
    tasks = list(session._tasks)
    assert tasks, "no utterance was heard"
    audible = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while not all(task.done() for task in tasks):
        assert loop.time() < deadline, "the turns never finished"
        frame = client.pull()
        if frame is None:
            await asyncio.sleep(0.01)
            continue
        audible += any(frame)
        clock.advance(0.02)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return audible


def contents(request: dict[str, Any]) -> list[tuple[str, str]]:
    return [(message["role"], message["content"]) for message in request["messages"]]


def heard(request: dict[str, Any]) -> list[tuple[str, str]]:
    """`contents` in lower case: whether Whisper capitalises "And" differs between CPUs (a near tie), not words."""
    return [(role, content.lower()) for role, content in contents(request)]


async def test_a_group_is_one_conversation_and_alan_answers_only_when_spoken_to(
    group_conversation: Conversation, ollama: FakeOllama, store: Store, lines: dict[str, np.ndarray]
) -> None:
    clock, room = FakeClock(), Room("ann", "bob")
    session, client = await join(room, group_conversation, clock)
    ann, bob = room["ann"], room["bob"]

    # Ann talks to Bob, without aLAN's name: kept, not answered.
    say(session, clock, ann, lines["game"])
    assert await turns_done(session, client, clock) == 0
    assert ollama.chat_requests == []

    # Bob asks aLAN by name: answered, and the LLM knows what Ann said, under her name.
    ollama.script("I missed it, Bob. Was it good?")
    say(session, clock, bob, lines["ask"])
    assert await turns_done(session, client, clock) > 0
    [request] = ollama.chat_requests
    assert heard(request)[1:] == [
        ("user", "ann: did you watch the game last night?\nbob: alan, what do you think?"),
    ]
    system = request["messages"][0]["content"]
    assert "group conversation" in system and "answer Bob" in system and "saying Bob's name" in system

    # Bob goes on without the name, right after the answer: a follow-up, answered.
    ollama.script("Tomorrow looks sunny.")
    say(session, clock, bob, lines["more"])
    assert await turns_done(session, client, clock) > 0
    assert heard(ollama.chat_requests[-1])[-1] == ("user", "bob: and what about tomorrow?")

    # Ann asks a question right after aLAN spoke: taken as put to it.
    ollama.script("Yes, Ann, it was close.")
    say(session, clock, ann, lines["game"])
    assert await turns_done(session, client, clock) > 0
    assert len(ollama.chat_requests) == 3

    # Long after, Ann's words without the name are for the others again.
    clock.advance(10.0)
    say(session, clock, ann, lines["more"])
    assert await turns_done(session, client, clock) == 0
    assert len(ollama.chat_requests) == 3

    kept = store.shared_turns(room.scope)
    assert [(turn.role, name, turn.addressed) for turn, name in kept] == [
        ("user", "Ann", False),
        ("user", "Bob", True),
        ("assistant", "Bob", True),
        ("user", "Bob", True),
        ("assistant", "Bob", True),
        ("user", "Ann", True),
        ("assistant", "Ann", True),
        ("user", "Ann", False),
    ]
    assert all(turn.audio for turn, _ in kept)  # everyone's real audio, kept with their words

    # Ann asks to be forgotten: her words leave the channel's conversation and the next prompt.
    assert await group_conversation.forget(participant(ann, room.channel.id))
    ollama.script("Just us now, Bob.")
    say(session, clock, bob, lines["ask"])
    assert await turns_done(session, client, clock) > 0
    prompt = " ".join(content for _, content in contents(ollama.chat_requests[-1]))
    assert "ann:" not in prompt.lower() and "game last night" not in prompt.lower() and "close" not in prompt.lower()
    assert "bob: and what about tomorrow?" in prompt.lower()
    assert {name for _, name in store.shared_turns(room.scope)} == {"Bob"}
    assert store.find_user("discord", str(ann.id)) is None
    await session.close()


async def test_alone_with_one_person_every_utterance_is_answered(
    group_conversation: Conversation, ollama: FakeOllama, lines: dict[str, np.ndarray]
) -> None:
    clock, room = FakeClock(), Room("ann")
    session, client = await join(room, group_conversation, clock)
    ollama.script("It was a great game.")
    ollama.script("The ending was the best part.")
    say(session, clock, room["ann"], lines["game"])
    assert await turns_done(session, client, clock) > 0
    clock.advance(30.0)  # no follow-up window: alone, everything is for aLAN
    say(session, clock, room["ann"], lines["beach"])
    assert await turns_done(session, client, clock) > 0
    assert [heard(request)[-1][1] for request in ollama.chat_requests] == [
        "ann: did you watch the game last night?",
        "ann: we should go to the beach.",
    ]
    # One person present: the reply isn't told to start with a name.
    assert "saying Ann's name" not in ollama.chat_requests[0]["messages"][0]["content"]
    await session.close()


async def test_listen_off_says_nothing_and_keeps_the_conversation(
    group_conversation: Conversation, ollama: FakeOllama, store: Store, lines: dict[str, np.ndarray]
) -> None:
    clock, room = FakeClock(), Room("ann", "bob")
    session, client = await join(room, group_conversation, clock)
    await group_conversation.set_listen_mode(room.scope, ListenMode.OFF)
    say(session, clock, room["bob"], lines["ask"])  # even by name
    assert await turns_done(session, client, clock) == 0
    assert ollama.chat_requests == [] and client.played == []
    [(turn, name)] = store.shared_turns(room.scope)
    assert (name, turn.addressed, turn.text.lower()) == ("Bob", False, "alan, what do you think?")

    # A mention in text is still answered, in text only.
    ollama.script("I'm here, just listening.")
    written = await session.answer(participant(room["ann"], room.channel.id), text="are you there?")
    assert written.text == "I'm here, just listening." and written.played_seconds == 0 and client.played == []
    # Back to `always`: everything is answered, and the context kept while off is there.
    await group_conversation.set_listen_mode(room.scope, ListenMode.ALWAYS)
    ollama.script("I was listening all along.")
    say(session, clock, room["ann"], lines["beach"])
    assert await turns_done(session, client, clock) > 0
    assert heard(ollama.chat_requests[-1])[-1] == ("user", "ann: we should go to the beach.")
    assert ("user", "bob: alan, what do you think?\nann: are you there?") in heard(ollama.chat_requests[-1])
    await session.close()


async def test_two_people_asking_at_once_are_answered_in_order_each_by_name(
    group_conversation: Conversation, ollama: FakeOllama, lines: dict[str, np.ndarray]
) -> None:
    clock, room = FakeClock(), Room("ann", "bob")
    session, client = await join(room, group_conversation, clock)
    ollama.script("Ann, here is a joke.")
    ollama.script("Bob, I think so too.")
    on_audio = session.voice_client.receiver.on_audio
    # They talk over each other; Ann finishes first.
    ann_audio = np.concatenate([silence(0.2), lines["joke"], silence(1.5)])
    bob_audio = np.concatenate([silence(1.0), lines["ask"], silence(1.5)])
    size = max(len(ann_audio), len(bob_audio))
    ann_audio, bob_audio = (np.pad(audio, (0, size - len(audio))) for audio in (ann_audio, bob_audio))
    for index, (ann_chunk, bob_chunk) in enumerate(zip(chunks(ann_audio), chunks(bob_audio), strict=True)):
        on_audio(room["ann"].id, ann_chunk, index * 0.02)
        on_audio(room["bob"].id, bob_chunk, index * 0.02)
        clock.advance(0.02)
    assert len(session._tasks) == 2
    assert await turns_done(session, client, clock) > 0
    first, second = ollama.chat_requests
    assert "answer Ann" in first["messages"][0]["content"] and "saying Ann's name" in first["messages"][0]["content"]
    assert "answer Bob" in second["messages"][0]["content"] and "saying Bob's name" in second["messages"][0]["content"]
    # Bob's answer came second and knows the first: both of them were played, one after the other.
    assert ("assistant", "Ann, here is a joke.") in contents(second)
    assert len(client.played) == 2
    await session.close()


async def test_a_reply_waits_for_a_gap_before_it_speaks(
    group_conversation: Conversation, ollama: FakeOllama, store: Store, lines: dict[str, np.ndarray]
) -> None:
    clock, room = FakeClock(), Room("ann", "bob")
    session, client = await join(room, group_conversation, clock)
    ollama.script("Here is what I think.")
    say(session, clock, room["bob"], lines["ask"])
    # Ann starts talking to Bob while aLAN works on its answer, and goes on after it is ready.
    on_audio = session.voice_client.receiver.on_audio
    ann_audio = lines["plans"]
    index, ready_at = 0, None
    for index, chunk in enumerate(chunks(ann_audio)):
        on_audio(room["ann"].id, chunk, index * 0.02)
        clock.advance(0.02)
        await asyncio.sleep(0.01)  # real time for the turn to go on meanwhile
        assert client.pull() is None, "aLAN spoke over Ann"
        if ready_at is None and ollama.chat_requests:
            ready_at = index
        if ready_at is not None and index - ready_at >= 50:
            break
    assert ready_at is not None, "the answer was never made"
    # The answer is made and waits, unplayed, while she talks.
    assert session.playback is not None and not session.playback.started
    assert session.listener.is_speaking(room["ann"].id)
    # She stops: the answer plays in the gap.
    for extra in range(60):
        on_audio(room["ann"].id, silence(0.02), (index + 1 + extra) * 0.02)
        clock.advance(0.02)
    session.listener.tick()
    assert await turns_done(session, client, clock) > 0
    assert len(ollama.chat_requests) == 1  # Ann's words were for Bob: kept, not answered
    assert [name for _, name in store.shared_turns(room.scope)] == ["Bob", "Bob", "Ann"]
    await session.close()
