"""How a reply is cut into voice notes: the first at once, later ones gathering audio, none past the maximum."""

from __future__ import annotations

import numpy as np

from engine.audio import decode_audio
from engine.turn_memory import SpokenSentence
from engine.voice_notes import NoteCutter, NotePolicy, encode_note

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
