"""What `/memory` says, the same on Telegram, on Discord and in `alan memory`: the numbered list of what aLAN
remembers of a person (where and when each fact was told), and the answers to its actions.

Only words live here; each platform decides who may see them (Telegram shows the list in a private chat only) and
spells the commands its own way (`MemoryCommands`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from engine.conversation_memory import Fact, MemoryListing

# Where a fact was told, by the platform that heard it (a person's accounts, once linked, share one memory).
PLACES = {"telegram": "on Telegram", "discord": "on Discord", "local": "on the command line"}


@dataclass(frozen=True)
class MemoryCommands:
    """How a platform spells `/memory`'s actions (and /reset, /forget) in the hints its answers give."""

    forget: str
    clear: str
    off: str
    on: str
    reset: str
    forget_all: str


TELEGRAM = MemoryCommands("/memory forget N", "/memory clear", "/memory off", "/memory on", "/reset", "/forget")
DISCORD = MemoryCommands(
    "/memory action:forget number:N", "/memory action:clear", "/memory action:off", "/memory action:on", "/reset",
    "/forget",
)  # fmt: skip
CLI = MemoryCommands(
    "alan memory forget N", "alan memory clear", "alan memory off", "alan memory on", "alan reset", "alan forget"
)


def facts_count(count: int) -> str:
    return f"{count} fact" if count == 1 else f"{count} facts"


def when(said_at: datetime, now: datetime | None = None) -> str:
    """A day as people say it, in the server's time zone: "today", "yesterday", "2 Dec", "2 Dec 2023"."""
    if said_at.tzinfo is None:
        said_at = said_at.replace(tzinfo=UTC)  # SQLite gives the stored UTC time back without its zone
    day = said_at.astimezone()
    today = (now or datetime.now(UTC)).astimezone().date()
    days = (today - day.date()).days
    if days == 0:
        return "today"
    if days == 1:
        return "yesterday"
    short = f"{day.day} {day:%b}"
    return short if day.year == today.year else f"{short} {day.year}"


def told(fact: Fact, now: datetime | None = None) -> str:
    """ "told on Telegram, 2 Dec": where and when, as the list shows it after each fact."""
    if fact.platform == "telegram" and fact.scope.startswith("-"):  # Telegram's group chats have negative ids
        place = "in a Telegram group"
    else:
        place = PLACES.get(fact.platform, f"on {fact.platform.title()}")
    return f"told {place}, {when(fact.said_at, now)}"


def listing_text(listing: MemoryListing, commands: MemoryCommands, *, now: datetime | None = None) -> str:
    """The whole answer to `/memory`: the numbered facts and what can be done with them, or what memory is."""
    if not listing.facts and not listing.enabled:
        return (
            f"My memory is off for you, and I don't remember anything about you. {commands.on} lets me note "
            "things you tell me about yourself again, to bring them up in later conversations."
        )
    if not listing.facts:
        return (
            "I don't remember anything about you yet. As we talk, I note short facts you tell me about yourself "
            "(your name, the people in your life, what you like, your plans) so that I can bring them up in later "
            f"conversations, even after {commands.reset}. You'll find them here, each with where and when you told "
            f"me. If you'd rather I didn't, {commands.off} turns my memory off."
        )
    if listing.enabled:
        heading = "What I remember about you:"
    else:
        heading = (
            f"My memory is off for you: I'm not noting anything new ({commands.on} turns it back on). What I "
            "remembered before, which I still use:"
        )
    lines = [heading, *(f"{fact.number}. {fact.text} ({told(fact, now)})" for fact in listing.facts), ""]
    if listing.full:
        lines.append(
            f"That's as many facts as I keep ({listing.cap}): when I learn something new, the ones I haven't "
            "needed for the longest are let go to make room."
        )
    hint = f"To forget one: {commands.forget}. To forget them all: {commands.clear}."
    lines.append(f"{hint} To stop me noting new things: {commands.off}." if listing.enabled else hint)
    return "\n".join(lines)


def forgotten(text: str | None) -> str:
    """After `forget N`; `text` None where others can read the answer (a group): the fact itself isn't repeated."""
    return f"Done: I've forgotten “{text}”" if text else "Done: I've forgotten that fact."


def clear_question(count: int | None) -> str:
    """Asked before `clear`; `count` None where others can read it."""
    if not count:
        what = "everything I remember about you"
    else:
        what = f"{'the one fact' if count == 1 else f'all {count} facts'} I remember about you"
    return f"Forget {what}, and my summary of our earlier conversations? This can't be undone."


def cleared(count: int | None) -> str:
    """After `clear`; `count` None where others can read it."""
    if count == 0:
        return "Done: I don't remember anything about you now."
    what = f" ({facts_count(count)})" if count else ""
    return f"Done: I've forgotten everything I remembered about you{what}. Our conversations and your voices stay."


def switched(enabled: bool, commands: MemoryCommands) -> str:
    if enabled:
        return (
            "My memory is on: as we talk, I'll note things you tell me about yourself, to bring them up later. "
            f"{commands.off} turns it off again."
        )
    return (
        f"My memory is off for you: I won't note anything new. What I already remember stays, and I still use it, "
        f"until you forget it ({commands.clear}). {commands.on} turns my memory back on."
    )
