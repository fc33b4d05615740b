"""Text made only of invisible characters is no message and no transcript; visible text keeps every character
that makes it look the way it does (emoji sequences, accents, joiners between letters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.audio import CSM_RATE
from engine.conversation import Conversation, Participant
from engine.errors import BadInputError
from engine.store.repository import Store
from engine.visible_text import visible_text
from engine.voices import EMPTY_TRANSCRIPT, CloneDraft
from tests.conftest import espeak
from tests.fakes.ollama_server import FakeOllama

ENGLAND = "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
INVISIBLE = [
    "\u200b\u200d\ufeff",  # zero-width space, joiner, byte-order mark
    "\u200c\u2060\u00ad",  # zero-width non-joiner, word joiner, soft hyphen
    "\u200e\u200f\u202a\u202c\u2066\u2069\u061c",  # bidi marks, embeddings and isolates
    "\ufe0f\ufe0e\U000e0100",  # variation selectors with nothing to vary
    "\u3164\u115f\u2800",  # Hangul fillers, the blank Braille pattern
    "\x00\x07\x1b\x7f\u0085",  # control codes
    " \u00a0\u3000\t\n\u2028",  # spaces and separators
    "\u0301\u20dd",  # combining marks on nothing
    "\U000e0067\U000e0062\U000e007f",  # emoji tags without a flag
]


@pytest.mark.parametrize("text", INVISIBLE)
def test_invisible_characters_alone_are_empty(text: str) -> None:
    assert visible_text(text) == ""


@pytest.mark.parametrize(
    ("text", "seen"),
    [
        ("he\u200bllo\u00ad wo\ufeffrld\u200e", "hello world"),
        ("\u200b  two \u2060\n words \u200d", "two words"),
        ("👩\u200d💻 and 👨\u200d👩\u200d👧", "👩\u200d💻 and 👨\u200d👩\u200d👧"),  # ZWJ sequences stay whole
        ("❤\ufe0f\u200d🔥", "❤\ufe0f\u200d🔥"),  # a joiner after a variation selector
        (ENGLAND, ENGLAND),  # a subdivision flag is spelled with tag characters
        ("می\u200cخواهم", "می\u200cخواهم"),  # Persian needs its non-joiner between letters
        ("cafe\u0301", "cafe\u0301"),  # an accent on a letter is part of it
    ],
)
def test_visible_text_keeps_what_shows(text: str, seen: str) -> None:
    assert visible_text(text) == seen


async def test_a_text_turn_of_invisible_characters_gets_nothing_to_answer_and_stores_nothing(
    conversation: Conversation, ollama: FakeOllama, store: Store
) -> None:
    who = Participant("telegram", "1", "chat")
    with pytest.raises(BadInputError, match="nothing to answer"):
        [event async for event in conversation.turn(who, text="\u200b\u200d\ufeff")]
    user = store.find_user("telegram", "1")
    assert user is None or store.recent_turns(user.id, "chat") == []
    assert ollama.chat_requests == []


async def test_a_clone_transcript_of_invisible_characters_is_refused(
    conversation: Conversation, store: Store, tmp_path: Path
) -> None:
    owner = store.user("telegram", "1")
    draft = CloneDraft(np.zeros(5 * CSM_RATE, dtype=np.float32), 5.0, "hello there", "en")
    with pytest.raises(BadInputError) as refused:
        await conversation.save_clone(Participant("telegram", "1", "chat"), "me", draft, "\u200b\u2060\u200d")
    assert str(refused.value) == EMPTY_TRANSCRIPT and "no visible words" in EMPTY_TRANSCRIPT
    assert store.voices_of(owner.id) == []

    # A transcript given with the clip (`alan voice clone --transcript`, Discord's /clone option) is checked too.
    clip = espeak("This is my voice. I am reading a few sentences so that you can learn how I sound.",
                  tmp_path / "clip.wav").read_bytes()  # fmt: skip
    with pytest.raises(BadInputError, match="no visible words"):
        await conversation.prepare_clone(clip, "\ufeff\u00ad")
