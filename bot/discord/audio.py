"""Discord's voice audio: 48 kHz stereo s16 PCM in 20 ms frames.

`speak.StreamingSource` makes these frames from the engine's float32 mono; voice receive decodes people's Opus
straight to mono at the rate the engine asks for, so nothing here converts audio.
"""

from __future__ import annotations

DISCORD_RATE = 48_000
DISCORD_CHANNELS = 2
DISCORD_FRAME_SAMPLES = 960  # 20 ms at 48 kHz
DISCORD_FRAME_BYTES = DISCORD_FRAME_SAMPLES * DISCORD_CHANNELS * 2  # s16 stereo = 3,840 bytes
