"""Keeping the leases on the chats this process serves (see `chat_lanes`): a claim, renewed on its own.

A lease is only as good as its last renewal: a process whose renewals stall (a slow database, a stalled event
loop) may have lost its chats without knowing. So a lease is renewed by a task of its own, never behind slower
inbox work, and a chat whose lease was last confirmed longer ago than `lease_s` minus a margin hands out nothing
new until a claim confirms it again: by then another process may have taken it. The margin covers the hosts'
clocks differing a little and the time between the check and the turn starting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot.telegram.common import PLATFORM
from engine.store.inbox import Inbox

log = logging.getLogger(__name__)

MARGIN = 0.25  # of the lease: a lease confirmed longer ago than the rest of it may be another process's by now


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass
class Lane:
    """A chat this process is serving or about to: its claim, and the updates (and follow-ups) in flight."""

    chat: str
    held: bool = False
    confirmed: float = float("-inf")  # time.monotonic() when a claim or renewal that succeeded began
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    handed: dict[int, int] = field(default_factory=dict)  # inbox row id → the tenure it was handed on under
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    last_update_id: int = 0
    followed_up: bool = False  # the turns left unanswered here were followed up under this claim
    tenure: int = 0  # counts the claims lost: work handed on under an earlier one must not begin

    def lose(self) -> None:
        """Another process may have the chat now: what has begun finishes here; nothing more is handed on, and
        nothing handed on begins (it stays in the inbox for the chat's next holder, in order)."""
        self.held = False
        self.followed_up = False  # a later claim follows up afresh what was left then
        self.tenure += 1
        self.last_update_id = 0  # what is handed on again is in order of its own, not late

    @property
    def draining(self) -> bool:
        """Work handed on under a claim lost since is still in flight here: nothing is handed on until it has let
        go of its updates (each is handed on again, in order with those after it)."""
        return any(tenure != self.tenure for tenure in self.handed.values())


class LeaseKeeper:
    """Claims chats for `owner` and renews the claims of the lanes it holds, every `renew_every_s`."""

    def __init__(self, inbox: Inbox, owner: str, lanes: dict[str, Lane], lease_s: float, renew_every_s: float) -> None:
        self.inbox = inbox
        self.owner = owner
        self.lanes = lanes  # the lanes of `ChatLanes`, shared
        self.lease_s = lease_s
        self.renew_every_s = renew_every_s
        self._lease = timedelta(seconds=lease_s)
        self._task: asyncio.Task[None] | None = None

    async def claim(self, lane: Lane) -> bool:
        """Take the chat, or keep it (the same upsert extends the lease); False while another process holds it."""
        began = time.monotonic()
        if not await asyncio.to_thread(self.inbox.claim, PLATFORM, lane.chat, self.owner, now_utc(), self._lease):
            return False
        lane.held = True
        lane.confirmed = max(lane.confirmed, began)  # the lease runs from when `now` was taken, at the latest
        return True

    def fresh(self, lane: Lane) -> bool:
        """Whether the lease was confirmed recently enough to hand out more of the chat's updates."""
        return lane.held and time.monotonic() - lane.confirmed < self.lease_s * (1 - MARGIN)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._keep(), name="telegram-chat-leases")

    async def stop(self) -> None:
        """Stop renewing: call once the chats are let go (until then a lease must not lapse)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _keep(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.renew_every_s)
            try:
                await self.renew()
                if failing:
                    log.info("the chats' leases can be renewed again")
                failing = False
            except Exception as error:
                if not failing:  # once per outage: `fresh` stops the hand-outs if it goes on
                    log.warning("could not renew the leases on this process's chats (%s); trying again", error)
                failing = True

    async def renew(self) -> None:
        held = {chat: lane for chat, lane in self.lanes.items() if lane.held}
        if not held:
            return
        began = time.monotonic()
        kept = await asyncio.to_thread(self.inbox.renew, PLATFORM, list(held), self.owner, now_utc(), self._lease)
        for chat, lane in held.items():
            if chat in kept:
                lane.confirmed = max(lane.confirmed, began)
            elif self.lanes.get(chat) is lane and lane.held and lane.confirmed < began:
                # Not let go and claimed again meanwhile (the renewal racing a release): really lost. This process
                # stalled past its lease and another took the chat.
                lane.lose()
                if lane.tasks:
                    log.error("chat %s was taken over by another process while this one still had it in flight",
                              chat)  # fmt: skip
