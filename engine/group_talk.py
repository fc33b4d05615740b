"""A conversation's history as the models see it, one person's or a group's.

In a voice channel or a group chat everyone shares one conversation: the LLM reads each person's words under
their name ("Ann: did you see it?") and is told whom it is answering, and the speech synthesizer hears each
person as a speaker of their own. A one-person conversation reads as it always has, without names.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from engine.chat_model import ChatMessage
from engine.store.models import Turn

# How a person without a known display name is named to the LLM.
SOMEONE = "Someone"
# Display names are the platform's and can be anything: they are cut to this and kept on one line.
MAX_NAME_CHARS = 40
# "Name: " at the start of a line of the reply, as a model that read a group's lines may write them.
# ("**Alan:**" in markdown too.)
_SPEAKER_LABEL = re.compile(rf"[ \t]*[*_]*([^\W\d_][^:\n.!?*]{{0,{MAX_NAME_CHARS - 1}}}?)[*_]*:[*_]*[ \t]*")
# What may still become such a label once more arrives ("**", "Al", " Bob").
_LABEL_SO_FAR = re.compile(r"[ \t]*[*_]*(?:[^\W\d_][^.!?:\n]*)?")


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

    def people(self, speaker: str | None) -> set[str]:
        """Everyone heard here, by name, and the person speaking now."""
        return {*self.names.values(), speaker_name(speaker)}


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


async def own_words(deltas: AsyncIterator[str], bot_name: str, people: Iterable[str]) -> AsyncIterator[str]:
    """The reply without the script a model may write after reading a group's lines: "Alan: " before its own
    words is dropped, and the reply ends where, once its own words began, it starts a line for one of the `people`
    ("Bob: thanks!"). A label before anything was said ("Bob: sure…", copying the lines it read) is dropped too.
    Ending early closes `deltas` (the LLM's HTTP stream) at once."""
    others = {speaker_name(name).casefold() for name in people} - {bot_name.casefold()}
    pending, at_line_start, said = "", True, False
    async for delta in deltas:
        pending += delta
        while pending:
            if at_line_start:
                label = _SPEAKER_LABEL.match(pending)
                undecided = label is None and ":" not in pending and "\n" not in pending
                if undecided and len(pending) <= MAX_NAME_CHARS and _LABEL_SO_FAR.fullmatch(pending):
                    break  # could still become "Name:": wait for more
                if label is not None:
                    name = label.group(1).strip(" *_").casefold()
                    if name in others and said:
                        await _close(deltas)
                        return  # the model goes on as someone else: the reply ends here
                    if name in others or name == bot_name.casefold():
                        pending = pending[label.end() :]
                at_line_start = False
                continue
            line_end = pending.find("\n")
            if line_end < 0:
                said = said or bool(pending.strip())
                yield pending
                pending = ""
            else:
                if line_end > 0:
                    said = said or bool(pending[:line_end].strip())
                    yield pending[:line_end]
                yield "\n"
                pending, at_line_start = pending[line_end + 1 :], True
    if pending:
        yield pending


async def _close(stream: AsyncIterator[str]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
