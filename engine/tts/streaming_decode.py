"""Incremental Mimi decoding, chunk emission with trailing-silence hold-back, and the stopping guards.

Mimi's decoder is causal but stateless in transformers (its convolutions keep no padding state between calls),
so decoding 10-frame chunks independently is far off a one-shot decode. `WindowedDecoder` re-decodes each new
span together with `left_context` frames before it and keeps only the new span's samples: with enough context
the concatenated chunks equal a one-shot decode of the same codes (the tests check < 1e-3 relative error).

`ChunkAssembler` turns decoded frames into chunks. Audio after the last voiced frame (plus a short tail) is
held back instead of being emitted: if speech resumes it goes out with it (it was a pause), if generation ends
it is dropped. That is how trailing silence gets trimmed from a stream whose earlier chunks are already playing.
Trimming works on whole frames so the emitted audio always corresponds to a whole number of code frames, and
the codes the conversation stores match the audio the user heard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .codes import SAMPLES_PER_FRAME


@dataclass(frozen=True)
class StreamConfig:
    """When audio is emitted, how it is decoded, and when generation is cut off.

    first_chunk_frames: frames generated before the first chunk (latency: 5 frames = 400 ms of audio).
    chunk_frames: frames per later chunk.
    left_context_frames: frames of already-decoded codes re-fed to Mimi before each new span.
    silence_dbfs: a frame whose RMS is below this level counts as silence (None: never trim or stop on silence).
    keep_silence_frames: silent frames kept after the last voiced one (a natural release, not a hard cut).
    max_silence_frames: stop once this many silent frames in a row were generated (CSM sometimes never ends).
    repeat_frames: stop once this many identical frames in a row were generated (a stuck model). None: off.
    """

    first_chunk_frames: int = 5
    chunk_frames: int = 12
    left_context_frames: int = 40
    silence_dbfs: float | None = -50.0
    keep_silence_frames: int = 3
    max_silence_frames: int = 25
    repeat_frames: int | None = 12

    def __post_init__(self) -> None:
        if self.first_chunk_frames < 1 or self.chunk_frames < 1:
            raise ValueError("chunk sizes must be at least one frame")
        if self.left_context_frames < 0:
            raise ValueError("left_context_frames must be >= 0")
        if self.repeat_frames is not None and self.repeat_frames < 1:
            raise ValueError("repeat_frames must be at least 1, or None for no repeat guard")


class WindowedDecoder:
    """Decodes spans of a growing code sequence so that the pieces concatenate to a one-shot decode."""

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], left_context: int):
        self._decode = decode  # codes [frames, codebooks] -> audio [samples] (float32 tensor)
        self.left_context = left_context
        self.decoded_frames = 0

    def decode_until(self, codes: torch.Tensor, end: int) -> np.ndarray:
        """Audio for frames [decoded_frames, end) of `codes` ([frames, codebooks])."""
        span = self.window(codes, end)
        if span is None:
            return np.zeros(0, dtype=np.float32)
        return self.accept(self._decode(span[0]), end)

    def _span(self, end: int) -> tuple[int, int] | None:
        """(first frame of the window, first new frame) for frames up to `end`; None when nothing is new."""
        start = self.decoded_frames
        if end <= start:
            return None
        return max(0, start - self.left_context), start

    def window(self, codes: torch.Tensor, end: int) -> tuple[torch.Tensor, int, int] | None:
        """What to decode for frames [decoded_frames, end): the codes window (left context included) and the
        sample offset and length of the new frames in its audio; None when nothing is new.

        Split from `decode_until` so a batched caller can decode the windows of many replies in one Mimi call
        (`batch_decode.decode_batch`) and hand each reply its audio back through `accept`.
        """
        span = self._span(end)
        if span is None:
            return None
        window_start, start = span
        return codes[window_start:end], (start - window_start) * SAMPLES_PER_FRAME, (end - start) * SAMPLES_PER_FRAME

    def accept(self, audio: torch.Tensor, end: int) -> np.ndarray:
        """The new frames' samples of `audio`, the decode of `window(codes, end)`; marks them decoded.

        Nothing is remembered between the two calls (the window is recomputed from `decoded_frames`), so call
        `accept` once per `window`, with the same `end`, before the next `window`. `audio` may run past the
        window's end (a padded batch row): only the new frames' samples are kept.
        """
        span = self._span(end)
        if span is None:
            return np.zeros(0, dtype=np.float32)
        window_start, start = span
        offset = (start - window_start) * SAMPLES_PER_FRAME
        length = (end - start) * SAMPLES_PER_FRAME
        if audio.shape[-1] < offset + length:
            # a short piece would not be whole frames (ChunkAssembler would fail later, far from the cause):
            # in a batch this means audio was handed to the wrong reply
            raise ValueError(f"audio has {audio.shape[-1]} samples, the window needs {offset + length}")
        piece = audio[offset : offset + length]
        self.decoded_frames = end
        return piece.float().cpu().numpy().astype(np.float32, copy=False)


def frame_rms_dbfs(audio: np.ndarray) -> np.ndarray:
    """Per-frame RMS level in dBFS of audio made of whole frames."""
    frames = audio.reshape(-1, SAMPLES_PER_FRAME).astype(np.float64)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


class ChunkAssembler:
    """Collects decoded frames and releases them as chunks, holding back trailing silence."""

    def __init__(self, config: StreamConfig):
        self.config = config
        self._audio: list[np.ndarray] = []  # decoded, not yet emitted, whole frames
        self._pending_frames = 0
        self._trailing_silence = 0  # silent frames at the end of everything decoded so far
        self.emitted_frames = 0

    @property
    def trailing_silence_frames(self) -> int:
        return self._trailing_silence

    def add(self, audio: np.ndarray) -> None:
        if audio.size == 0:
            return
        self._audio.append(audio)
        self._pending_frames += audio.size // SAMPLES_PER_FRAME
        if self.config.silence_dbfs is None:
            return
        for silent in frame_rms_dbfs(audio) < self.config.silence_dbfs:
            self._trailing_silence = self._trailing_silence + 1 if silent else 0

    def take(self, *, force: bool = False) -> np.ndarray | None:
        """Audio ready to play: everything up to the last voiced frame plus `keep_silence_frames`.

        `force` releases all pending audio (the first chunk goes out on time even if it is quiet).
        """
        if self._pending_frames == 0:
            return None
        release = self._pending_frames
        if not force and self.config.silence_dbfs is not None:
            held = max(0, self._trailing_silence - self.config.keep_silence_frames)
            release = max(0, self._pending_frames - held)
        if release == 0:
            return None
        pending = np.concatenate(self._audio) if len(self._audio) > 1 else self._audio[0]
        out, rest = pending[: release * SAMPLES_PER_FRAME], pending[release * SAMPLES_PER_FRAME :]
        self._audio = [rest] if rest.size else []
        self._pending_frames -= release
        self.emitted_frames += release
        return out


def is_end_frame(frame: list[int], eos_code: int = 0) -> bool:
    """CSM's end-of-audio frame is all zeros. Like transformers' `generate()`, the last codebook is not checked:
    a missed end frame costs a runaway reply, a false one needs 31 zero codes in a row in real speech."""
    return all(code == eos_code for code in frame[:-1])


class RepeatGuard:
    """Counts identical consecutive frames (a model stuck on one frame never emits the end frame)."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self._last: list[int] | None = None
        self.run = 0

    def push(self, frame: list[int]) -> bool:
        """Record a frame; True when the run of identical frames reached the limit."""
        self.run = self.run + 1 if frame == self._last else 1
        self._last = frame
        return self.limit is not None and self.run >= self.limit
