from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.audio import CSM_RATE, decode_audio
from engine.voice_prep import (
    PADDING_SECONDS,
    PEAK_LIMIT_DBFS,
    TARGET_RMS_DBFS,
    normalise_loudness,
    speech_seconds,
    trim_silence,
)


@pytest.fixture(scope="module")
def speech(speech_wav: Path) -> np.ndarray:
    return trim_silence(decode_audio(speech_wav, CSM_RATE), CSM_RATE)


def test_trims_leading_and_trailing_silence_but_keeps_the_speech(speech: np.ndarray) -> None:
    rng = np.random.default_rng(0)

    def room_tone(seconds: float) -> np.ndarray:
        return (rng.standard_normal(int(seconds * CSM_RATE)) * 1e-4).astype(np.float32)

    padded = np.concatenate([room_tone(2.0), speech, room_tone(3.0)])
    trimmed = trim_silence(padded, CSM_RATE)
    assert len(speech) - 0.1 * CSM_RATE <= len(trimmed) <= len(speech) + 2 * PADDING_SECONDS * CSM_RATE
    assert speech_seconds(padded, CSM_RATE) == pytest.approx(len(trimmed) / CSM_RATE)


def test_silence_trims_to_nothing() -> None:
    assert trim_silence(np.zeros(CSM_RATE * 2, dtype=np.float32), CSM_RATE).size == 0


def test_quiet_and_loud_clips_end_up_at_the_same_level(speech: np.ndarray) -> None:
    quiet = normalise_loudness(speech * 0.01, CSM_RATE)
    loud = normalise_loudness(speech * 0.9, CSM_RATE)
    assert np.sqrt(np.mean(quiet**2)) == pytest.approx(np.sqrt(np.mean(loud**2)), rel=0.01)
    assert np.max(np.abs(loud)) <= 10 ** (PEAK_LIMIT_DBFS / 20) + 1e-6
    # Speech frames land near the target level (pauses pull the whole-clip RMS a little lower).
    whole_clip_db = 20 * np.log10(np.sqrt(np.mean(loud**2)))
    assert TARGET_RMS_DBFS - 6 < whole_clip_db <= TARGET_RMS_DBFS + 0.5


def test_normalising_silence_leaves_it_silent() -> None:
    silence = np.zeros(CSM_RATE, dtype=np.float32)
    assert not np.any(normalise_loudness(silence, CSM_RATE))
