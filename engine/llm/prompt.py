"""What every chat backend sends: aLAN's system prompt, the person's language, and the history that fits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

from engine.chat_model import ChatMessage

SYSTEM_PROMPT = """\
You are aLAN, a warm and friendly companion who talks with people by voice. Everything you write is read \
aloud by a text-to-speech voice, so write the way people speak.

- Keep it brief: one to three short sentences, unless the person asks for more.
- Plain sentences only: no markdown, no lists or bullet points, no headings, no code, no emoji, no links.
- Say numbers, symbols and abbreviations the way you would say them out loud.
- Be warm, curious and natural, like a good friend; a short follow-up question is welcome when it helps.
- What the person says comes from speech recognition: if it seems garbled or cut off, ask them to repeat it.
- If you don't know something, say so plainly."""

# About 4 characters per token: ~2,000 tokens of history leaves room for the system prompt and the reply
# in a 4,096-token context (Ollama's default for most models, and a common server default).
HISTORY_CHARS = 8_000
# A spoken answer is short; this stops a rambling one before it eats the turn.
MAX_REPLY_TOKENS = 300
# A structured answer (the memory's changes) may list several facts: more room, still a stop for a looping model.
MAX_JSON_TOKENS = 1024
TEMPERATURE = 0.7

# Names of the languages Whisper hears most, for telling the model which language to answer in; a code not
# listed is given as the ISO 639-1 code itself, which models understand too.
LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "pl": "Polish", "ru": "Russian", "uk": "Ukrainian", "tr": "Turkish", "ar": "Arabic",
    "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "hi": "Hindi", "sv": "Swedish", "da": "Danish",
    "no": "Norwegian", "fi": "Finnish", "cs": "Czech", "el": "Greek", "he": "Hebrew", "ca": "Catalan",
    "ro": "Romanian", "hu": "Hungarian", "id": "Indonesian", "vi": "Vietnamese", "th": "Thai",
}  # fmt: skip


def language_instruction(language: str | None) -> str | None:
    """What the system prompt says about the person's language; nothing for English, the prompt's own."""
    if not language or language == "en":
        return None
    name = LANGUAGE_NAMES.get(language)
    if name is None:
        return f"The person speaks the language with ISO 639-1 code {language!r}; answer in that language."
    return f"The person speaks {name}; answer in {name}."


def trim_history(history: Sequence[ChatMessage], budget_chars: int) -> list[ChatMessage]:
    """The newest messages whose contents fit in `budget_chars`, oldest first; whole messages only.

    Trimming stops at the first message that does not fit, so the kept part is an unbroken tail of the
    conversation (a hole in the middle would confuse the model more than a shorter memory).
    """
    kept: list[ChatMessage] = []
    used = 0
    for message in reversed(history):
        if not message.content.strip():
            continue
        used += len(message.content)
        if used > budget_chars:
            break
        kept.append(message)
    kept.reverse()
    return kept


def build_messages(
    system_prompt: str,
    history: Sequence[ChatMessage],
    user_text: str,
    *,
    history_chars: int = HISTORY_CHARS,
    context: str | None = None,
    language: str | None = None,
) -> list[dict[str, str]]:
    """What is sent: the system prompt (always), the trimmed history, then the new user turn; messages of one
    role in a row (a group's people talking among themselves) are sent as one.

    `language` is the person's (a Whisper language code); the model is told to answer in it.
    """
    system = system_prompt
    if instruction := language_instruction(language):
        system = f"{system}\n\n{instruction}"
    if context:
        system = f"{system}\n\nWhat you know about this conversation:\n{context.strip()}"
    budget = max(0, history_chars - len(user_text))
    messages = [{"role": "system", "content": system}]
    for message in [*trim_history(history, budget), ChatMessage("user", user_text)]:
        if messages[-1]["role"] == message.role != "system":
            # Several people in a row (a group): one message of their lines. Many chat templates (Gemma's,
            # Mistral's) refuse two user messages in a row.
            messages[-1]["content"] += "\n" + message.content
        else:
            messages.append({"role": message.role, "content": message.content})
    return messages


class PromptedChat:
    """What every chat backend shares: the prompt it sends, `reply`, and closing as an async context manager.

    A backend sets `system_prompt` and `history_chars` and implements `stream_reply` and `aclose`.
    """

    system_prompt: str
    history_chars: int

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def build_messages(
        self,
        history: Sequence[ChatMessage],
        user_text: str,
        *,
        context: str | None = None,
        language: str | None = None,
    ) -> list[dict[str, str]]:
        """What is sent: the system prompt (with the person's language), the trimmed history, the new user turn."""
        return build_messages(
            self.system_prompt, history, user_text, history_chars=self.history_chars, context=context, language=language
        )
