"""Text as a person sees it: without the invisible characters that a message or a transcript may carry.

Zero-width spaces and joiners, byte-order marks, soft hyphens, bidi marks, word joiners and control codes
render as nothing, so a message made only of them is empty to its sender and must be treated as empty.
Joiners and variation selectors inside visible text stay: they are what makes 👩‍💻 one emoji and ❤️ red,
and what Persian and Indic writing need between letters.
"""

from __future__ import annotations

import unicodedata

ZERO_WIDTH_JOINERS = frozenset("\u200c\u200d")  # ZWNJ, ZWJ
# Letters (category Lo/So) that fonts draw as blank space: Hangul fillers and the blank Braille pattern.
BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Emoji tag characters (U+E0020–E007F, category Cf) spell subdivision flags such as England's after 🏴.
TAGS = range(0xE0020, 0xE0080)


def is_visible(char: str) -> bool:
    """Whether `char` draws something on its own: not a space, a mark, a format or control code, a blank."""
    return unicodedata.category(char)[0] not in "CZM" and char not in BLANK_LETTERS


def visible_text(text: str | None) -> str:
    """`text` without invisible characters, its whitespace collapsed; "" when nothing in it can be seen."""
    kept: list[str] = []
    chars = text or ""
    for index, char in enumerate(chars):
        category = unicodedata.category(char)
        previous = kept[-1] if kept else ""
        if char in ZERO_WIDTH_JOINERS:
            following = chars[index + 1] if index + 1 < len(chars) else ""
            if previous and _joins(previous) and following and is_visible(following):
                kept.append(char)
        elif ord(char) in TAGS:
            if previous and (_joins(previous) or ord(previous) in TAGS):
                kept.append(char)
        elif category in ("Cc", "Cf", "Cs"):
            if char.isspace():  # tab, newline and the like separate words
                kept.append(" ")
        elif char not in BLANK_LETTERS:
            kept.append(char)
    cleaned = " ".join("".join(kept).split())
    return cleaned if any(is_visible(char) for char in cleaned) else ""


def _joins(char: str) -> bool:
    """A joiner may follow a visible character or a mark on one (a variation selector, an accent)."""
    return is_visible(char) or unicodedata.category(char)[0] == "M"
