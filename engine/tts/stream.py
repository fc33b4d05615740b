"""The iterator handed to callers of `CsmSpeech.stream()`."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import numpy as np
import torch

from .budget import ContextPlan
from .types import GenerationStats, Segment, SpeechResult


class SpeechStream(Iterator[np.ndarray]):
    """Audio chunks (float32, 24 kHz mono) as they are generated; `result` once exhausted or closed.

    Closing it early (barge-in) stops generation at the next frame; the result then holds the codes of the
    audio emitted so far with `stop_reason == "cancelled"`.
    """

    def __init__(self, plan: ContextPlan, kept_history: list[Segment], num_codebooks: int):
        self._run: Generator[np.ndarray, None, None] | None = None
        self.plan = plan
        self.kept_history = kept_history
        self._num_codebooks = num_codebooks
        self._result: SpeechResult | None = None

    def _attach(self, run: Generator[np.ndarray, None, None]) -> None:
        self._run = run

    def _finish(self, result: SpeechResult) -> None:
        self._result = result

    def __next__(self) -> np.ndarray:
        assert self._run is not None
        return next(self._run)

    def close(self) -> None:
        if self._run is not None:
            self._run.close()
        if self._result is None:  # closed before it started: nothing was generated
            empty = torch.zeros(0, self._num_codebooks, dtype=torch.long)
            self._result = SpeechResult(empty, "cancelled", 0, self.plan, GenerationStats())

    def __enter__(self) -> SpeechStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> SpeechResult:
        if self._result is None:
            raise RuntimeError("the stream is still running: exhaust or close it first")
        return self._result
