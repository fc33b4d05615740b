"""Exact accounting of CSM's position budget (2048 positions for the whole conversation prompt plus the reply).

Every text token and every audio frame takes one backbone position. A context segment costs its text tokens
(`<bos>[speaker]text<eos>` as the chat template renders it) plus its audio frames plus one all-zero end frame;
the target costs its text tokens; the reply costs one position per generated frame.

The reply length is unknown before generation, so room is reserved from its text length (see
`estimate_reply_frames`) and the same number caps generation. Older history is dropped first; the voice
reference segment is never dropped — when it alone leaves no room, `VoiceTooLongError` tells the caller to
use a shorter clip (`max_reference_seconds` says how long a clip can be).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import SpeechTooLongError

FRAME_RATE_HZ = 12.5
# CSM's backbone was trained on 2048 positions; a checkpoint's config may say so too, but never trust more.
MAX_CSM_POSITIONS = 2048

# Reply length estimate. Conversational English runs at ~14-16 characters per second (≈ 1.1 Mimi frames per
# character at 12.5 Hz); slow or expressive speech with pauses can be half that speed. We reserve 1.6 frames per
# character (≈ 7.8 characters per second, about twice the time a typical speaker needs), plus a fixed 1.5 s for
# leading/trailing pauses and the end frame, and never less than 3 s, so a reply is not cut short while a short
# one does not reserve half the context.
REPLY_FRAMES_PER_CHAR = 1.6
REPLY_EXTRA_FRAMES = 19  # ≈ 1.5 s
REPLY_MIN_FRAMES = 38  # ≈ 3 s


class BudgetError(SpeechTooLongError):
    """The prompt cannot fit in the model's position budget."""


class VoiceTooLongError(BudgetError):
    """The voice reference segment alone (with the target text and the reply reserve) does not fit."""


class TextTooLongError(BudgetError):
    """The text to speak (with its reply reserve) does not fit even without any voice or history."""


def estimate_reply_frames(text: str) -> int:
    """Frames reserved for (and the generation cap of) speaking `text`; see the module constants."""
    chars = len(text.strip())
    return max(REPLY_MIN_FRAMES, math.ceil(chars * REPLY_FRAMES_PER_CHAR) + REPLY_EXTRA_FRAMES)


def segment_positions(text_tokens: int, frames: int | None) -> int:
    """Positions a context segment takes: its text tokens, its frames and the all-zero end frame."""
    return text_tokens + (frames + 1 if frames is not None else 0)


@dataclass(frozen=True)
class ContextPlan:
    """What fits: how many of the newest history segments are kept and where the positions go."""

    kept_history: int  # number of newest history segments kept (the oldest ones are dropped)
    dropped_history: int
    voice_positions: int
    history_positions: int
    text_positions: int
    reply_frames: int  # frames reserved for the reply = the generation cap
    max_positions: int

    @property
    def prompt_positions(self) -> int:
        return self.voice_positions + self.history_positions + self.text_positions

    @property
    def total_positions(self) -> int:
        return self.prompt_positions + self.reply_frames


def plan_positions(
    voice_positions: int,
    history_positions: Sequence[int],
    text_positions: int,
    reply_frames: int,
    max_positions: int,
) -> ContextPlan:
    """Keep the newest history segments that fit next to the voice, the target text and the reply reserve.

    `history_positions` is oldest first. Only a contiguous run of the newest segments is kept: dropping a middle
    turn would leave the model a conversation with a hole in it.
    """
    fixed = text_positions + reply_frames
    if fixed > max_positions:
        raise TextTooLongError(
            f"text needs {text_positions} positions + {reply_frames} reserved reply frames, "
            f"more than the {max_positions} the model has"
        )
    if voice_positions + fixed > max_positions:
        raise VoiceTooLongError(
            f"voice reference takes {voice_positions} positions; with the text ({text_positions}) and the reply "
            f"reserve ({reply_frames}) that exceeds {max_positions}. Use a shorter reference clip."
        )
    room = max_positions - voice_positions - fixed
    kept = 0
    used = 0
    for positions in reversed(history_positions):
        if used + positions > room:
            break
        used += positions
        kept += 1
    return ContextPlan(
        kept_history=kept,
        dropped_history=len(history_positions) - kept,
        voice_positions=voice_positions,
        history_positions=used,
        text_positions=text_positions,
        reply_frames=reply_frames,
        max_positions=max_positions,
    )


def max_reference_frames(transcript_positions: int, reserved_positions: int, max_positions: int) -> int:
    """Most audio frames a reference clip may have so that its segment plus `reserved_positions` still fit."""
    return max(0, max_positions - reserved_positions - transcript_positions - 1)


def frames_to_seconds(frames: int) -> float:
    return frames / FRAME_RATE_HZ
