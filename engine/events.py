"""What a conversation turn tells the platform adapter, in the order it happens."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Heard:
    """The transcript of what the user said (text turns skip this)."""

    text: str
    language: str | None


@dataclass(frozen=True)
class Overheard:
    """What was heard is kept in the group's conversation, but was not said to aLAN: the turn ends unanswered."""

    text: str


@dataclass(frozen=True)
class ReplySentence:
    """One sentence of the reply, as soon as the LLM has finished it; its audio follows."""

    index: int
    text: str


@dataclass(frozen=True)
class SpeechChunk:
    """A piece of the reply's audio: float32 mono. Chunks of one sentence play back to back."""

    sentence_index: int
    audio: np.ndarray
    sample_rate: int


@dataclass(frozen=True)
class SentenceSpoken:
    """All audio of one sentence has been sent: a natural place to cut a voice note."""

    index: int


@dataclass(frozen=True)
class VoiceNote:
    """Spoken sentences encoded once as one OGG/Opus file, for a turn asked to cut its reply into notes (a
    Telegram voice note): sent as it is, and the stored reply keeps these very bytes."""

    data: bytes
    seconds: float
    text: str  # the sentences it says
    sentence_indices: tuple[int, ...]


@dataclass(frozen=True)
class SpeechUnavailable:
    """Speech synthesis failed; the reply continues as text. `message` is for the user."""

    message: str


@dataclass(frozen=True)
class TurnFinished:
    reply_text: str
    turn_id: int  # the stored assistant turn, e.g. for recording an interruption
    timings: dict[str, float] = field(default_factory=dict)


TurnEvent = (
    Heard | Overheard | ReplySentence | SpeechChunk | SentenceSpoken | VoiceNote | SpeechUnavailable | TurnFinished
)
