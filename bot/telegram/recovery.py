"""After a restart: answer the Telegram turns that a stopped process left unanswered, or say they were lost.

getUpdates counts an update as handled as soon as the next poll asks past it, long before its answer is
made, so a process killed mid-turn would leave the person waiting forever. On start-up every Telegram chat
whose last stored turn is a person's is followed up as `bot.restart_followup` decides, each in its place in
the turn scheduler (ahead of anything new from that chat), in the background while polling starts. (Only turns
that were stored are known: messages still queued behind them in memory when the process died were never
stored and can't be recovered.)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from telegram import Bot
from telegram.error import TelegramError

from alan.scheduler import SchedulerFullError
from bot.restart_followup import LOST, follow_up, pending_turns
from bot.telegram.common import PLATFORM, TelegramServices, say_quietly
from bot.telegram.send import chat_action
from bot.telegram.turn import note_policy, send_answer
from engine.conversation import PendingTurn
from engine.errors import TurnError

log = logging.getLogger(__name__)

__all__ = ["LOST", "follow_up_unanswered"]


async def follow_up_unanswered(bot: Bot, services: TelegramServices) -> int:
    """Queue a follow-up for every turn left unanswered; returns how many. Call before updates are polled."""
    now = dt.datetime.now(dt.UTC)
    pending = await pending_turns(services.conversation, PLATFORM, now)
    log.info("Telegram: %d turn(s) were left unanswered before this start", len(pending))
    for turn in pending:
        # Spawned now: each takes its chat's place in the queue before the first new update can.
        services.spawn(follow_up_turn(bot, services, turn, now), name=f"follow-up-{turn.turn_id}")
    return len(pending)


async def follow_up_turn(bot: Bot, services: TelegramServices, turn: PendingTurn, now: dt.datetime) -> None:
    chat_id = int(turn.who.scope)  # a Telegram scope is its chat id (see `participant`)
    if chat_id < 0:  # a group's (Telegram's group ids are negative): one conversation shared by everyone in it
        turn = dataclasses.replace(turn, who=dataclasses.replace(turn.who, shared=True))
    replier = services.replier_to(bot, chat_id)

    async def job() -> None:
        await follow_up(services.conversation, turn, now, answer=lambda: _answer(bot, services, turn, chat_id),
                        tell=lambda text: say_quietly(replier, text))  # fmt: skip

    try:
        await services.in_turn(chat_id, replier, job)
    except SchedulerFullError:
        log.warning("turn scheduler full: turn %s of chat %s stays unanswered until the next start", turn.turn_id,
                    chat_id)  # fmt: skip
    except Exception:
        log.exception("could not follow up turn %s of chat %s", turn.turn_id, chat_id)


async def _answer(bot: Bot, services: TelegramServices, turn: PendingTurn, chat_id: int) -> bool:
    """Answer the turn now; False if that failed (what was made of the answer has been sent)."""
    conversation = services.conversation
    # Someone who used /forget since has nothing left to answer: `resume` then yields nothing.
    with_text = await conversation.replies_with_text(turn.who)
    try:
        async with chat_action(bot, chat_id, services.options.chat_action_every_s):
            notes = note_policy(services.options.follow_up_min_seconds)
            await send_answer(
                conversation.resume(turn.who, turn.turn_id, notes=notes),
                services.replier_to(bot, chat_id),
                with_text=with_text,
            )
    except (TurnError, TelegramError) as error:
        log.warning("could not answer turn %s of chat %s after the restart: %s", turn.turn_id, chat_id, error)
        return False
    log.info("answered turn %s of chat %s, left unanswered before the restart", turn.turn_id, chat_id)
    return True
