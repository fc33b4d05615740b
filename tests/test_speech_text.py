"""Sentence splitting of streamed LLM text and cleanup of text for the TTS voice."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from engine.speech_text import SentenceSplitter, clean_for_speech, speakable_sentences


def split_whole(text: str, max_chars: int = 200) -> list[str]:
    splitter = SentenceSplitter(max_chars=max_chars)
    return splitter.feed(text) + splitter.flush()


def split_in_chunks(text: str, sizes: list[int], max_chars: int = 200) -> list[str]:
    splitter = SentenceSplitter(max_chars=max_chars)
    out: list[str] = []
    position = 0
    for size in sizes:
        out += splitter.feed(text[position : position + size])
        position += size
    out += splitter.feed(text[position:])
    return out + splitter.flush()


# --- SentenceSplitter ---


def test_splits_on_sentence_ends() -> None:
    assert split_whole("Hello there. How are you? I'm fine! Great… See you") == [
        "Hello there.",
        "How are you?",
        "I'm fine!",
        "Great…",
        "See you",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Dr. Smith will see you now.",
        "It costs 3.5 dollars, or 4.25 with tax.",
        "Bring fruit, e.g. apples or pears, i.e. something sweet.",
        "I was thinking... maybe we could go out.",
        "J. R. R. Tolkien wrote it.",
        "She moved to the U.S. Army base last year.",
        "Wait… what did you say?",
        "Mr. and Mrs. Jones are here vs. the Smiths.",
        "Visit example.com for more.",
    ],
)
def test_does_not_split_inside_a_sentence(text: str) -> None:
    assert split_whole(text) == [text]


def test_line_breaks_end_sentences_and_list_numbers_stay_with_their_item() -> None:
    text = "Here is the plan:\n1. Buy milk\n2. Call mom\n\nThat's it"
    assert split_whole(text) == ["Here is the plan:", "1. Buy milk", "2. Call mom", "That's it"]


def test_closing_quotes_and_markup_stay_with_their_sentence() -> None:
    assert split_whole('She said "hi." Then she left. **Really.** Yes?! Sure.') == [
        'She said "hi."',
        "Then she left.",
        "**Really.**",
        "Yes?!",
        "Sure.",
    ]


def test_a_sentence_is_released_as_soon_as_it_is_certain() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello th") == []
    assert splitter.feed("ere.") == []  # could still be "there.5" or "there.com"
    assert splitter.feed(" ") == []  # could still be "there. and more" (lower case: same sentence)
    assert splitter.feed("How") == ["Hello there."]
    assert splitter.feed(" are you?") == []  # a closing quote could follow
    assert splitter.feed(" ") == ["How are you?"]
    assert splitter.feed("Bye.\n") == ["Bye."]  # a line break settles it without waiting
    assert splitter.feed("See you") == []
    assert splitter.flush() == ["See you"]
    assert splitter.flush() == []  # flush resets


def test_decimals_and_abbreviations_split_across_deltas() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("It costs 3.") == []
    assert splitter.feed("5 dollars. Dr") == ["It costs 3.5 dollars."]
    assert splitter.feed(". Smith agrees. ") == []
    assert splitter.feed("OK") == ["Dr. Smith agrees."]
    assert splitter.flush() == ["OK"]


def test_streaming_mid_word_gives_the_same_sentences_as_whole_text() -> None:
    text = (
        "Hi! I'm aLAN. Dr. Who said it costs 3.5 pounds… Really? Yes.\n"
        "Here's a list:\n1. First thing\n2. Second thing\nAnd that's all... or is it? It is."
    )
    expected = split_whole(text)
    assert expected[:3] == ["Hi!", "I'm aLAN.", "Dr. Who said it costs 3.5 pounds…"]
    assert split_in_chunks(text, [1] * len(text)) == expected  # one character at a time
    rng = random.Random(7)
    for _ in range(20):
        sizes = [rng.randint(1, 9) for _ in range(len(text) // 3)]
        assert split_in_chunks(text, sizes) == expected


def test_long_sentence_is_cut_at_a_comma() -> None:
    clauses = [f"this is clause number {i} of a very long sentence" for i in range(12)]
    text = ", ".join(clauses) + "."
    pieces = split_whole(text, max_chars=120)
    assert len(pieces) > 1
    assert all(len(piece) <= 120 for piece in pieces)
    assert all(piece.endswith((",", ".")) for piece in pieces)
    assert " ".join(pieces) == text


def test_long_sentence_without_commas_is_cut_at_a_space() -> None:
    text = " ".join(["word"] * 100)
    pieces = split_in_chunks(text, [3] * 200, max_chars=50)
    assert all(len(piece) <= 50 for piece in pieces)
    assert " ".join(pieces) == text
    assert split_whole("x" * 130, max_chars=50) == ["x" * 50, "x" * 50, "x" * 30]


def test_max_chars_must_be_sensible() -> None:
    with pytest.raises(ValueError):
        SentenceSplitter(max_chars=5)


# --- clean_for_speech ---


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**Great** idea, *really* _nice_ and __bold__ ~~old~~ stuff.", "Great idea, really nice and bold old stuff."),
        (
            "Keep my_variable_name as it is, and a stray * or ` too.",
            "Keep my_variable_name as it is, and a stray or too.",
        ),
        ("## A Title ##\nSome text.", "A Title Some text."),
        ("# Heading\n### Smaller heading", "Heading Smaller heading"),
        ("Run this:\n```bash\nls -la\n```\nDone.", "Run this: ls -la Done."),
        ("Type `pip install alan` to start.", "Type pip install alan to start."),
        ("Read [the docs](https://example.com/docs) first.", "Read the docs first."),
        ("Look: ![a sleepy cat](cat.png)", "Look: a sleepy cat"),
        ("See [this page][1] too.", "See this page too."),
        ("Visit https://example.com/page?x=1. Thanks!", "Visit. Thanks!"),
        ("Or www.example.org, or <https://example.net>.", "Or, or."),
        ("- one\n* two\n+ three\n• four\n1. five\n2) six", "one two three four five six"),
        ("> A wise quote\n> continues here", "A wise quote continues here"),
        ("Above\n\n---\n\nBelow", "Above Below"),
        ("Great job! 🎉🎉 You did it 😊", "Great job! You did it"),
        ("Bonjour 🇫🇷 from the family 👨‍👩‍👧 👍🏽!", "Bonjour from the family!"),
        ("Step 1️⃣ is done ✅ and ⭐ rated → next", "Step 1 is done and rated next"),
        ("Hello   \n\n  world\tagain", "Hello world again"),
        ("It's 3.5 km, isn't it? Yes — 100%.", "It's 3.5 km, isn't it? Yes — 100%."),
        ("Line one<br>line two", "Line one line two"),
        ("Café, naïve, 東京, Привет.", "Café, naïve, 東京, Привет."),
    ],
)
def test_clean_for_speech(raw: str, spoken: str) -> None:
    assert clean_for_speech(raw) == spoken


@pytest.mark.parametrize("raw", ["", "   \n\t", "🎉🎉", "**", "---", "```", "...", "- ", "https://example.com"])
def test_nothing_speakable_gives_empty_string(raw: str) -> None:
    assert clean_for_speech(raw) == ""


# --- both together on a stream ---


async def test_speakable_sentences_streams_clean_sentences_early() -> None:
    produced: list[str] = []
    deltas = ["**Sure", "!** Here", " are ideas", ":\n", "1. Go ", "for a walk 🚶", "\n2. Read", " a book", "\n"]

    async def llm() -> AsyncIterator[str]:
        for delta in deltas:
            produced.append(delta)
            yield delta

    received: list[tuple[str, int]] = []
    async for sentence in speakable_sentences(llm()):
        received.append((sentence, len(produced)))
    assert [sentence for sentence, _ in received] == ["Sure!", "Here are ideas:", "Go for a walk", "Read a book"]
    # Each sentence came out while the reply was still streaming, not after it ended.
    assert received[0][1] == 2 and received[1][1] == 4
    assert all(count < len(deltas) or index == len(received) - 1 for index, (_, count) in enumerate(received))


def test_a_long_sentence_with_a_full_stop_is_still_cut_to_the_limit() -> None:
    long_sentence = "word " * 240 + "end."  # 1,200 characters that end in a full stop, arriving at once
    splitter = SentenceSplitter(max_chars=200)
    pieces = splitter.feed(long_sentence + " Then more.") + splitter.flush()
    assert all(len(piece) <= 200 for piece in pieces)
    assert " ".join(pieces).split() == (long_sentence + " Then more.").split()
