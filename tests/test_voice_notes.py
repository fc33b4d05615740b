"""How a reply is cut into voice notes: the first at once, later ones gathering audio, none past the maximum."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from engine.audio import decode_audio
from engine.conversation import Conversation, Participant
from engine.events import SpeechChunk, SpeechUnavailable, TurnEvent, VoiceNote
from engine.speech_synthesizer import AudioChunk
from engine.store.database import open_database
from engine.store.repository import Store
from engine.tts.tone import ToneStream, ToneSynthesizer
from engine.turn_memory import SpokenSentence
from engine.voice_notes import NoteCutter, NotePolicy, encode_note
from tests.fakes.scripted_chat import ScriptedChat

RATE = 24_000


def sentence(text: str, seconds: float) -> SpokenSentence:
    samples = (0.2 * np.sin(np.arange(int(seconds * RATE)) * 0.05)).astype(np.float32)
    return SpokenSentence(text, samples, RATE, None)


def cut(policy: NotePolicy, seconds: list[float]) -> list[list[int]]:
    cutter = NoteCutter(policy)
    notes = []
    for index, length in enumerate(seconds):
        notes += cutter.add(index, sentence(f"s{index}", length))
    notes += cutter.flush()
    return [[index for index, _ in note] for note in notes]


def test_the_first_note_goes_alone_and_later_ones_gather_at_least_the_minimum() -> None:
    assert cut(NotePolicy(min_seconds=5), [2, 2, 2, 2, 2, 1]) == [[0], [1, 2, 3], [4, 5]]


def test_no_minimum_makes_a_note_per_sentence() -> None:
    assert cut(NotePolicy(), [1, 1, 1]) == [[0], [1], [2]]


def test_a_note_never_passes_the_maximum() -> None:
    assert cut(NotePolicy(min_seconds=100, max_seconds=5, first_at_once=False), [2, 2, 2, 2]) == [[0, 1], [2, 3]]


async def test_a_note_is_one_ogg_opus_file_of_its_sentences() -> None:
    note = await encode_note([(3, sentence("Hello.", 1.0)), (4, sentence("Again.", 0.5))])
    assert note.data[:4] == b"OggS" and note.sentence_indices == (3, 4) and note.text == "Hello. Again."
    assert abs(note.seconds - 1.5) < 1e-9
    assert abs(len(decode_audio(note.data, RATE)) - 1.5 * RATE) <= 0.01 * RATE


# A reply cut into notes, through the conversation: what is stored is what went out in notes -----------------

ANN = Participant("telegram", "1", "chat-1", "Ann")
REPLY = ("This first sentence is long enough to be heard. ", "The second one breaks halfway. ", "A third.")


class BreaksOnSecondSentence(ToneSynthesizer):
    """Tones, until the second sentence: one chunk of it, then the model fails."""

    def stream(self, text, voice, context):  # type: ignore[no-untyped-def,override]
        stream = super().stream(text, voice, context)
        if text.startswith("The second"):
            stream._chunks = self._one_chunk_then_fail(stream)
        return stream

    @staticmethod
    async def _one_chunk_then_fail(stream: ToneStream) -> AsyncIterator[AudioChunk]:
        yield AudioChunk(stream._audio[:4800], 24_000)
        raise RuntimeError("CUDA error: device-side assert triggered")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(open_database(f"sqlite:///{tmp_path / 'alan.db'}"))


def conversation(store: Store, tts: ToneSynthesizer, chat: ScriptedChat) -> Conversation:
    return Conversation(store, None, tts, chat, max_audio_seconds=60, max_audio_bytes=1_000_000)  # type: ignore[arg-type]


async def test_speech_failing_mid_sentence_stores_the_notes_sent_and_the_whole_text(store: Store) -> None:
    chat = ScriptedChat()
    chat.script(*REPLY)
    events: list[TurnEvent] = [
        event async for event in conversation(store, BreaksOnSecondSentence(), chat).turn(
            ANN, text="hi", notes=NotePolicy()
        )
    ]
    notes = [event for event in events if isinstance(event, VoiceNote)]
    assert [note.sentence_indices for note in notes] == [(0,)]
    assert any(isinstance(event, SpeechUnavailable) for event in events)
    user = store.find_user("telegram", "1")
    reply = store.recent_turns(user.id, "chat-1")[-1]
    assert reply.text == "".join(REPLY).strip()  # the rest reached them as text
    assert reply.audio == notes[0].data  # not the half sentence that was made but never sent


async def test_a_turn_stopped_between_notes_keeps_only_what_went_out(store: Store) -> None:
    chat = ScriptedChat()
    chat.script("This first sentence is long enough to be heard. ", "A second one, still waiting for its note.")
    turn = conversation(store, ToneSynthesizer(), chat).turn(ANN, text="hi", notes=NotePolicy(min_seconds=1000))
    notes, chunks_of_second = [], 0
    async for event in turn:
        if isinstance(event, VoiceNote):
            notes.append(event)
        elif isinstance(event, SpeechChunk) and event.sentence_index == 1:
            chunks_of_second += 1
    # All made: the second sentence went out as the last note when the reply ended.
    assert [note.sentence_indices for note in notes] == [(0,), (1,)] and chunks_of_second

    chat.script("This first sentence is long enough to be heard. ", "A second one, still waiting for its note.")
    turn = conversation(store, ToneSynthesizer(), chat).turn(ANN, text="again", notes=NotePolicy(min_seconds=1000))
    sent = []
    async for event in turn:
        if isinstance(event, VoiceNote):
            sent.append(event)
        elif isinstance(event, SpeechChunk) and event.sentence_index == 1:
            break  # the platform stops the turn (shutting down) while the second sentence waits for its note
    await turn.aclose()
    user = store.find_user("telegram", "1")
    reply = store.recent_turns(user.id, "chat-1")[-1]
    assert reply.text == "This first sentence is long enough to be heard."
    assert reply.audio == sent[0].data
