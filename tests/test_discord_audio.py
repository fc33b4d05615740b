"""The tests' Discord PCM framing (tests/discord_pcm.py), which the receive and playback tests rely on: 20 ms frames
of 48 kHz stereo s16 (`bot.discord.audio`'s constants), to and from the engine's audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bot.discord.audio import DISCORD_FRAME_BYTES
from engine.audio import CSM_RATE, decode_audio
from tests.conftest import duration_seconds
from tests.discord_pcm import from_discord_pcm, to_discord_frames


@pytest.fixture(scope="module")
def speech_audio(speech_wav: Path) -> np.ndarray:
    return decode_audio(speech_wav, CSM_RATE)


def test_discord_frames_are_20ms_of_48k_stereo_and_come_back(speech_audio: np.ndarray) -> None:
    frames = list(to_discord_frames(speech_audio, CSM_RATE))
    assert all(len(frame) == DISCORD_FRAME_BYTES for frame in frames)
    assert len(frames) == int(np.ceil(duration_seconds(speech_audio, CSM_RATE) / 0.020))
    back = from_discord_pcm(b"".join(frames), CSM_RATE)
    assert abs(duration_seconds(back, CSM_RATE) - duration_seconds(speech_audio, CSM_RATE)) <= 0.020
    n = min(len(back), len(speech_audio))
    assert np.corrcoef(back[:n], speech_audio[:n])[0, 1] > 0.99


def test_a_partial_last_frame_is_padded_with_silence() -> None:
    tone = np.full(CSM_RATE // 100, 0.5, dtype=np.float32)  # 10 ms: half a frame
    [frame] = list(to_discord_frames(tone, CSM_RATE))
    assert len(frame) == DISCORD_FRAME_BYTES
    assert frame[DISCORD_FRAME_BYTES // 2 + 64 :] == b"\x00" * (DISCORD_FRAME_BYTES // 2 - 64)
