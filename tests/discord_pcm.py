"""Discord's voice PCM (48 kHz stereo s16 in 20 ms frames of 3,840 bytes) made from and read back into float32 mono.

The tests' own framing, sharing no code with the code under test: the receive tests feed it in as what a Discord
client sends, the playback tests read what `StreamingSource` played with it. (Playback frames its audio itself,
with one resampler per reply, so that chunk edges stay seamless.)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from bot.discord.audio import DISCORD_CHANNELS, DISCORD_FRAME_BYTES, DISCORD_RATE
from engine.audio import resample


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
