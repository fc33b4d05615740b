"""What both platforms say about linking accounts (`/link`, `/unlink`): one wording, whichever bot says it."""

from __future__ import annotations

from collections.abc import Sequence

from engine.conversation_links import Account

WHAT_IS_SHARED = (
    "Linked accounts are one person to me: your voices, the voice I answer you in, and what I remember about you "
    "are shared. Each chat keeps its own conversation."
)


def code_message(code: str, other_platform: str, command: str) -> str:
    return (
        f"Your code: {code}\n\nSend {command} {code} to me on {other_platform} within 10 minutes, from the account "
        f"you want to link with this one. The code works once. {WHAT_IS_SHARED}"
    )


def offer_message(account: Account) -> str:
    return f"This code is from {account}. Link this account with it? {WHAT_IS_SHARED}"


def linked_message(account: Account) -> str:
    return f"Done: this account and {account} are linked. {WHAT_IS_SHARED} /unlink splits them again."


def unlinked_message(accounts: Sequence[Account]) -> str:
    if not accounts:
        return "This account isn't linked with another one. Use /link to link it."
    others = ", ".join(str(account) for account in accounts)
    return (
        f"Done: this account is no longer linked with {others}. It keeps the voices made from it and a copy of "
        f"what I remembered; {others} keeps its own voices and what I remember. Your conversations stay as they were."
    )


def status_line(accounts: Sequence[Account]) -> str:
    if not accounts:
        return ""
    return "Linked now with " + ", ".join(str(account) for account in accounts) + "."
