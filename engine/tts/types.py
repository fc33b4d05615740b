"""Data types shared by the TTS engine and its callers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .budget import ContextPlan


@dataclass
class Segment:
    """One conversation turn as CSM sees it: who spoke, what was said, and (optionally) how it sounded.

    `codes` are Mimi codes `[frames, num_codebooks]` (int64, kept on the CPU by the engine). A segment without
    codes contributes only its text to the prompt.
    """

    speaker: int
    text: str
    codes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.speaker < 0:
            raise ValueError("speaker ids are non-negative integers")
        if self.codes is not None and self.codes.ndim != 2:
            raise ValueError(f"codes must be [frames, num_codebooks], got shape {tuple(self.codes.shape)}")

    @property
    def frames(self) -> int | None:
        return None if self.codes is None else int(self.codes.shape[0])

    @property
    def seconds(self) -> float:
        return 0.0 if self.codes is None else self.codes.shape[0] / 12.5


@dataclass
class GenerationStats:
    """Timings of one call, in seconds from the `stream()` call (wall clock; in the speech service on CUDA a frame
    step is the host's time, the device catching up at chunk boundaries)."""

    prefill_s: float = 0.0
    prefill_positions: int = 0
    prefix_cache_hit: bool = False
    first_audio_s: float | None = None
    frame_s: list[float] = field(default_factory=list)
    decode_s: float = 0.0
    total_s: float = 0.0

    @property
    def frames(self) -> int:
        return len(self.frame_s)

    @property
    def real_time_factor(self) -> float:
        """Generation time over audio duration (below 1 is faster than real time)."""
        audio_s = len(self.frame_s) / 12.5
        return (self.total_s - self.prefill_s) / audio_s if audio_s else float("nan")


@dataclass
class SpeechResult:
    """What a finished `stream()` produced. `codes` match the emitted audio frame for frame (trailing silence
    and the end frame excluded), so `Segment(speaker, text, codes)` can go straight into the history."""

    codes: torch.Tensor  # [frames, num_codebooks] int64 on the CPU
    stop_reason: str  # "eos" | "max_frames" | "silence" | "repeat" | "cancelled"
    generated_frames: int  # frames produced by the model (before trimming)
    plan: ContextPlan
    stats: GenerationStats

    def segment(self, speaker: int, text: str) -> Segment:
        return Segment(speaker=speaker, text=text, codes=self.codes)
