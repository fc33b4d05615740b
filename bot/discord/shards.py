"""Discord shards split across processes: which shards this process runs, and so what is this process's to do.

A bot in many servers splits them into shards, one gateway connection each: Discord delivers a server's events
(messages, interactions, voice states) only on shard `(server_id >> 22) % shard_count`, and direct messages only on
shard 0. Several aLAN processes can each run some of the shards (ALAN_DISCORD_SHARDS of ALAN_DISCORD_SHARD_COUNT)
on one database. A server then lives in exactly one process, so what is kept per server in memory (its voice
session, its queue of turns, /reset's wait for the turn in progress) needs nothing more. What is not started by a
server's own events must be given to one process explicitly:

- restart follow-ups are read from the shared database: each process follows up only the channels of its own
  servers, and direct messages only where shard 0 runs (else every process answers the same turn, or apologises
  for one another process is still answering);
- the slash commands are one set per application: only the process running shard 0 syncs them (each process
  decides alone, and exactly one process of a complete deployment runs shard 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alan.settings import Settings


def guild_shard(guild_id: int, shard_count: int) -> int:
    """The shard Discord delivers a server's events on (discord.py's `Guild.shard_id` computes it the same way)."""
    return (guild_id >> 22) % shard_count


@dataclass(frozen=True)
class Shards:
    count: int | None  # shards across every process; None: not sharded (one connection, Discord's default)
    ids: tuple[int, ...]  # the shards this process runs (all of `count` when ALAN_DISCORD_SHARDS is empty)

    @classmethod
    def from_settings(cls, settings: Settings) -> Shards:
        count = settings.discord_shard_count
        if count is None:
            return cls(None, ())
        return cls(count, tuple(settings.discord_shard_id_list) or tuple(range(count)))

    @property
    def sharded(self) -> bool:
        return self.count is not None

    def client_options(self) -> dict[str, Any]:
        """discord.py's AutoShardedClient options (empty when not sharded)."""
        if self.count is None:
            return {}
        return {"shard_count": self.count, "shard_ids": list(self.ids)}

    def runs(self, shard_id: int) -> bool:
        return self.count is None or shard_id in self.ids

    def has_guild(self, guild_id: int) -> bool:
        return self.count is None or guild_shard(guild_id, self.count) in self.ids

    @property
    def has_direct_messages(self) -> bool:
        return self.runs(0)

    @property
    def syncs_commands(self) -> bool:
        return self.runs(0)

    def has_channel(self, channel: Any) -> bool:
        """Whether `channel` (a server's channel or thread, or a DM) is this process's to talk in."""
        guild = getattr(channel, "guild", None)
        return self.has_guild(guild.id) if guild is not None else self.has_direct_messages

    def describe(self) -> str:
        if self.count is None:
            return "one connection for every server (ALAN_DISCORD_SHARD_COUNT unset)"
        ids = ", ".join(map(str, self.ids))
        syncs = "syncs the slash commands" if self.syncs_commands else "leaves the slash commands to shard 0's process"
        return f"shard(s) {ids} of {self.count}; this process {syncs}"
