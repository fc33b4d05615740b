"""What the speech-to-text tests share: a real speech clip, and faster-whisper `Segment`s with chosen numbers.

The `speech` fixture (registered under that name, replacing conftest.py's Discord one) is imported by the modules
that use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faster_whisper import decode_audio
from faster_whisper.transcribe import Segment

from engine.stt import SAMPLE_RATE


@pytest.fixture(scope="session", name="speech")
def whisper_speech(speech_wav: Path) -> np.ndarray:
    audio = decode_audio(str(speech_wav), sampling_rate=SAMPLE_RATE)
    assert audio.dtype == np.float32 and len(audio) > SAMPLE_RATE
    return audio


def make_segment(
    text: str, *, avg_logprob: float = -0.2, no_speech_prob: float = 0.01, compression_ratio: float = 1.2
) -> Segment:
    return Segment(
        id=1,
        seek=0,
        start=0.0,
        end=2.0,
        text=text,
        tokens=[1, 2, 3],
        avg_logprob=avg_logprob,
        compression_ratio=compression_ratio,
        no_speech_prob=no_speech_prob,
        words=None,
        temperature=0.0,
    )


# What the real Whisper base gives a real short answer: unsure by Whisper's own numbers alone.
REAL_SHORT_ANSWER = {"avg_logprob": -0.66, "no_speech_prob": 0.09}
