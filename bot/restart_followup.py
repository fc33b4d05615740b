"""After a restart: the part of following up turns left unanswered that is the same on every platform.

A process that stops mid-turn (`kill -9`, a crash, a power cut) has stored what the person said but not the
answer. On start-up each platform looks for those turns (`pending_turns`) and follows each up (`follow_up`),
in its place in the turn scheduler:

- said less than `ANSWER_WITHIN` ago: it is answered now, through the same engine path as any turn (the
  person is most likely still in the conversation, and the answer reads as a late reply);
- older, up to `LOOK_BACK`, or when the answer fails: the person is told it was lost and asked to send it
  again; that message is stored as the reply, so that the turn counts as answered;
- older still: left alone. Telegram itself keeps undelivered updates only 24 hours, so that is how long a
  person may reasonably still expect an answer; an apology for something said days ago is only noise.

Either way the turn stops being the last word of its conversation, which is what makes this happen once: a
second restart finds nothing to do.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from engine.conversation import Conversation, PendingTurn

log = logging.getLogger(__name__)

LOOK_BACK = dt.timedelta(hours=24)
ANSWER_WITHIN = dt.timedelta(minutes=15)
# Also said when an earlier answer failed (the LLM was down), so it names both causes.
LOST = (
    "Sorry — I didn't get to answer your last message (I was restarted or couldn't reach my language model). "
    "Please send it again."
)


async def pending_turns(conversation: Conversation, platform: str, now: dt.datetime) -> list[PendingTurn]:
    """This platform's turns to follow up; none if they can't be read (the next start tries again)."""
    try:
        return await conversation.unanswered(platform, now - LOOK_BACK)
    except Exception:  # the bot can serve without this
        log.exception("could not look for %s turns left unanswered before the restart", platform)
        return []


async def follow_up(
    conversation: Conversation,
    turn: PendingTurn,
    now: dt.datetime,
    *,
    answer: Callable[[], Awaitable[bool]],
    tell: Callable[[str], Awaitable[object]],
) -> None:
    """Answer `turn` (`answer` returns False when that failed) if it is recent, else `tell` the person it was lost."""
    if now - turn.said_at <= ANSWER_WITHIN and await answer():
        return
    if await conversation.close_unanswered(turn.who, turn.turn_id, LOST):
        log.info("told %s scope %s that turn %s was lost", turn.who.platform, turn.who.scope, turn.turn_id)
        await tell(LOST)
