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
class SpeechUnavailable:
    """Speech synthesis failed; the reply continues as text. `message` is for the user."""

    message: str


@dataclass(frozen=True)
class TurnFinished:
    reply_text: str
    turn_id: int  # the stored assistant turn, e.g. for recording an interruption
    timings: dict[str, float] = field(default_factory=dict)


TurnEvent = Heard | ReplySentence | SpeechChunk | SentenceSpoken | SpeechUnavailable | TurnFinished


class TurnError(Exception):
    """The turn can't go on; `str(error)` is a message for the user. What they said is kept where it can be."""


class NoSpeech(TurnError):
    def __init__(self) -> None:
        super().__init__("I didn't catch that: I couldn't hear any speech. Could you say it again?")


class BadInput(TurnError):
    pass


class ServiceUnavailable(TurnError):
    """A model or server aLAN depends on is down; `detail` holds the operator's fix for the logs."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


# What went wrong with the database, in the words the person reads.
STORAGE_PROBLEMS = {
    "busy": "my storage is busy",
    "full": "my storage is full",
    "read-only": "my storage is read-only",
    "failing": "my storage isn't working",
}


class StorageUnavailable(ServiceUnavailable):
    """The database can't be used right now: locked by someone else, full, read-only or broken.

    The message says what the person lost (the `consequence`, e.g. "I couldn't save your message") and why;
    `detail` is the operator's fix. `problem` is one of STORAGE_PROBLEMS.
    """

    def __init__(self, problem: str, detail: str, consequence: str = "I couldn't do that") -> None:
        advice = "Please try again in a moment." if problem == "busy" else "Please try again later."
        super().__init__(f"{consequence}: {STORAGE_PROBLEMS[problem]}. {advice}", detail)
        self.problem = problem

    def saying(self, consequence: str) -> StorageUnavailable:
        """The same failure, told as what it cost at this point of a turn."""
        return StorageUnavailable(self.problem, self.detail, consequence)
