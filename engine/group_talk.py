"""A conversation's history as the models see it, one person's or a group's.

In a voice channel or a group chat everyone shares one conversation: the LLM reads each person's words under
their name ("Ann: did you see it?") and is told whom it is answering, and the speech synthesizer hears each
person as a speaker of their own. A one-person conversation reads as it always has, without names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.chat_model import ChatMessage
from engine.store.models import Turn

# How a person without a known display name is named to the LLM.
SOMEONE = "Someone"
# Display names are the platform's and can be anything: they are cut to this and kept on one line.
MAX_NAME_CHARS = 40


def person_key(user_id: int) -> str:
    """A person as the synthesizer's context names them: each their own speaker (aLAN is `ASSISTANT`)."""
    return f"person:{user_id}"


def speaker_name(display_name: str | None) -> str:
    name = " ".join((display_name or "").split())[:MAX_NAME_CHARS].strip(" :")
    return name or SOMEONE


@dataclass(frozen=True)
class History:
    """The newest turns of a conversation, oldest first; in a shared one, each user turn's speaker's name."""

    turns: list[Turn]
    shared: bool = False
    names: dict[int, str] = field(default_factory=dict)  # turn id -> speaker name (user turns of a shared one)

    def said(self, name: str | None, text: str) -> str:
        """Words as the LLM reads them: under the speaker's name in a shared conversation."""
        return f"{speaker_name(name)}: {text}" if self.shared else text

    def messages(self) -> list[ChatMessage]:
        return [
            ChatMessage("user", self.said(self.names.get(turn.id), turn.text))
            if turn.role == "user"
            else ChatMessage("assistant", turn.text)
            for turn in self.turns
        ]

    def without_last(self) -> History:
        return History(self.turns[:-1], self.shared, self.names)


def group_context(speaker: str | None, bot_name: str, *, name_them: bool) -> str:
    """What the LLM is told about a group conversation, for the turn that answers `speaker`."""
    name = speaker_name(speaker)
    lines = [
        f"This is a group conversation: several people talk here, with each other and with you ({bot_name}). "
        "Each person's words start with their name. Not everything said was meant for you, but you heard it all.",
        f"{name} is talking to you now: answer {name}. Never start your reply with a name and a colon.",
    ]
    if name_them:
        lines.append(f"Others are listening too: start your reply by saying {name}'s name.")
    return "\n".join(lines)
