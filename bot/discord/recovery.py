"""After a restart: answer the Discord turns a stopped process left unanswered, or say they were lost.

Once the bot is ready, every Discord conversation whose last stored turn is a person's is followed up as
`bot.restart_followup` decides: a recent one is answered as text in its channel (or DM), through the same
engine path and turn scheduler as a mention; an older one gets the apology, stored as the reply.

With Discord's shards split across processes every process reads the same turns from the shared database, so
each follows up only the channels `owns` says are its own (its shards' servers; DMs where shard 0 runs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import discord

from alan.scheduler import SchedulerFullError, TurnScheduler
from bot.discord.session import MAX_MESSAGE, PLATFORM
from bot.restart_followup import follow_up, pending_turns
from bot.text_split import split_text
from engine.conversation import Conversation, PendingTurn
from engine.errors import TurnError
from engine.events import ReplySentence

log = logging.getLogger(__name__)


async def follow_up_unanswered(
    client: Any, conversation: Conversation, scheduler: TurnScheduler, *, owns: Callable[[Any], bool] = lambda _: True
) -> int:
    """Follow up the Discord turns left unanswered in the channels `owns` (`client`: the bot); returns how many
    this process followed up."""
    now = dt.datetime.now(dt.UTC)
    pending = await pending_turns(conversation, PLATFORM, now)
    log.info("Discord: %d turn(s) were left unanswered before this start", len(pending))
    done = await asyncio.gather(*(_follow_up(client, conversation, scheduler, turn, now, owns) for turn in pending))
    return sum(done)


async def _follow_up(client: Any, conversation: Conversation, scheduler: TurnScheduler, turn: PendingTurn,
                     now: dt.datetime, owns: Callable[[Any], bool]) -> bool:  # fmt: skip
    """Follow `turn` up if its channel is this process's; False when it is another's (or out of reach)."""
    channel_id = int(turn.who.scope)  # a Discord scope is its channel's id (see `participant`)
    try:
        # Another process's server is not in this one's cache: fetching it tells whose it is.
        channel = client.get_channel(channel_id) or await client.fetch_channel(channel_id)
    except discord.HTTPException as error:  # deleted, or no longer visible to the bot
        log.warning("turn %s stays unanswered: channel %s is out of reach: %s", turn.turn_id, channel_id, error)
        return False
    if not owns(channel):
        log.debug("turn %s of channel %s is for the process running its shard", turn.turn_id, channel_id)
        return False

    # A server's channel is one conversation shared by everyone in it (see `participant`); a DM is the person's.
    if getattr(channel, "guild", None) is not None:
        turn = dataclasses.replace(turn, who=dataclasses.replace(turn.who, shared=True))

    async def answer() -> bool:
        return await _answer(channel, conversation, turn)

    async def job() -> None:
        await follow_up(conversation, turn, now, answer=answer, tell=channel.send)

    try:
        await scheduler.run(f"discord-text:{channel_id}", job)  # the queue a mention there would wait in
    except SchedulerFullError:
        log.warning("turn scheduler full: turn %s of channel %s stays unanswered until the next start", turn.turn_id,
                    channel_id)  # fmt: skip
    except Exception:
        log.exception("could not follow up turn %s of channel %s", turn.turn_id, channel_id)
    return True


async def _answer(channel: Any, conversation: Conversation, turn: PendingTurn) -> bool:
    """Answer the turn in `channel` as a mention is answered; False if the answer failed."""
    try:
        async with channel.typing():
            events = conversation.resume(turn.who, turn.turn_id, speak=False)
            reply = " ".join([event.text async for event in events if isinstance(event, ReplySentence)])
        if not reply:
            return True  # no longer waiting (answered, /reset or /forget meanwhile): nothing to say
        for part in split_text(reply, MAX_MESSAGE):
            await channel.send(part)
    except (TurnError, discord.HTTPException) as error:
        log.warning("could not answer turn %s of channel %s after the restart: %s", turn.turn_id, channel.id, error)
        return False
    log.info("answered turn %s of channel %s, left unanswered before the restart", turn.turn_id, channel.id)
    return True
