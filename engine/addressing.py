"""When aLAN speaks in a group: is an utterance addressed to it, and should it answer (issue 11's groundwork).

In a voice channel with several people, aLAN answers when it is addressed: its name at the start or the end of
an utterance ("Alan, what do you think?", "what do you think, Alan?"), a follow-up by the person it just answered
within a few seconds, or a question right after it spoke. Alone with one person it answers everything; a
channel's `/listen` setting can make it answer `always` or never (`off`: it only listens).

Whisper writes a spoken name several ways ("Alan", "Allen", "Allan", "Alun"), so the name is matched by a
spelling-insensitive key rather than as typed. Only the start and the end count: "I told Alan about it" is about
aLAN, not to it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

FOLLOW_UP_SECONDS = 8.0  # the person aLAN just answered may go on without its name for this long
QUESTION_SECONDS = 5.0  # a question right after aLAN spoke is taken as put to it
EDGE_WORDS = 2  # the name counts within this many words of the start or the end ("hey Alan, …", "…, right Alan?")


class ListenMode(StrEnum):
    ADDRESSED = "addressed"  # answer when addressed (the default with several people)
    ALWAYS = "always"  # answer every utterance
    OFF = "off"  # never answer: only listen, keeping the context


def _fold(word: str) -> str:
    """A spelling-insensitive key: accents dropped, lower case, doubled letters single, vowels after the first
    letter alike, an r between a vowel and a consonant silent. "Allen", "Allan", "Alan", "Alán", "Alun" and
    "Arlin" all fold to "alvn"; "Ellen" and "Olin", other people's names, keep their own first letter and don't."""
    plain = unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode().lower()
    plain = re.sub(r"(.)\1+", r"\1", plain)
    # A non-rhotic r (after a vowel, before a consonant) is a spelling, not a sound: Whisper hears "Arlin".
    plain = re.sub(r"(?<=[aeiouy])r(?=[^aeiouy])", "", plain)
    return plain[:1] + re.sub(r"[aeiouy]", "v", plain[1:])


def _names(display_name: str, text: str) -> bool:
    """Whether `text` is said to the person called `display_name`: their name (or its first word, "Bob" for "Bob
    Smith") as the first words before a comma, or the last ones after one. Exact, not spelling-insensitive, and
    set off by a comma: other people's names are often words too ("Will, …" is for Will; "will it rain?" is not)."""
    parts = re.findall(r"[^\W\d_]+", display_name)
    if not parts:
        return False
    for name in {" ".join(parts), parts[0]}:
        spoken = r"\W+".join(re.escape(part) for part in name.split())
        if re.search(rf"^\W*{spoken}\s*,|,\s*{spoken}\W*$", text, flags=re.IGNORECASE):
            return True
    return False


class AddressDetector:
    """Whether an utterance is addressed to `name` (or one of `aliases`) by its first or last words."""

    def __init__(self, name: str = "Alan", aliases: tuple[str, ...] = ()) -> None:
        names = [name, *aliases]
        if not any(part.strip() for part in names):
            raise ValueError("the bot needs a name to be addressed by")
        # A name of several words ("Mister Alan") is matched as that sequence of folded words.
        self._names = {tuple(_fold(word) for word in part.split()) for part in names if part.strip()}

    def addressed(self, text: str) -> bool:
        words = [_fold(word) for word in re.findall(r"[^\W\d_]+", text)]
        for name in self._names:
            size = len(name)
            starts = range(min(EDGE_WORDS, len(words) - size + 1))
            ends = range(max(0, len(words) - size - EDGE_WORDS + 1), len(words) - size + 1)
            if any(tuple(words[i : i + size]) == name for i in [*starts, *ends]):
                return True
        return False


@dataclass
class GroupFloor:
    """What aLAN remembers of a group conversation's recent turns, to tell follow-ups from talk between others."""

    last_answered: str | None = None  # who aLAN answered last
    answered_at: float = float("-inf")  # when it finished speaking to them (monotonic seconds)
    began_at: float = float("-inf")  # when it started speaking to them

    def spoke_to(self, speaker: str, finished_at: float, began_at: float | None = None) -> None:
        self.last_answered, self.answered_at = speaker, finished_at
        self.began_at = finished_at if began_at is None else began_at


def should_answer(
    detector: AddressDetector,
    floor: GroupFloor,
    mode: ListenMode,
    speaker: str,
    text: str,
    now: float,
    people: int,
    others: Sequence[str] = (),
) -> bool:
    """Whether aLAN answers `speaker`'s utterance `text`, begun at `now`, with `people` humans in the conversation.

    A follow-up may have begun before aLAN spoke (the person it answers adding to their question); a question
    counts as put to aLAN only if it began once aLAN was speaking, not if it was already under way to someone else.
    Words that start or end with the name of one of the `others` present ("Bob, are you coming?") are for them.
    """
    if mode is ListenMode.OFF:
        return False
    if mode is ListenMode.ALWAYS or people <= 1:
        return True
    if detector.addressed(text):
        return True
    if any(_names(name, text) for name in others):
        return False
    since = now - floor.answered_at
    if speaker == floor.last_answered and since <= FOLLOW_UP_SECONDS:
        return True
    return floor.began_at <= now and since <= QUESTION_SECONDS and text.rstrip().endswith("?")
