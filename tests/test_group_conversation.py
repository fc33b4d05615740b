"""A group's one conversation in the engine, on the tiny models and the local Ollama server: CSM hears each person
as their own speaker with their real audio, `/reset` in a group clears the group's conversation, words not said to
aLAN owe no answer after a restart, and an answer resumed after a restart knows what the group said."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from engine.audio import WHISPER_RATE, Samples, decode_audio
from engine.conversation import Conversation, Participant
from engine.events import Overheard, ReplySentence, TurnFinished
from engine.group_talk import History, group_context, own_words, person_key, speaker_name
from engine.speech_synthesizer import ASSISTANT, ContextTurn
from engine.store.repository import Store
from tests.conftest import espeak
from tests.fakes.ollama_server import FakeOllama

ANN = Participant("discord", "11", "channel-1", "Ann", parent_scope="server", shared=True)
BOB = Participant("discord", "22", "channel-1", "Bob", parent_scope="server", shared=True)
LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def utterance(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    path = espeak("Shall we go to the beach on Saturday?", tmp_path_factory.mktemp("u") / "u.wav")
    return Samples(decode_audio(path.read_bytes(), WHISPER_RATE), WHISPER_RATE)


async def test_csm_hears_each_person_as_their_own_speaker_with_their_audio(
    csm_conversation: Conversation, ollama: FakeOllama, store: Store, utterance: Samples,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    tts: Any = csm_conversation._tts
    given: list[list[ContextTurn]] = []
    stream = tts.stream

    def spy(text: str, voice: Any, context: list[ContextTurn]) -> Any:
        given.append(list(context))
        return stream(text, voice, context)

    monkeypatch.setattr(tts, "stream", spy)
    # Ann speaks to Bob: kept, with her voice's payload, and not answered.
    events = [event async for event in csm_conversation.turn(ANN, audio=utterance, answer_if=lambda said: False)]
    assert isinstance(events[-1], Overheard) and not any(isinstance(e, ReplySentence) for e in events)
    assert ollama.chat_requests == [] and given == []
    # Bob speaks to aLAN: the reply hears Ann and Bob, each as a speaker of their own, with real audio.
    ollama.script("Sounds good.")
    events = [event async for event in csm_conversation.turn(BOB, audio=utterance, answer_if=lambda said: True)]
    assert isinstance(events[-1], TurnFinished)
    ann, bob = (store.find_user("discord", who.user_id) for who in (ANN, BOB))
    assert ann is not None and bob is not None
    context = given[0]
    assert [turn.speaker for turn in context] == [person_key(ann.id), person_key(bob.id)]
    assert all(turn.payload is not None for turn in context)
    speech = await tts.speech()
    _, segments = tts.segments(speech, None, [*context, ContextTurn(ASSISTANT, "Sounds good.")])
    assert [segment.speaker for segment in segments] == [1, 2, 0]  # aLAN is speaker 0, as its voice


async def test_reset_in_a_group_clears_everyones_words_there_and_only_there(
    conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    await conversation.overhear(ANN, text="lunch at noon?")
    [_ async for _ in conversation.turn(BOB, text="Alan, pizza or pasta?")]
    private = Participant("discord", "22", "dm-22", "Bob")
    [_ async for _ in conversation.turn(private, text="just between us")]
    assert len(store.shared_turns(ANN.scope)) == 3
    assert await conversation.reset(ANN) == 3  # anyone's /reset in the channel clears its conversation
    assert store.shared_turns(ANN.scope) == []
    bob = store.find_user("discord", "22")
    assert bob is not None and len(store.recent_turns(bob.id, "dm-22")) == 2  # elsewhere, nothing changed


async def test_words_not_said_to_alan_owe_no_answer_after_a_restart(
    conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    ollama.script("Pasta, Bob.")
    # Bob's question was stored, then the process stopped before the answer; Ann went on talking to him.
    ann, bob = store.user("discord", "11", "Ann"), store.user("discord", "22", "Bob")
    store.add_turn(ann.id, ANN.scope, "user", "I'm hungry", addressed=False)
    question = store.add_turn(bob.id, BOB.scope, "user", "Alan, pizza or pasta?")
    store.add_turn(ann.id, ANN.scope, "user", "me too", addressed=False)
    store.add_turn(bob.id, BOB.scope, "user", "or sushi", addressed=False)
    pending = await conversation.unanswered("discord", LONG_AGO)
    assert [(turn.who.user_id, turn.turn_id) for turn in pending] == [("22", question.id)]
    # Answered as the group's conversation: what came before the question, under each name.
    who = Participant("discord", "22", BOB.scope, "Bob", shared=True)
    events = [event async for event in conversation.resume(who, question.id, speak=False)]
    assert isinstance(events[-1], TurnFinished)
    [request] = ollama.chat_requests
    assert [(m["role"], m["content"]) for m in request["messages"][1:]] == [
        ("user", "Ann: I'm hungry\nBob: Alan, pizza or pasta?")
    ]
    assert await conversation.unanswered("discord", LONG_AGO) == []


async def test_after_a_restart_chatter_neither_hides_a_question_nor_crowds_out_its_context(
    conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    ann, bob = store.user("discord", "11", "Ann"), store.user("discord", "22", "Bob")
    store.add_turn(ann.id, ANN.scope, "user", "I'm hungry", addressed=False)
    question = store.add_turn(bob.id, BOB.scope, "user", "Alan, pizza or pasta?")
    for index in range(60):  # the group talked on, Bob too, long enough to fill a whole history after it
        store.add_turn((ann if index % 2 else bob).id, ANN.scope, "user", f"chatter {index}", addressed=False)
    who = Participant("discord", "22", BOB.scope, "Bob", shared=True)
    # The history given with the question is what came before it, not the chatter that followed.
    ollama.script("Pasta.")
    [_ async for _ in conversation.resume(who, question.id, speak=False)]
    [request] = ollama.chat_requests
    assert request["messages"][-1]["content"] == "Ann: I'm hungry\nBob: Alan, pizza or pasta?"
    # And the apology for a turn too old to answer is stored as its reply, despite Bob's chatter since.
    later = store.add_turn(bob.id, BOB.scope, "user", "Alan, still there?")
    store.add_turn(bob.id, BOB.scope, "user", "hello?? anyone", addressed=False)
    assert await conversation.close_unanswered(who, later.id, "Sorry, I didn't get to that.")
    assert await conversation.unanswered("discord", LONG_AGO) == []


def test_names_are_one_line_and_never_empty() -> None:
    assert speaker_name("  Ann\n Smith: ") == "Ann Smith"
    assert speaker_name(None) == speaker_name("   ") == "Someone"
    assert len(speaker_name("x" * 500)) == 40
    history = History([], shared=True)
    assert history.said("Bob", "hi") == "Bob: hi" and History([]).said("Bob", "hi") == "hi"
    told = group_context("Bob", "Alan", name_them=True)
    assert "answer Bob" in told and "saying Bob's name" in told and "(Alan)" in told
    assert "saying" not in group_context("Bob", "Alan", name_them=False)


async def test_the_reply_is_alans_own_words_not_a_script_of_the_group(
    conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    # Having read "Name: words" lines, a small model writes its own that way and then goes on as someone else.
    ollama.script("Ala", "n: Pasta is best", ", Bob.\nB", "ob: Thanks, Alan!\nAnn: me too")
    events = [event async for event in conversation.turn(BOB, text="Alan, pizza or pasta?")]
    assert [event.text for event in events if isinstance(event, ReplySentence)] == ["Pasta is best, Bob."]
    assert [turn.text for turn, _ in store.shared_turns(BOB.scope)] == ["Alan, pizza or pasta?", "Pasta is best, Bob."]


@pytest.mark.parametrize(
    ("parts", "kept"),
    [
        (["Sure thing, Bob. ", "Tomorrow: sunny."], "Sure thing, Bob. Tomorrow: sunny."),  # a colon mid-line stays
        (["Note: this is fine."], "Note: this is fine."),  # a label that is nobody's name stays
        (["Two lines\nand ", "more"], "Two lines\nand more"),
        (["Bob: sure, ", "pasta.\nAnn: me too"], "sure, pasta.\n"),  # copying the lines it read, then Ann's
        (["**Alan:** Hi", " there."], "Hi there."),
        (["**", "Alan", ":**", " Hi Bob"], " Hi Bob"),  # a label arriving token by token
        (["Sure", "!\n", "**", "Bob", ":** thanks"], "Sure!\n"),
        (["**Bold** words."], "**Bold** words."),
    ],
)
async def test_own_words_keeps_everything_else(parts: list[str], kept: str) -> None:
    async def deltas() -> Any:
        for part in parts:
            yield part

    assert "".join([delta async for delta in own_words(deltas(), "Alan", ["Ann", "Bob"])]) == kept
