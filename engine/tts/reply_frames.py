"""One reply's frames as they come: the stopping rules, the streamed Mimi decode and the audio chunks.

The same whether the frames come from the solo loop (`CsmSpeech.stream`) or from the batched speech service, so
both stop, drop a stuck run and cut chunks alike. The solo loop hands over each frame (`accept` applies the
stopping rules on the host); the service applies the same rules on the device (`SlotStops`) and reports them at
chunk boundaries (`sync`), then decodes the windows of every reply due (`window`) and hands each its audio
(`take`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from .streaming_decode import ChunkAssembler, RepeatGuard, StreamConfig, WindowedDecoder, is_end_frame


class ReplyFrames:
    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], config: StreamConfig, max_frames: int,
                 num_codebooks: int, device: torch.device, eos_code: int,
                 codes: torch.Tensor | None = None) -> None:  # fmt: skip
        self.config = config
        self.max_frames = max_frames
        self.eos_code = eos_code
        # `[frames, codebooks]`: this reply's own buffer, or (batched) its slot's row of the device's buffer
        self.codes = torch.zeros(max_frames, num_codebooks, dtype=torch.long, device=device) if codes is None else codes
        self.decoder = WindowedDecoder(decode, config.left_context_frames)
        self.assembler = ChunkAssembler(config)
        self.repeats = RepeatGuard(config.repeat_frames)
        self.generated = 0  # frames kept in `codes`
        self.produced = 0  # frames the model produced (a dropped repeat run included)
        self.stop: str | None = None  # "eos" | "repeat" | "max_frames" | "silence" once it has stopped
        self.decode_s = 0.0

    def _target(self) -> int:
        """Frames to have before the next decode: the first chunk is short, so audio starts early."""
        decoded = self.decoder.decoded_frames
        return self.config.first_chunk_frames if decoded == 0 else decoded + self.config.chunk_frames

    def needs_frames(self) -> bool:
        return self.stop is None and self.generated < self._target()

    def accept(self, frame: torch.Tensor, values: list[int]) -> bool:
        """Take the frame the model made (`values`: its codes read back); False once the reply stops here."""
        if is_end_frame(values, self.eos_code):
            self.stop = "eos"
            return False
        self.codes[self.generated] = frame
        self.generated += 1
        self.produced += 1
        if self.repeats.push(values):
            self.stop = "repeat"
            # drop the stuck run (but never frames already decoded)
            self.generated = max(self.decoder.decoded_frames, self.generated - self.repeats.run + 1)
            return False
        if self.generated >= self.max_frames:
            self.stop = "max_frames"
            return False
        return True

    def sync(self, generated: int, stop: str | None, run: int) -> None:
        """The device's account of this reply (`SlotStops.read`): frames kept, why it stopped (None: it goes
        on), the run of identical frames at its end. A stuck run is dropped here, as `accept` drops it."""
        self.produced = generated
        self.generated = generated
        self.stop = stop
        if stop == "repeat":
            self.generated = max(self.decoder.decoded_frames, generated - run + 1)

    def due(self, unread: int) -> bool:
        """Whether a chunk is due once `unread` more frames than the last `sync` counted have been made."""
        return self.generated + unread >= self._target()

    def window(self) -> tuple[torch.Tensor, int, int] | None:
        """The codes to decode next (new frames and their left context), for a batched decode; see `take`."""
        return self.decoder.window(self.codes, self.generated)

    def decode(self) -> np.ndarray | None:
        """Decode what is new and return the next chunk to play, if one is ready (a long silence stops it)."""
        first = self.decoder.decoded_frames == 0
        start = time.perf_counter()
        piece = self.decoder.decode_until(self.codes, self.generated)
        self.decode_s += time.perf_counter() - start
        return self._release(piece, first)

    def take(self, audio: torch.Tensor | None) -> np.ndarray | None:
        """The next chunk to play, if one is ready, given the decode of `window()` (None when it was None)."""
        first = self.decoder.decoded_frames == 0
        piece = self.decoder.accept(audio, self.generated) if audio is not None else np.zeros(0, np.float32)
        return self._release(piece, first)

    def _release(self, piece: np.ndarray, first: bool) -> np.ndarray | None:
        self.assembler.add(piece)
        cfg = self.config
        silent = cfg.silence_dbfs is not None and self.assembler.trailing_silence_frames >= cfg.max_silence_frames
        if self.stop is None and silent:
            self.stop = "silence"
        return self.assembler.take(force=first and self.stop is None)

    def kept_codes(self) -> torch.Tensor:
        """The codes of the audio emitted so far, on the CPU: what the listener got."""
        return self.codes[: self.assembler.emitted_frames].to("cpu").clone()
