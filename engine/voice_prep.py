"""Getting a reference clip ready for voice cloning: trim the silence around it, even out its loudness.

CSM copies whatever it hears in the reference, pauses and level included: a clip with two seconds of room tone
before the speech makes replies that start with two seconds of room tone, and a quiet clip makes quiet replies.
Silence also costs budget (one position per 80 ms) that history could use.
"""

from __future__ import annotations

import numpy as np

FRAME_SECONDS = 0.02
# A frame is speech when it is within this many dB of the clip's loudest frames.
SILENCE_BELOW_PEAK_DB = 40.0
# Keep a little air around the speech so the first and last phonemes aren't clipped.
PADDING_SECONDS = 0.15
TARGET_RMS_DBFS = -20.0
PEAK_LIMIT_DBFS = -1.0


def _frame_levels_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    frame = max(1, int(sample_rate * FRAME_SECONDS))
    count = len(audio) // frame
    if count == 0:
        return np.zeros(0)
    frames = audio[: count * frame].reshape(count, frame).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def trim_silence(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut leading and trailing silence; speech in the middle, pauses included, is kept as it is."""
    levels = _frame_levels_db(audio, sample_rate)
    if levels.size == 0:
        return audio
    # The 95th percentile, not the max, so one click doesn't make the whole clip count as silence.
    reference = np.percentile(levels, 95)
    voiced = np.flatnonzero(levels > reference - SILENCE_BELOW_PEAK_DB)
    if voiced.size == 0 or reference < -70:
        return audio[:0]
    frame = int(sample_rate * FRAME_SECONDS)
    padding = int(sample_rate * PADDING_SECONDS)
    start = max(0, voiced[0] * frame - padding)
    end = min(len(audio), (voiced[-1] + 1) * frame + padding)
    return audio[start:end]


def normalise_loudness(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Scale so that the speech (not the pauses) sits at about -20 dBFS RMS, without peaks past -1 dBFS."""
    levels = _frame_levels_db(audio, sample_rate)
    if levels.size == 0 or not np.any(audio):
        return audio.astype(np.float32, copy=False)
    speech_levels = levels[levels > np.percentile(levels, 95) - SILENCE_BELOW_PEAK_DB]
    speech_rms_db = 10 * np.log10(np.mean(10 ** (speech_levels / 10)))
    gain = 10 ** ((TARGET_RMS_DBFS - speech_rms_db) / 20)
    peak = float(np.max(np.abs(audio))) * gain
    peak_limit = 10 ** (PEAK_LIMIT_DBFS / 20)
    if peak > peak_limit:
        gain *= peak_limit / peak
    return (audio * gain).astype(np.float32)


def speech_seconds(audio: np.ndarray, sample_rate: int) -> float:
    """How long the clip is once its surrounding silence is trimmed."""
    return len(trim_silence(audio, sample_rate)) / sample_rate
