"""A restart after the process died mid-turn, on Discord: the stored unanswered text turn is answered once."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

from bot.discord.app import AlanBot
from bot.restart_followup import LOST
from engine.conversation import Conversation
from engine.store.repository import Store
from tests.fakes.ollama_server import FakeOllama

CHANNEL = 555
OLD_CHANNEL = 666


class FakeTextChannel:
    """What the follow-up uses of a text channel (or DM): typing and send."""

    def __init__(self, channel_id: int) -> None:
        self.id = channel_id
        self.sent: list[str] = []

    @contextlib.asynccontextmanager
    async def typing(self) -> AsyncIterator[None]:
        yield

    async def send(self, text: str) -> None:
        self.sent.append(text)


async def test_a_discord_text_turn_left_unanswered_is_answered_once_after_ready(
    conversation: Conversation, store: Store, ollama: FakeOllama, clean_env: Path
) -> None:
    from alan.settings import load_settings

    ann = store.user("discord", "42", "Ann")
    store.add_turn(ann.id, str(CHANNEL), "user", "What's the capital of Peru?")  # stored, then killed
    old = store.add_turn(ann.id, str(OLD_CHANNEL), "user", "Still there?")  # too old to answer now
    store.update_turn(old.id, created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    ollama.script("Lima.")
    channels = {CHANNEL: FakeTextChannel(CHANNEL), OLD_CHANNEL: FakeTextChannel(OLD_CHANNEL)}
    bot = AlanBot(load_settings(discord_token="not-a-real-token"), conversation)
    bot.get_channel = channels.get  # type: ignore[assignment,method-assign]  # discord.py's channel cache
    try:
        await bot.on_ready()
        assert bot.follow_ups is not None and await bot.follow_ups == 2
        await bot.on_ready()  # a reconnect: nothing more
        assert channels[CHANNEL].sent == ["Lima."] and channels[OLD_CHANNEL].sent == [LOST]
        assert [(t.role, t.text) for t in store.recent_turns(ann.id, str(CHANNEL))][-1] == ("assistant", "Lima.")
        assert [(t.role, t.text) for t in store.recent_turns(ann.id, str(OLD_CHANNEL))][-1] == ("assistant", LOST)
        assert len(ollama.chat_requests) == 1
    finally:
        await bot.close()

    restarted = AlanBot(load_settings(discord_token="not-a-real-token"), conversation)
    restarted.get_channel = channels.get  # type: ignore[assignment,method-assign]
    try:
        await restarted.on_ready()
        assert restarted.follow_ups is not None and await restarted.follow_ups == 0  # a second start: nothing
    finally:
        await restarted.close()
    assert channels[CHANNEL].sent == ["Lima."] and len(ollama.chat_requests) == 1
