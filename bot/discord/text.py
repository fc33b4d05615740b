"""Mentions in text channels: "@aLAN what's the capital of Peru?" gets a text answer.

If the author is in the voice channel aLAN is in, the answer is also spoken there (same queue as voice turns, so
it never talks over another answer), in the voice channel's scope so the conversation is one.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import discord

from alan.scheduler import SchedulerFullError, TurnScheduler
from bot.discord.session import APOLOGY, MAX_MESSAGE, VoiceSession, participant
from bot.text_split import split_text
from engine.conversation import Conversation
from engine.errors import TurnError
from engine.events import ReplySentence

log = logging.getLogger(__name__)

HELLO = "Hi! Ask me something by mentioning me, or use /join and talk with me in a voice channel."


def mention_text(content: str, bot_id: int) -> str:
    return " ".join(re.sub(rf"<@!?{bot_id}>", " ", content).split())


async def answer_mention(
    message: Any,  # discord.Message, or a test double with the same attributes
    *,
    bot_user: discord.abc.User,
    conversation: Conversation,
    scheduler: TurnScheduler,
    session: VoiceSession | None,
) -> str | None:
    """Answer a message that mentions aLAN; returns the reply text (None when there was nothing to answer)."""
    author = message.author
    if author.bot or not any(user.id == bot_user.id for user in message.mentions):
        return None
    text = mention_text(message.content, bot_user.id)
    if not text:
        await message.reply(HELLO, mention_author=False)
        return None
    voice = getattr(author, "voice", None)
    here = voice.channel if voice is not None else None
    in_our_channel = session is not None and here is not None and here.id == session.channel.id
    try:
        if in_our_channel:
            assert session is not None
            result = await session.answer(participant(author, session.channel.id), text=text)
            reply = result.text
        else:
            who = participant(author, message.channel.id)

            async def write() -> str:
                async with message.channel.typing():
                    turn = conversation.turn(who, text=text, speak=False)
                    return " ".join([event.text async for event in turn if isinstance(event, ReplySentence)])

            reply = await scheduler.run(f"discord-text:{message.channel.id}", write)
    except (TurnError, SchedulerFullError) as error:
        await message.reply(str(error), mention_author=False)
        return None
    except Exception:
        log.exception("answering a mention from user %s failed", author.id)
        await message.reply(APOLOGY, mention_author=False)
        return None
    parts = split_text(reply, MAX_MESSAGE) or ["…"]
    await message.reply(parts[0], mention_author=False)
    for part in parts[1:]:
        await message.channel.send(part)
    return reply
