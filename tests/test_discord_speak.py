"""The streaming playback source: exact Discord frames, silence while the engine is still talking, the end of the
reply, and the barge-in stop within one frame."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bot.discord.audio import DISCORD_FRAME_BYTES, DISCORD_RATE
from bot.discord.speak import FRAME_SECONDS, SILENCE_FRAME, StreamingSource
from engine.audio import CSM_RATE
from tests.discord_doubles import FakeClock
from tests.discord_pcm import from_discord_pcm


def tone(seconds: float, rate: int = CSM_RATE, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def drain(source: StreamingSource, limit: int = 10_000) -> list[bytes]:
    frames = []
    for _ in range(limit):
        frame = source.read()
        frames.append(frame)
        if not frame:
            return frames
    raise AssertionError("the source never ended")


async def test_frames_are_exact_and_the_audio_survives_chunking() -> None:
    source = StreamingSource()
    audio = tone(1.0)
    # Odd chunk sizes, as CSM's streaming decoder hands them out: none lines up with a 20 ms frame.
    for start, end in [(0, 1234), (1234, 9000), (9000, 9001), (9001, len(audio))]:
        source.feed(audio[start:end], CSM_RATE)
    source.finish()
    frames = drain(source)
    assert frames[-1] == b""
    played = frames[:-1]
    assert all(len(frame) == DISCORD_FRAME_BYTES for frame in played)
    assert len(played) == pytest.approx(1.0 / FRAME_SECONDS, abs=1)  # 50 frames, the last padded
    # Stereo, both channels equal, and the same sound as one piece resampled at once (no seams at chunk edges).
    pcm = np.frombuffer(b"".join(played), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(pcm[:, 0], pcm[:, 1])
    mono = from_discord_pcm(b"".join(played), DISCORD_RATE)[: int(0.99 * DISCORD_RATE)]
    reference = np.sin(2 * np.pi * 220.0 * np.arange(len(mono)) / DISCORD_RATE) * 0.5
    lag = int(np.argmax([np.dot(mono[k : k + 4800], reference[:4800]) for k in range(0, 200)]))
    assert np.corrcoef(mono[lag : lag + 40_000], reference[:40_000])[0, 1] > 0.999
    assert source.played_seconds == pytest.approx(len(played) * FRAME_SECONDS)


async def test_silence_while_waiting_then_the_end_when_the_reply_is_over() -> None:
    source = StreamingSource()
    # Nothing yet, reply not over: silence keeps discord.py's player alive (b"" would end playback for good).
    assert [source.read() for _ in range(3)] == [SILENCE_FRAME] * 3
    assert source.silence_frames == 3 and not source.ended
    source.feed(tone(0.05), CSM_RATE)  # 2.5 frames' worth: 2 whole frames now, the rest held for the next chunk
    assert source.buffered_seconds == pytest.approx(3 * FRAME_SECONDS)
    first, second = source.read(), source.read()
    assert first != SILENCE_FRAME and second != SILENCE_FRAME and len(first) == len(second) == DISCORD_FRAME_BYTES
    assert source.read() == SILENCE_FRAME  # the half frame waits: more audio may follow it seamlessly
    source.finish()
    rest = drain(source)
    assert rest[-1] == b"" and all(len(frame) == DISCORD_FRAME_BYTES for frame in rest[:-1])
    assert len(rest) - 1 in (1, 2)  # the held half frame plus the resampler's tail, padded
    assert source.ended and source.read() == b""
    await asyncio.wait_for(source.wait_done(), 1)


async def test_stop_ends_playback_on_the_very_next_frame() -> None:
    clock = FakeClock()
    source = StreamingSource(clock=clock)
    source.feed(tone(2.0), CSM_RATE)
    for _ in range(10):
        assert len(source.read()) == DISCORD_FRAME_BYTES
        clock.advance(FRAME_SECONDS)
    source.stop()
    stopped = clock()
    assert source.read() == b""  # within one 20 ms frame: the player ends at once
    assert source.stopped_at == stopped and source.ended_at == stopped
    source.feed(tone(0.5), CSM_RATE)  # late audio from the engine is dropped, not played
    source.finish()
    assert source.read() == b"" and source.buffered_seconds == 0
    await asyncio.wait_for(source.wait_done(), 1)


async def test_backpressure_waits_until_the_listener_has_heard_enough() -> None:
    source = StreamingSource()
    source.feed(tone(1.0), CSM_RATE)
    waiter = asyncio.create_task(source.wait_for_room(0.5))
    await asyncio.sleep(0)
    assert not waiter.done()
    for _ in range(20):
        source.read()
    await asyncio.sleep(0.01)
    assert not waiter.done() and source.buffered_seconds > 0.5
    for _ in range(11):
        source.read()
    await asyncio.wait_for(waiter, 1)
    assert source.buffered_seconds < 0.5


async def test_the_player_cleaning_up_counts_as_the_end() -> None:
    # voice_client.stop() or a disconnect: discord.py never reads again, it calls cleanup().
    source = StreamingSource()
    source.feed(tone(1.0), CSM_RATE)
    waiter = asyncio.create_task(source.wait_for_room(0.1))
    source.cleanup()
    await asyncio.wait_for(asyncio.gather(waiter, source.wait_done()), 1)
    assert source.read() == b""


async def test_a_reply_keeps_one_sample_rate() -> None:
    source = StreamingSource()
    source.feed(tone(0.1), CSM_RATE)
    with pytest.raises(ValueError, match="one rate"):
        source.feed(tone(0.1, 16_000), 16_000)
