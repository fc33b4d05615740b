"""Telegram's webhook behind a load balancer: every update kept in the shared database, one chat's in order.

Several aLAN processes may serve one webhook URL; a load balancer hands each POST to any of them, so two updates
of one chat can land on two processes. What they share is the database (`engine.store.inbox`):

- The process that receives an update stores it in the inbox, then Telegram gets its 200: an update received is
  never lost, even if the process dies before handling it.
- A chat is handled by one process at a time: the one holding its claim, a lease renewed every `lease_s / 3`
  while it has the chat's updates in flight (`chat_leases`), or keeps a step of it in memory (a /clone waiting
  for its clip or its consent: `TelegramServices.keeps_state`), given up as soon as it has neither. The claim is taken
  again (so confirmed) each time updates are handed on: a process whose lease lapsed unnoticed hands on nothing.
  The receiving process claims an unclaimed chat and hands the update on at once; if another process holds the
  chat, the update waits in the inbox for that owner, which takes it when one of the chat's updates finishes, or
  at its next poll (`poll_s`). In one process the `TurnScheduler` keeps the order of what it was handed, as with
  long polling.
- A process that dies stops renewing: once its lease lapses (`lease_s`) any other takes the chat, and the
  updates left with it. One whose turn had begun (`LaneServices` notes when) may have stored its words: if so,
  the stored turn is followed up as after a restart (answered, or the person told it was lost), and the update
  is not handled twice; if not, it is handled as new. A restarted process takes its dead predecessor's chats at
  once (it listens where it did: see `release_predecessors`).
- A handled update is cleared from the inbox at once (what a person said goes; its number stays a day, so that
  Telegram retrying a delivery gets it handled once). `/forget` drops a person's updates still waiting, and
  a turn (or a group message being kept) whose update it dropped while it waited in line does not run.
- A turn begins only while its chat's lease is still this process's (`_begin`): one that waited in line past a
  lease lost unnoticed is left in the inbox, with those after it, for the chat's holder to hand on in order.

Order is update_id order among the updates a process finds waiting; an update that reaches the inbox after a
later one of its chat was handed on (Telegram delivering over several connections at once) is still handled,
late, and logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from telegram import Update
from telegram.ext import Application

from bot.restart_followup import pending_turns
from bot.telegram.chat_leases import Lane, LeaseKeeper
from bot.telegram.chat_leases import now_utc as _now
from bot.telegram.common import PLATFORM
from bot.telegram.lane_services import CURRENT, LaneServices, Work
from bot.telegram.recovery import follow_up_turn  # the one-turn follow-up, as after a restart
from engine.conversation import PendingTurn
from engine.store.inbox import Begun, Inbox, Waiting

log = logging.getLogger(__name__)

PURGE_EVERY_S = 600.0  # how often a process drops the numbers of updates handled over a day ago
POLL_S = 0.25  # how often waiting updates are looked for (another process's, a dead one's)
LEASE_S = 30.0  # how long a dead process's chats wait before another process takes them


@dataclass(frozen=True)
class LaneOptions:
    poll_s: float = POLL_S
    lease_s: float = LEASE_S
    stop_grace_s: float = 20.0  # on stopping, how long updates in flight may take to finish

    @property
    def renew_every_s(self) -> float:
        return self.lease_s / 3  # two renewals may fail (a slow database) before the lease lapses


def lane_options(settings: object, stop_grace_s: float) -> LaneOptions:
    """The options from the settings (ALAN_TELEGRAM_INBOX_POLL_SECONDS, ALAN_TELEGRAM_CHAT_LEASE_SECONDS, once
    `alan.settings` has them), else the defaults."""
    return LaneOptions(
        poll_s=float(getattr(settings, "telegram_inbox_poll_seconds", POLL_S)),
        lease_s=float(getattr(settings, "telegram_chat_lease_seconds", LEASE_S)),
        stop_grace_s=stop_grace_s,
    )


def lane_key(update: Update) -> tuple[str, str | None]:
    """The chat an update belongs to (whose updates are handled in order) and who sent it (for `/forget`).

    A Telegram chat's key is its id, as a conversation's scope is. Without a chat (a button under a message sent
    in inline mode) the sender's own lane keeps one person's updates in order; without either there is nothing
    to order the update with, and it goes alone.
    """
    user = update.effective_user
    sender = str(user.id) if user is not None else None
    if update.effective_chat is not None:
        return str(update.effective_chat.id), sender
    if user is not None:
        return f"user:{user.id}", sender
    return f"update:{update.update_id}", None


class ChatLanes:
    """The chats this process holds, fed from the inbox in order. `receive` stores; `open` starts serving."""

    def __init__(
        self, application: Application, services: LaneServices, inbox: Inbox, owner: str, options: LaneOptions
    ) -> None:
        self.application = application
        self.services = services
        self.inbox = inbox
        self.owner = owner  # this process, in the claims: host, port, pid and a random part
        self.options = options
        self._lanes: dict[str, Lane] = {}
        self.leases = LeaseKeeper(inbox, owner, self._lanes, options.lease_s, options.renew_every_s)
        self._background: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._open = False
        self._stopping = False

    # Receiving -----------------------------------------------------------------------------------------

    async def receive(self, update: Update, payload: str) -> bool:
        """Store an update (raises if that failed: Telegram must then be told to send it again) and, once open,
        serve its chat at once. False when it was here already (a delivery Telegram retried)."""
        chat, sender = lane_key(update)
        added = await asyncio.to_thread(self.inbox.add, PLATFORM, update.update_id, chat, sender, payload, _now())
        if not added:
            log.info("update %d was delivered again (Telegram retried it): it is handled once", update.update_id)
            return False
        if self._open:
            self._spawn(self.serve_chat(chat), f"telegram-lane-{chat}")
        return True

    # Serving a chat ------------------------------------------------------------------------------------

    async def serve_chat(self, chat: str) -> None:
        """Claim the chat if needed, hand on its updates waiting in order, and let it go when nothing is left."""
        while True:
            lane = self._lanes.setdefault(chat, Lane(chat))
            async with lane.lock:
                if self._lanes.get(chat) is not lane:
                    continue  # let go while this waited for the lock: serve it afresh
                try:
                    await self._serve(lane)
                except Exception as error:  # the database failing: the next poll tries again
                    log.warning("could not serve chat %s from the inbox now (%s); trying again shortly", chat, error)
                if not lane.held and not lane.tasks:
                    del self._lanes[chat]
                return

    async def _serve(self, lane: Lane) -> None:
        if self._stopping:
            return
        # Claimed even when held: the lease may have lapsed unnoticed (renewals stalled) and the chat gone to
        # another process. The claim tells, and extends the lease if it is still ours.
        held = lane.held
        if not await self.leases.claim(lane):
            if held:
                lane.lose()
                if lane.tasks:
                    log.error("chat %s was taken over by another process while this one still had it in flight",
                              lane.chat)  # fmt: skip
            return  # another process's: its owner takes what waits
        if self._stopping:
            return  # taken as this process stopped: `stop` lets it go with the others
        if lane.draining:
            return  # its last old update to let go serves the chat again (see `_finished`)
        waiting = [row for row in await asyncio.to_thread(self.inbox.waiting, PLATFORM, lane.chat)
                   if row.id not in lane.handed]  # fmt: skip
        settled = await self._settle_leftovers(lane, waiting)
        if self.leases.fresh(lane):  # reading and settling may have been slow: no hand-out on a stale lease
            for row in waiting:
                if row.id not in settled:
                    self._hand_on(lane, row)
        elif len(settled) < len(waiting):
            log.warning("chat %s: its lease was not confirmed in time; its updates wait for the next claim", lane.chat)
        if not lane.tasks and not self.services.keeps_state(lane.chat):
            await asyncio.to_thread(self.inbox.release, PLATFORM, [lane.chat], self.owner)
            lane.held = False

    async def _settle_leftovers(self, lane: Lane, waiting: list[Waiting]) -> set[int]:
        """Updates whose turn a stopped process had begun: those whose words it stored are done (their stored
        turn is followed up instead, first); the others are handled as new. Returns the ids now done."""
        begun = [row for row in waiting if row.started_at is not None]
        if not begun:
            return set()
        log.info("chat %s: %d update(s) were being handled by a process that stopped; taking them over",
                 lane.chat, len(begun))  # fmt: skip
        stored = set()
        for row in begun:
            assert row.started_at is not None
            if row.sender is not None and await asyncio.to_thread(
                self.inbox.words_stored_since, PLATFORM, row.sender, lane.chat, row.started_at
            ):
                stored.add(row.id)
        if stored and not lane.followed_up:
            now = _now()
            turns = [turn for turn in await pending_turns(self.services.conversation, PLATFORM, now)
                     if turn.who.scope == lane.chat]  # fmt: skip
            self._follow_up(lane, turns, now)
        for row_id in stored:
            await asyncio.to_thread(self.inbox.done, row_id, _now())
        as_new = [row.id for row in begun if row.id not in stored]
        await asyncio.to_thread(self.inbox.unstart, as_new, self.owner, _now())
        return stored

    def _follow_up(self, lane: Lane, turns: list[PendingTurn], now: datetime) -> None:
        """Start following up the chat's turns left unanswered: each takes its place in line at once, ahead of
        the updates handed on after it."""
        lane.followed_up = True
        for turn in turns:
            coroutine = follow_up_turn(self.application.bot, self.services, turn, now)
            self._start(lane, coroutine, f"follow-up-{turn.turn_id}")

    def _hand_on(self, lane: Lane, row: Waiting) -> None:
        """Handle one update in a task of its own; tasks started in order take their place in line in order."""
        try:
            update = Update.de_json(json.loads(row.payload), self.application.bot)
        except Exception as error:  # checked when received: only a damaged row can get here
            log.error("update %d in the inbox can't be read (%s): it is dropped", row.update_id, error)
            self._spawn(asyncio.to_thread(self.inbox.done, row.id, _now()), f"telegram-drop-{row.update_id}")
            return
        if row.update_id < lane.last_update_id:
            log.info("update %d of chat %s arrived after a later one had been handed on: it is answered late",
                     row.update_id, lane.chat)  # fmt: skip
        lane.last_update_id = max(lane.last_update_id, row.update_id)
        lane.handed[row.id] = lane.tenure
        work = Work(row.id, row.update_id, functools.partial(self._begin, lane, lane.tenure))
        context = contextvars.copy_context()
        context.run(CURRENT.set, work)
        self._start(lane, self._handle(lane, work, update), f"telegram-update-{row.update_id}", context)

    async def _handle(self, lane: Lane, work: Work, update: Update) -> None:
        try:
            await self.application.process_update(update)  # every handler guarded: it logs and answers failures
            await work.settled()
            if work.left_for_another:
                return  # still waiting in the inbox: the chat's holder hands it on
            try:
                await asyncio.to_thread(self.inbox.done, work.row_id, _now())
            except Exception as error:
                log.error("update %d was handled but could not be cleared from the inbox (%s): it may be handled "
                          "again", work.update_id, error)  # fmt: skip
        finally:
            # However it ended: an entry left behind would hold the chat here, draining, for good.
            lane.handed.pop(work.row_id, None)

    async def _begin(self, lane: Lane, tenure: int, row_id: int) -> Begun:
        """Note that the update's turn begins, if the chat is still this process's (see `Inbox.mark_started`).

        A turn waits in line behind the chat's others, minutes at times: the lease that was fresh when it was
        handed on may have lapsed since, and the chat gone to another process that hands the same update on.
        Once one update finds that, the chat is lost here: the updates handed on after it don't begin either,
        and are handed on again, in order, by the chat's next holder (this process too, if it claims it again).
        """
        if lane.tenure != tenure:
            return Begun.ELSEWHERE
        try:
            begun = await asyncio.to_thread(self.inbox.mark_started, row_id, self.owner, _now())
        except Exception as error:
            # The lease, renewed on its own, still vouches for the chat: the turn goes on (only a takeover after a
            # crash would know less). Past that, another process may be answering it.
            if lane.tenure != tenure:
                return Begun.ELSEWHERE
            if self.leases.fresh(lane):
                log.warning("could not note in the inbox that a turn began (%s); it goes on", error)
                return Begun.YES
            log.warning("could not note in the inbox that a turn began (%s), and the chat's lease is unconfirmed: "
                        "its updates are left to the inbox", error)  # fmt: skip
            lane.lose()  # as if lost: those after it must not begin before it
            return Begun.ELSEWHERE
        if begun is Begun.ELSEWHERE and lane.tenure == tenure:
            log.warning("chat %s: its lease lapsed while a turn waited in line (another process may have answered "
                        "it); its updates are left to the inbox", lane.chat)  # fmt: skip
            lane.lose()
        return begun

    def _start(
        self, lane: Lane, coroutine: Coroutine[Any, Any, None], name: str, context: contextvars.Context | None = None
    ) -> None:
        task = asyncio.create_task(coroutine, name=name, context=context)
        lane.tasks.add(task)
        task.add_done_callback(lambda done: self._finished(lane, done))

    def _finished(self, lane: Lane, task: asyncio.Task[None]) -> None:
        lane.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("handling a Telegram update failed", exc_info=task.exception())
        if not self._stopping:
            # Its next update may wait already (another process stored it); or, with nothing left, let the chat go.
            self._spawn(self.serve_chat(lane.chat), f"telegram-lane-{lane.chat}")

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # Starting, polling, stopping -----------------------------------------------------------------------

    async def release_predecessors(self, prefix: str) -> None:
        """Take back at once the chats of a dead process that listened where this one does (call once listening):
        a restart after a crash needn't wait for its leases. This takes each process behind the load balancer to
        have a host name or port of its own, as containers and pods have."""
        released = await asyncio.to_thread(self.inbox.release_predecessors, PLATFORM, prefix, self.owner)
        if released:
            log.info("took back %d chat(s) that an earlier process on this host and port held", released)

    async def recover(self) -> int:
        """Follow up the turns left unanswered (a process stopped mid-turn, or its answer failed), each in a chat
        this process could claim: a chat another process holds is being answered there. Call before `open`."""
        now = _now()
        by_chat: dict[str, list[PendingTurn]] = defaultdict(list)
        for turn in await pending_turns(self.services.conversation, PLATFORM, now):
            by_chat[turn.who.scope].append(turn)
        count = 0
        for chat, turns in by_chat.items():
            lane = self._lanes.setdefault(chat, Lane(chat))
            async with lane.lock:
                if not await self.leases.claim(lane):
                    log.info("chat %s is another process's now: it answers what is left there", chat)
                    continue
                self._follow_up(lane, turns, now)
                count += len(turns)
        log.info("Telegram: %d turn(s) were left unanswered before this start", count)
        self.leases.start()  # the chats claimed here are held from now on
        return count

    def open(self) -> None:
        """Serve: what was received so far at the first poll, what comes next as it comes."""
        self._open = True
        self.leases.start()
        self._poller = asyncio.create_task(self._poll(), name="telegram-inbox-poll")

    async def _poll(self) -> None:
        purged = time.monotonic() - PURGE_EVERY_S  # the first purge at once: a process may not run for long
        failing = False
        while True:
            try:
                self._serve_waiting(await asyncio.to_thread(self.inbox.chats_to_serve, PLATFORM, self.owner, _now()))
                if time.monotonic() - purged >= PURGE_EVERY_S:
                    await asyncio.to_thread(self.inbox.purge, PLATFORM, _now())
                    purged = time.monotonic()
                if failing:
                    log.info("the Telegram inbox can be read again")
                failing = False
            except Exception as error:
                if not failing:  # once per outage, not every poll
                    log.warning("the Telegram inbox can't be read (%s); updates wait until it can", error)
                failing = True
            await asyncio.sleep(self.options.poll_s)

    def _serve_waiting(self, waiting: dict[str, int]) -> None:
        for chat, count in waiting.items():
            lane = self._lanes.get(chat)
            if lane is not None and (lane.lock.locked() or (lane.held and count <= len(lane.handed))):
                continue  # being served (during a database stall they would pile up), or all in flight here
            self._spawn(self.serve_chat(chat), f"telegram-lane-{chat}")
        for chat, lane in self._lanes.items():
            idle = lane.held and not lane.tasks and chat not in waiting and not lane.lock.locked()
            if idle and not self.services.keeps_state(chat):
                # Let it go: a release failed, or the step kept in memory here (a /clone) ended or expired.
                self._spawn(self.serve_chat(chat), f"telegram-lane-{chat}")

    async def stop(self) -> None:
        """Stop serving: updates in flight get `stop_grace_s` to finish, the rest stay in the inbox for the next
        process (cancelled turns are followed up there); the chats are let go at once."""
        self._open = False
        self._stopping = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        try:
            await self._finish_in_flight()
            try:
                # Every claim of this process, also one taken by a `serve_chat` cancelled before it noted it.
                await asyncio.to_thread(self.inbox.release, PLATFORM, None, self.owner)
            except Exception as error:
                log.warning("could not let this process's chats go (%s): others take them when the leases lapse",
                            error)  # fmt: skip
        finally:
            # Renewed until now: a lease lapsing during the grace would let another process answer the same turn.
            await self.leases.stop()
        self._lanes.clear()

    async def _finish_in_flight(self) -> None:
        """Give what is running `stop_grace_s` to finish (in the background, then in the lanes); cancel the rest."""
        # Not cancelled first: a claim being taken in a thread would be taken anyway, after the release. They hand
        # nothing on now, and each is a few short transactions.
        if self._background:
            _, late = await asyncio.wait(self._background, timeout=self.options.stop_grace_s)
            for task in late:
                task.cancel()
        in_flight = [task for lane in self._lanes.values() for task in lane.tasks]
        if in_flight:
            _, late = await asyncio.wait(in_flight, timeout=self.options.stop_grace_s)
            if late:
                log.warning("Telegram: %d update(s) still in flight at the stop are left to the next process",
                            len(late))  # fmt: skip
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
