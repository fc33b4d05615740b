"""Discord's voice audio: 48 kHz stereo s16 PCM in 20 ms frames, to and from the engine's float32 mono."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engine.audio import resample

DISCORD_RATE = 48_000
DISCORD_CHANNELS = 2
DISCORD_FRAME_SAMPLES = 960  # 20 ms at 48 kHz
DISCORD_FRAME_BYTES = DISCORD_FRAME_SAMPLES * DISCORD_CHANNELS * 2  # s16 stereo = 3,840 bytes


def to_discord_frames(audio: np.ndarray, sample_rate: int) -> Iterator[bytes]:
    """Split audio into Discord's 20 ms frames of 48 kHz stereo s16 (3,840 bytes); the last is zero-padded."""
    upsampled = resample(audio, sample_rate, DISCORD_RATE)
    pcm = (np.clip(upsampled, -1.0, 1.0) * 32767).astype("<i2")
    stereo = np.repeat(pcm, DISCORD_CHANNELS).tobytes()
    for start in range(0, len(stereo), DISCORD_FRAME_BYTES):
        frame = stereo[start : start + DISCORD_FRAME_BYTES]
        if len(frame) < DISCORD_FRAME_BYTES:
            frame += b"\x00" * (DISCORD_FRAME_BYTES - len(frame))
        yield frame


def from_discord_pcm(pcm: bytes, sample_rate: int) -> np.ndarray:
    """Discord's 48 kHz stereo s16 PCM to float32 mono at `sample_rate`."""
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 4], dtype="<i2").astype(np.float32) / 32768.0
    mono = samples.reshape(-1, DISCORD_CHANNELS).mean(axis=1)
    return resample(mono, DISCORD_RATE, sample_rate)
