"""Who is talking, and where: how a platform names a person and a conversation to the engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Participant:
    """Who is talking, and where. `scope` is opaque to the engine: a chat, a channel."""

    platform: str
    user_id: str
    scope: str
    display_name: str | None = None
    # A wider scope whose default voice applies where `scope` has none (a Discord server around its channels).
    parent_scope: str | None = None
    # Everyone in `scope` shares one conversation (a voice channel, a group chat): each hears what the others said.
    shared: bool = False
