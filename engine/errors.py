"""Every exception the engine raises to its callers, in one place, each name ending in `Error`.

Two families:
- `EngineUnavailableError` and its kinds: a dependency (a model, a server) is missing or broken. The message is
  for the person running aLAN: what is wrong *and* how to fix it, so the bots and `alan doctor` show it as is.
- `TurnError` and its kinds: a turn or command can't go on. `str(error)` is for the person talking to aLAN (a
  `ServiceUnavailableError` also carries the operator's fix as `detail`, for the logs). `AudioError` is one too.

`StructuredOutputError` stands apart: a working model's unusable answer to the engine's own background request.
"""

from __future__ import annotations


class EngineUnavailableError(Exception):
    """A part of the engine cannot work until the operator fixes something; the message says what."""


class SttUnavailableError(EngineUnavailableError):
    """The speech-to-text model cannot be found or loaded (or the requested device is missing)."""


class LlmUnavailableError(EngineUnavailableError):
    """The language model cannot answer: its server is down, refuses our key, lacks the model, or timed out."""


class StructuredOutputError(Exception):
    """The language model answered a structured-output request (`ChatModel.complete_json`), but not usably.

    Its answer was not valid JSON, not a JSON object, cut off at the length limit, or a refusal. The server
    works, so this is neither an `LlmUnavailableError` (nothing for the operator to fix) nor a `TurnError`: the
    engine's background work meets it, never a person, and retries or skips. The message says what was wrong
    without quoting the answer, which may repeat what a person said.
    """


class TtsUnavailableError(EngineUnavailableError):
    """The speech synthesizer cannot be loaded or run; the message is the operator's fix."""


class SpeechTooLongError(ValueError):
    """A text (or a voice's reference clip) can't fit in what the synthesizer can speak in one go."""


class TurnError(Exception):
    """The turn can't go on; `str(error)` is a message for the user. What they said is kept where it can be."""


class NoSpeechError(TurnError):
    def __init__(self) -> None:
        super().__init__("I didn't catch that: I couldn't hear any speech. Could you say it again?")


class BadInputError(TurnError):
    pass


class ServiceUnavailableError(TurnError):
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


class StorageUnavailableError(ServiceUnavailableError):
    """The database can't be used right now: locked by someone else, full, read-only or broken.

    The message says what the person lost (the `consequence`, e.g. "I couldn't save your message") and why;
    `detail` is the operator's fix. `problem` is one of STORAGE_PROBLEMS.
    """

    def __init__(self, problem: str, detail: str, consequence: str = "I couldn't do that") -> None:
        advice = "Please try again in a moment." if problem == "busy" else "Please try again later."
        super().__init__(f"{consequence}: {STORAGE_PROBLEMS[problem]}. {advice}", detail)
        self.problem = problem

    def saying(self, consequence: str) -> StorageUnavailableError:
        """The same failure, told as what it cost at this point of a turn."""
        return StorageUnavailableError(self.problem, self.detail, consequence)


class VoiceNameTakenError(BadInputError):
    """A user's message like every `TurnError`, so callers need no special case for it."""

    def __init__(self, name: str) -> None:
        super().__init__(f"You already have a voice called “{name}”.")


class AudioError(Exception):
    """Audio that can't be used. `str(error)` is a sentence meant for the user."""


class InvalidAudioError(AudioError):
    """Corrupt, truncated, empty or non-audio input."""


class AudioTooLongError(AudioError):
    def __init__(self, max_seconds: float) -> None:
        super().__init__(f"That audio is too long: the limit is {_format_seconds(max_seconds)}.")
        self.max_seconds = max_seconds


class AudioTooLargeError(AudioError):
    def __init__(self, size: int, max_bytes: int) -> None:
        super().__init__(
            f"That file is too large ({size / 1_048_576:.1f} MB): the limit is {max_bytes / 1_048_576:.0f} MB."
        )
        self.size = size
        self.max_bytes = max_bytes


def _format_seconds(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} seconds"
