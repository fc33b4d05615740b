"""engine/vad.py on real speech (espeak-ng) with the real Silero model that faster-whisper ships."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from engine.audio import WHISPER_RATE
from engine.vad import SpeechEnded, SpeechStarted, StreamingVad, Utterance, VadConfig, VadEvent
from tests.discord_doubles import silence, speech_16k


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speech_16k("Hello there, this is the first thing I say.", tmp_path_factory.mktemp("a") / "a.wav")


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speech_16k("And this is the second one, after a pause.", tmp_path_factory.mktemp("b") / "b.wav")


def feed_in_frames(vad: StreamingVad, audio: np.ndarray, frame: int = 320) -> list[tuple[float, VadEvent]]:
    """Feed 20 ms at a time, as Discord delivers it; note where in the stream each event came out."""
    out: list[tuple[float, VadEvent]] = []
    for start in range(0, len(audio), frame):
        for event in vad.feed(audio[start : start + frame]):
            out.append(((start + frame) / WHISPER_RATE, event))
    return out


def noise_blip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * WHISPER_RATE)) * 0.3).astype(np.float32)


def test_finds_each_utterance_where_the_speech_is_and_ignores_a_noise_blip(
    first: np.ndarray, second: np.ndarray
) -> None:
    lead, gap, blip_at_gap = 0.5, 1.2, 0.1
    audio = np.concatenate([silence(lead), first, silence(gap), noise_blip(blip_at_gap), silence(1.0), second,
                            silence(1.0)])  # fmt: skip
    second_start = lead + len(first) / WHISPER_RATE + gap + blip_at_gap + 1.0
    events = feed_in_frames(StreamingVad(), audio)

    kinds = [type(event) for _, event in events]
    # The blip started nothing: two utterances, each started, said, ended.
    assert kinds == [SpeechStarted, Utterance, SpeechEnded] * 2, events
    utterances = [event for _, event in events if isinstance(event, Utterance)]
    assert all(event.kept for _, event in events if isinstance(event, SpeechEnded))
    # Each utterance covers its speech, with a little padding, and not much more.
    for utterance, begin, speech in ((utterances[0], lead, first), (utterances[1], second_start, second)):
        end = begin + len(speech) / WHISPER_RATE
        assert begin - 0.25 <= utterance.start <= begin + 0.1
        assert end - 0.3 <= utterance.end <= end + 0.3
        assert not utterance.cut and utterance.seconds == pytest.approx(utterance.end - utterance.start)
    # Speech start is reported early (for barge-in); the utterance once the ~700 ms hang-over has passed.
    started_at, ended_at = events[0][0], events[1][0]
    assert 0 < started_at - lead < 0.2
    assert 0.6 <= ended_at - (lead + len(first) / WHISPER_RATE) <= 1.0
    # The utterance audio is the input audio, untouched.
    offset = round(utterances[0].start * WHISPER_RATE)
    np.testing.assert_array_equal(utterances[0].audio, audio[offset : offset + len(utterances[0].audio)])


def test_short_speech_is_noise_and_long_speech_is_split_at_the_max_length(first: np.ndarray) -> None:
    vad = StreamingVad(VadConfig(min_speech_ms=300))
    blip = first[int(0.3 * WHISPER_RATE) : int(0.45 * WHISPER_RATE)]  # 150 ms of a real word: too short
    events = [event for _, event in feed_in_frames(vad, np.concatenate([silence(0.5), blip, silence(1.0)]))]
    assert not [event for event in events if isinstance(event, Utterance)]
    assert [event.kept for event in events if isinstance(event, SpeechEnded)] in ([], [False])

    vad = StreamingVad(VadConfig(max_speech_s=1.0))
    events = [event for _, event in feed_in_frames(vad, np.concatenate([silence(0.3), first, silence(1.0)]))]
    pieces = [event for event in events if isinstance(event, Utterance)]
    assert len(pieces) >= 3  # 2.9 s of speech, at most 1 s a piece
    assert all(piece.seconds <= 1.0 + 1e-6 for piece in pieces)
    # Cut mid-speech where the speaker didn't pause, ended normally where they did (no word is lost either way).
    assert any(piece.cut for piece in pieces)
    # Back to back while the speaker goes on: nothing of what was said falls between the pieces.
    for before, after in itertools.pairwise(pieces):
        if before.cut:
            assert after.start == pytest.approx(before.end)
    assert pieces[-1].end >= 0.3 + len(first) / WHISPER_RATE - 0.5  # up to the end of the speech
    ends = [event for event in events if isinstance(event, SpeechEnded)]
    assert ends and all(end.kept for end in ends)


def test_silence_that_never_arrived_ends_an_utterance(first: np.ndarray) -> None:
    # Discord sends nothing while someone is quiet: the listener tells the VAD how long it has been.
    vad = StreamingVad()
    events = [event for _, event in feed_in_frames(vad, np.concatenate([silence(0.2), first]))]
    assert vad.in_speech and not [event for event in events if isinstance(event, Utterance)]
    assert vad.advance_silence(int(0.3 * WHISPER_RATE)) == []  # not yet past the hang-over
    events = vad.advance_silence(int(0.6 * WHISPER_RATE))
    assert [type(event) for event in events] == [Utterance, SpeechEnded]
    assert not vad.in_speech
    assert vad.position == pytest.approx(0.2 + len(first) / WHISPER_RATE + 0.9, abs=0.04)
    # And the stream goes on normally afterwards.
    later = [event for _, event in feed_in_frames(vad, np.concatenate([first, silence(1.0)]))]
    assert [type(event) for event in later] == [SpeechStarted, Utterance, SpeechEnded]


def test_flush_finishes_what_is_being_said(first: np.ndarray) -> None:
    vad = StreamingVad()
    feed_in_frames(vad, np.concatenate([silence(0.2), first[: len(first) // 2]]))
    events = vad.flush()
    assert isinstance(events[0], Utterance) and events[0].seconds > 0.5
    assert isinstance(events[-1], SpeechEnded)


def test_speakers_do_not_share_state(first: np.ndarray, tmp_path: Path) -> None:
    a, b = StreamingVad(), StreamingVad()
    feed_in_frames(a, np.concatenate([silence(0.2), first[: len(first) // 2]]))
    assert a.in_speech and not b.in_speech
    assert feed_in_frames(b, silence(1.0)) == []
