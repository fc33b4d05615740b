"""A reply cut into voice notes at sentence ends, each encoded once: what is sent is what is stored.

Only what went into a note counts as said: a sentence spoken after the last note (the turn was stopped, or
speech failed mid-sentence) never reached the person as audio, so the stored reply leaves it out too.

The first note goes out as soon as its sentence is spoken (the person hears something at once, while the rest is
made); later notes gather at least `min_seconds` of audio, so that a long answer is a few notes rather than one
per sentence, and never more than `max_seconds` (a note must stay small enough to show as a voice bubble).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from engine.audio import encode_ogg_opus, resample
from engine.events import VoiceNote
from engine.turn_memory import SpokenSentence


@dataclass(frozen=True)
class NotePolicy:
    min_seconds: float = 0.0  # later notes gather at least this much audio
    max_seconds: float = 180.0  # a note never holds more (at 32 kb/s, about 720 KB)
    first_at_once: bool = True  # the first note holds the first spoken sentence alone


@dataclass
class NoteCutter:
    """Gathers spoken sentences and says when a note is complete; `encode` makes it."""

    policy: NotePolicy
    pending: list[tuple[int, SpokenSentence]] = field(default_factory=list)
    cut: int = 0  # notes made so far

    def add(self, index: int, sentence: SpokenSentence) -> list[list[tuple[int, SpokenSentence]]]:
        """Take one more spoken sentence; returns the notes now complete, in order."""
        complete = []
        if self.pending and self._seconds() + sentence.seconds > self.policy.max_seconds:
            complete.append(self._take())
        self.pending.append((index, sentence))
        if (self.cut == 0 and self.policy.first_at_once) or self._seconds() >= self.policy.min_seconds:
            complete.append(self._take())
        return complete

    def flush(self) -> list[list[tuple[int, SpokenSentence]]]:
        """Whatever is left, as a last note (the reply ended, or speech stopped mid-reply)."""
        return [self._take()] if self.pending else []

    def _seconds(self) -> float:
        return sum(sentence.seconds for _, sentence in self.pending)

    def _take(self) -> list[tuple[int, SpokenSentence]]:
        taken, self.pending = self.pending, []
        self.cut += 1
        return taken


async def encode_note(sentences: list[tuple[int, SpokenSentence]]) -> VoiceNote:
    """One OGG/Opus file of the sentences back to back, made in a worker thread (minutes of audio take a while).

    Encoding a few seconds of speech takes tens of milliseconds, against seconds to synthesize a sentence, so a
    reply's next sentence waits for its note without anyone hearing the difference.
    """
    rate = sentences[0][1].sample_rate

    def encode() -> tuple[bytes, int]:
        audio = np.concatenate([resample(s.audio, s.sample_rate, rate) for _, s in sentences])
        return encode_ogg_opus(audio, rate), len(audio)

    data, samples = await asyncio.to_thread(encode)
    text = " ".join(sentence.text for _, sentence in sentences)
    return VoiceNote(data, samples / rate, text, tuple(index for index, _ in sentences))
