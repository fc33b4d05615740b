"""Turning a streamed LLM reply into text a TTS voice can say, one sentence at a time.

`SentenceSplitter` cuts the delta stream into sentences the moment each one is known to be complete, so
speech can start before the reply is finished. `clean_for_speech` strips what a voice must not read out
(markdown, list markers, emoji, URLs). `speakable_sentences` chains the two for an async delta stream.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator

# Words that end in "." without ending the sentence ("Dr. Smith", "e.g. Paris"). Ambiguous ones that often
# do end sentences ("etc.", "Inc.", "No.") are left out: a wrong split only costs a pause, a missed one delay.
ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "mx", "dr", "prof", "sr", "jr", "st", "vs", "rev", "gen", "col", "capt", "lt", "sgt",
        "hon", "approx", "fig", "vol", "cf", "viz", "e.g", "i.e",
    }
)  # fmt: skip

# A run of sentence-ending marks with what may close the sentence after them: quotes, brackets, markdown.
_END = re.compile(r"(?P<end>[.!?…]+[\"'”’)\]}*_]*)|(?P<newline>\n)")
_WORD_BEFORE = re.compile(r"([\w.]+)$")
_SOFT_BREAK = re.compile(r"[,;:](?=\s)|\s[-–—](?=\s)")

_WAIT = "wait"  # can't tell yet: the next delta decides


class SentenceSplitter:
    """Feed LLM text deltas; get back complete sentences as soon as they are certain.

    A sentence ends at ".", "!", "?", "…" followed by whitespace, or at a line break. A "." or "…" only ends
    one when the next word does not start in lower case (so "3.5", "Dr. Smith", "e.g. this", "wait... what"
    and "1. First" stay whole); that means a sentence is released when the first character of the next one
    arrives, or at `flush()`. A sentence longer than `max_chars` without an end is cut at a comma (or other
    soft break), else at a space, so the voice never waits on a runaway sentence.
    """

    def __init__(self, max_chars: int = 200) -> None:
        if max_chars < 20:
            raise ValueError("max_chars must be at least 20")
        self.max_chars = max_chars
        self._buffer = ""

    def feed(self, delta: str) -> list[str]:
        """Add a delta; return the sentences it completed (often none), stripped and in order."""
        self._buffer += delta
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of the reply: return whatever is left (as one or more sentences) and reset."""
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> list[str]:
        sentences: list[str] = []
        while True:
            cut = self._next_boundary()
            if cut is None:
                break
            self._emit(sentences, self._buffer[:cut])
            self._buffer = self._buffer[cut:].lstrip()
        while len(self._buffer) > self.max_chars:
            cut = self._long_sentence_cut(self._buffer)
            self._emit(sentences, self._buffer[:cut])
            self._buffer = self._buffer[cut:].lstrip()
        if final:
            self._emit(sentences, self._buffer)
            self._buffer = ""
        return sentences

    def _emit(self, sentences: list[str], text: str) -> None:
        """Add a sentence, cut into pieces of at most `max_chars` (each is spoken in one go of the model)."""
        text = text.strip()
        while len(text) > self.max_chars:
            cut = self._long_sentence_cut(text)
            sentences.append(text[:cut].strip())
            text = text[cut:].strip()
        if text:
            sentences.append(text)

    def _next_boundary(self) -> int | None:
        """Index just past the first certain sentence end in the buffer, or None."""
        text = self._buffer
        for match in _END.finditer(text):
            if match.group("newline"):
                return match.end()
            decision = self._ends_sentence(text, match.start(), match.end())
            if decision == _WAIT:
                return None
            if decision:
                return match.end()
        return None

    @staticmethod
    def _ends_sentence(text: str, start: int, end: int) -> bool | str:
        if end == len(text):
            return _WAIT  # "3." may become "3.5", "?" may get a closing quote
        if not text[end].isspace():
            return False  # "3.5", "e.g", "example.com"
        marks = text[start:end]
        if "!" in marks or "?" in marks:
            return True
        rest = text[end:].lstrip()
        if "\n" in text[end : len(text) - len(rest)]:
            return True  # a line break after the mark ends it whatever comes next
        if not rest:
            return _WAIT  # the next word decides
        if rest[0].islower():
            return False  # "wait... what", "etc. and so on"
        if marks.rstrip("\"'”’)]}*_") != ".":
            return True  # an ellipsis before a capital: a new sentence
        word = _WORD_BEFORE.search(text[:start])
        if word is None:
            return True
        token = word.group(1)
        if token.lower() in ABBREVIATIONS or "." in token:
            return False  # "Dr.", "e.g.", "U.S."
        if len(token) == 1 and token.isalpha() and token.isupper():
            return False  # an initial: "J. R. R. Tolkien"
        # A number alone at the start of a line is a list marker ("1. Buy milk"), not a sentence.
        return not (token.isdigit() and text[:start].strip() == token)

    def _long_sentence_cut(self, text: str) -> int:
        window = text[: self.max_chars]
        breaks = [m.end() for m in _SOFT_BREAK.finditer(window) if m.end() >= self.max_chars // 3]
        if breaks:
            return breaks[-1]
        space = window.rfind(" ", self.max_chars // 3)
        return space if space > 0 else self.max_chars


# --- cleaning ---

_CODE_FENCE = re.compile(r"^\s*(```|~~~)[^\n]*$\n?", re.MULTILINE)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<(?:https?://|mailto:)[^>]*>")
# A URL stops before trailing punctuation, so "see example.com/x." keeps its full stop.
_URL = re.compile(r"(?:https?://|www\.)[^\s<>()\[\]]*[^\s<>()\[\].,;:!?'\"]")
_INLINE_CODE = re.compile(r"`+([^`]+)`+")
_HEADER = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
_QUOTE = re.compile(r"^\s*>+\s?", re.MULTILINE)
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$", re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*+•‣◦▪]|\d{1,3}[.)])\s+", re.MULTILINE)
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])")
_ITALIC_UNDERSCORE = re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)")
_STRIKE = re.compile(r"~~(.+?)~~")
_HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_LEFTOVER_MARKUP = re.compile(r"[*`]+|~~|(?<!\w)#+(?=\s)")
_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # pictographs, emoticons, transport, flags, supplemental symbols
    "\u2190-\u21ff"  # arrows
    "\u2300-\u23ff"  # technical symbols (⌚ ⏰ ⏳)
    "\u2600-\u27bf"  # miscellaneous symbols and dingbats (☀ ❤ ✨ ✔ ♪)
    "\u2b00-\u2bff"  # symbols and arrows (⭐ ⬆)
    "\u3030\u303d\u3297\u3299"
    "\ufe0e\ufe0f\u200d\u20e3"  # variation selectors, zero-width joiner, keycap: parts of emoji sequences
    "\U000e0020-\U000e007f"  # tag characters (subdivision flags)
    "]+"
)
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.!?;:…])")


def clean_for_speech(text: str) -> str:
    """Text a voice can read: markdown, list markers, emoji and URLs removed, whitespace collapsed.

    Link and image texts are kept, their targets dropped. Returns "" when nothing speakable (no letter or
    digit) is left, so callers can simply skip empty results.
    """
    text = _CODE_FENCE.sub("", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _AUTOLINK.sub("", text)
    text = _URL.sub("", text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _RULE.sub("", text)
    text = _HEADER.sub(r"\1", text)
    text = _QUOTE.sub("", text)
    text = _BULLET.sub("", text)
    text = _BOLD.sub(r"\2", text)
    text = _ITALIC_STAR.sub(r"\1", text)
    text = _ITALIC_UNDERSCORE.sub(r"\1", text)
    text = _STRIKE.sub(r"\1", text)
    text = _HTML_TAG.sub(" ", text)
    text = _LEFTOVER_MARKUP.sub(" ", text)  # a space, so "2*3" can't become "23"
    text = _EMOJI.sub(" ", text)
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)
    if not re.search(r"\w", text):
        return ""
    return text


async def speakable_sentences(deltas: AsyncIterable[str], max_chars: int = 200) -> AsyncIterator[str]:
    """Cleaned, non-empty sentences from a stream of LLM deltas, each as soon as it is complete."""
    splitter = SentenceSplitter(max_chars=max_chars)
    async for delta in deltas:
        for sentence in splitter.feed(delta):
            if spoken := clean_for_speech(sentence):
                yield spoken
    for sentence in splitter.flush():
        if spoken := clean_for_speech(sentence):
            yield spoken
