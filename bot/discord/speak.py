"""Speaking in a Discord voice channel: a reply's audio plays while the engine is still making it, and stops at once
when someone talks over it.

`StreamingSource` is the `discord.AudioSource` that discord.py's player thread reads every 20 ms: it hands out
the queued audio as 3,840-byte frames (48 kHz stereo s16), silence while the next chunk is still being made (an
empty read would end playback), and b"" once the reply is over or was stopped. `ReplyPlayback` pumps one turn's
events into a source, keeping only a little audio ahead of the listener so the engine never runs far past what
was actually heard, and `interrupt()` is the barge-in: the next frame is silence-and-stop, and the turn is closed
so the engine stores only what was said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import av
import discord
import numpy as np

from bot.discord.audio import DISCORD_FRAME_BYTES, DISCORD_RATE
from engine.events import (
    Overheard,
    ReplySentence,
    SentenceSpoken,
    SpeechChunk,
    SpeechUnavailable,
    TurnEvent,
    TurnFinished,
)

log = logging.getLogger(__name__)

SILENCE_FRAME = b"\x00" * DISCORD_FRAME_BYTES
FRAME_SECONDS = 0.020
# How much made-but-unheard audio the pump lets pile up. Enough to ride out the TTS's uneven pace; small enough
# that, interrupted, the engine has not already made (and stored as said) sentences nobody heard.
MAX_AHEAD_SECONDS = 1.5

PLAY_FAILED = "I couldn't play my answer in the voice channel, so here it is as text."

Clock = Callable[[], float]


class StreamingSource(discord.AudioSource):
    """A queue-fed PCM source: `feed()` and `finish()` on the event loop, `read()` on discord.py's player thread."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._frames: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._partial = b""  # less than a frame of PCM, waiting for the next chunk
        self._resampler: av.AudioResampler | None = None
        self._input_rate: int | None = None
        self._finished = False  # no more audio will be fed
        self._stopped = False  # barge-in: end now, whatever is queued
        self._ended = False  # read() has returned b"" (or the player cleaned us up)
        self.frames_played = 0
        self.silence_frames = 0  # frames of silence sent while waiting for audio
        self.stopped_at: float | None = None
        self.ended_at: float | None = None
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        self._room = asyncio.Event()

    # -- event loop side --------------------------------------------------------------------------------

    def feed(self, audio: np.ndarray, sample_rate: int) -> None:
        """Queue float32 mono audio at any rate; it plays right after what is already queued."""
        if self._finished or self._stopped or audio.size == 0:
            return
        if self._resampler is None:
            # One resampler for the whole reply: chunk edges stay seamless (no filter restart, no padding).
            self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=DISCORD_RATE)
            self._input_rate = sample_rate
        elif sample_rate != self._input_rate:
            raise ValueError(f"a reply's audio must keep one rate: got {sample_rate} Hz after {self._input_rate} Hz")
        frame = av.AudioFrame.from_ndarray(
            np.clip(np.ascontiguousarray(audio, dtype=np.float32), -1.0, 1.0).reshape(1, -1),
            format="flt",
            layout="mono",
        )
        frame.sample_rate = sample_rate
        frame.pts = None
        self._queue_pcm(_pcm_bytes(self._resampler.resample(frame)))

    def finish(self) -> None:
        """No more audio: what is queued plays out, then `read()` returns b"" and playback ends."""
        if self._finished:
            return
        if self._resampler is not None and not self._stopped:
            self._queue_pcm(_pcm_bytes(self._resampler.resample(None)))
        with self._lock:
            if self._partial and not self._stopped:
                self._frames.append(self._partial + b"\x00" * (DISCORD_FRAME_BYTES - len(self._partial)))
            self._partial = b""
            self._finished = True

    def stop(self) -> None:
        """Barge-in: the very next `read()` returns b"", so playback ends within one 20 ms frame."""
        with self._lock:
            if self._stopped or self._ended:
                return
            self._stopped = True
            self._frames.clear()
            self.stopped_at = self.clock()

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def buffered_seconds(self) -> float:
        with self._lock:
            return (len(self._frames) + bool(self._partial)) * FRAME_SECONDS

    @property
    def played_seconds(self) -> float:
        return self.frames_played * FRAME_SECONDS

    async def wait_for_room(self, max_ahead: float) -> None:
        """Return once less than `max_ahead` seconds are queued (or playback is over)."""
        while self.buffered_seconds >= max_ahead and not (self._ended or self._stopped):
            self._room.clear()
            if self.buffered_seconds < max_ahead:
                return
            await self._room.wait()

    async def wait_done(self) -> None:
        """Return once playback has ended: everything played, or stopped."""
        await self._done.wait()

    def _queue_pcm(self, pcm: bytes) -> None:
        with self._lock:
            data = self._partial + pcm
            whole = len(data) - len(data) % DISCORD_FRAME_BYTES
            self._frames.extend(data[i : i + DISCORD_FRAME_BYTES] for i in range(0, whole, DISCORD_FRAME_BYTES))
            self._partial = data[whole:]

    # -- player thread side -----------------------------------------------------------------------------

    def read(self) -> bytes:
        with self._lock:
            if self._stopped or self._ended:
                frame = b""
            elif self._frames:
                frame = self._frames.popleft()
                self.frames_played += 1
            elif self._finished:
                frame = b""
            else:
                # More is coming: keep the player alive (b"" would end playback for good).
                self.silence_frames += 1
                frame = SILENCE_FRAME
            if not frame:
                self._mark_ended()
        self._notify(self._room)
        return frame

    def is_opus(self) -> bool:
        return False

    def cleanup(self) -> None:
        # The player calls this when it stops for any reason (voice_client.stop(), a disconnect, an error).
        with self._lock:
            self._mark_ended()

    def _mark_ended(self) -> None:
        if self._ended:
            return
        self._ended = True
        self.ended_at = self.clock()
        self._notify(self._done)
        self._notify(self._room)

    def _notify(self, event: asyncio.Event) -> None:
        if event.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
            self._loop.call_soon_threadsafe(event.set)


def _pcm_bytes(frames: list[av.AudioFrame]) -> bytes:
    # Packed s16 stereo: one plane, interleaved; to_ndarray() trims the plane's alignment padding.
    return b"".join(frame.to_ndarray().tobytes() for frame in frames)


@dataclass
class PlaybackResult:
    sentences: list[str] = field(default_factory=list)  # every sentence of the reply the engine produced
    spoken: int = 0  # how many of them were completely made as speech
    speech_unavailable: str | None = None  # the engine's message, if speech failed: the reply goes out as text
    interrupted: bool = False
    finished: TurnFinished | None = None
    played_seconds: float = 0.0
    overheard: bool = False  # kept in the group's conversation, not said to aLAN: nothing was answered

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


class ReplyPlayback:
    """Plays one turn's speech on a voice client as it is made. One instance per turn."""

    def __init__(
        self,
        voice_client: discord.VoiceClient,
        *,
        clock: Clock = time.monotonic,
        max_ahead: float = MAX_AHEAD_SECONDS,
        on_start: Callable[[], None] | None = None,
        before_start: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.voice_client = voice_client
        self.clock = clock
        self.max_ahead = max_ahead
        self.on_start = on_start
        self.before_start = before_start  # awaited before the first audio plays: waiting for a gap in the talk
        self.source = StreamingSource(clock=clock)
        self.result = PlaybackResult()
        self.started = False  # audio has been handed to the player
        self.started_at: float | None = None  # when that was
        self.interrupted_at: float | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def audible(self) -> bool:
        """aLAN is talking (or about to, audio queued) in this turn."""
        return self.started and not self.source.ended

    async def play(self, events: AsyncIterator[TurnEvent]) -> PlaybackResult:
        """Consume the turn, playing its speech; return when it has been heard out or interrupted.

        `TurnError`s from the engine propagate (after the source is closed), as does cancellation.
        """
        if self.result.interrupted:  # cut off before it began (we are leaving): don't even start the turn
            await events.aclose()  # type: ignore[attr-defined]
            return self.result
        self._pump = asyncio.create_task(self._consume(events), name="discord-reply-pump")
        try:
            await asyncio.wait({self._pump})
            if self._pump.cancelled() and not self.result.interrupted:
                raise asyncio.CancelledError
            if not self._pump.cancelled() and (error := self._pump.exception()) is not None:
                raise error
            if self.started and not self.result.interrupted:
                await self._wait_heard_out()
        finally:
            if not self._pump.done():  # we were cancelled: close the turn on the way out
                self._pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._pump
            self.source.finish()
            if self.result.interrupted or not self.started:
                self.source.stop()
            self.result.played_seconds = self.source.played_seconds
        return self.result

    def interrupt(self) -> None:
        """Barge-in: silence now (synchronously: the next 20 ms frame is already the end), then close the turn."""
        if self.result.interrupted:
            return
        self.result.interrupted = True
        self.interrupted_at = self.clock()
        self.source.stop()
        with contextlib.suppress(Exception):  # the player may already be gone; the source is stopped either way
            if self.voice_client.is_playing():
                self.voice_client.stop()
        if self._pump is not None and not self._pump.done():
            # If the pump waits inside the engine (TTS, LLM), the cancellation unwinds the turn's generators,
            # running the same clean-up as aclose(); if it waits on us, its aclosing() calls aclose().
            self._pump.cancel()

    async def _consume(self, events: AsyncIterator[TurnEvent]) -> None:
        result = self.result
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if isinstance(event, SpeechChunk):
                    if not self.started and self.before_start is not None:
                        await self.before_start()
                    self._start()
                    self.source.feed(event.audio, event.sample_rate)
                    # Backpressure: don't ask the engine for more while plenty is still unheard.
                    await self.source.wait_for_room(self.max_ahead)
                elif isinstance(event, ReplySentence):
                    result.sentences.append(event.text)
                elif isinstance(event, SentenceSpoken):
                    result.spoken = event.index + 1
                elif isinstance(event, SpeechUnavailable):
                    result.speech_unavailable = event.message
                elif isinstance(event, TurnFinished):
                    result.finished = event
                elif isinstance(event, Overheard):
                    result.overheard = True
        self.source.finish()

    def _start(self) -> None:
        if self.started:
            return
        self.started = True
        self.started_at = self.clock()
        try:
            if self.voice_client.is_playing():
                self.voice_client.stop()  # nothing else should be playing; never talk over ourselves
            self.voice_client.play(self.source, after=self._after)
        except discord.DiscordException as error:  # not connected (any more), no libopus: the reply ends as text
            log.warning("can't play the reply: %s", error)
            self.result.speech_unavailable = PLAY_FAILED
            self.source.stop()
            self.source.cleanup()
        if self.on_start is not None:
            self.on_start()

    def _after(self, error: Exception | None) -> None:
        if error is not None:
            log.error("voice playback failed", exc_info=error)

    async def _wait_heard_out(self) -> None:
        # The player reads in real time; allow what is queued plus generous slack for a stalled connection.
        slack = self.source.buffered_seconds + 10.0
        try:
            await asyncio.wait_for(self.source.wait_done(), timeout=slack)
        except TimeoutError:
            log.warning("the voice player stopped reading; ending the reply")
            self.source.stop()
