"""Discord shards split across processes: two aLAN bot processes (ALAN_DISCORD_SHARDS=0 and =1 of 2), each its own
engine on one shared database, run the real discord.py client against a fake Discord (tests/discord_gateway.py)
that delivers a server's events only on the shard Discord would, `(server_id >> 22) % shard_count`, and DMs on
shard 0. Discord sees one bot; the fake tells the two processes apart by a tag in each one's User-Agent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest
import yarl
from discord.gateway import DiscordWebSocket

from alan.settings import Settings, SettingsError, load_settings
from bot.discord.app import AlanBot, ShardedAlanBot, make_bot
from engine.conversation import Conversation
from engine.store.repository import Store
from tests.discord_gateway import FakeDiscord, shard_of, user_payload
from tests.fakes.ollama_server import FakeOllama
from tests.test_telegram import eventually

TOKEN = "not-a-real-token"
GUILD_0 = (1_000_000_000 << 22) + 7  # on shard 0 of 2
GUILD_1 = (1_000_000_001 << 22) + 7  # on shard 1 of 2
CHANNEL_0, CHANNEL_1, VOICE_1 = GUILD_0 + 1, GUILD_1 + 1, GUILD_1 + 2
DM = 1_250_000_000_000_000_003
MENTION = f"<@{FakeDiscord.APPLICATION_ID}>"
ANN, BOB, CID = user_payload(41, "ann"), user_payload(42, "bob"), user_payload(43, "cid")


@pytest.fixture
async def discord_api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    assert shard_of(GUILD_0, 2) == 0 and shard_of(GUILD_1, 2) == 1
    async with FakeDiscord() as fake:
        fake.add_server(GUILD_0, CHANNEL_0)
        fake.add_server(GUILD_1, CHANNEL_1)
        fake.add_dm(DM, int(CID["id"]), "cid")
        monkeypatch.setattr(discord.http.Route, "BASE", fake.host + "/api/v10")
        monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
        yield fake


@pytest.fixture
async def other_conversation(database_url: str, whisper: Any, ollama: FakeOllama) -> AsyncIterator[Conversation]:
    """The second process's engine: its own connection to the same database, the same LLM server."""
    from engine.llm import OllamaChat
    from engine.store.database import open_database
    from engine.tts.tone import ToneSynthesizer
    from tests.engine_harness import LLM_MODEL

    llm = OllamaChat(LLM_MODEL, ollama.host, first_token_timeout=30, token_timeout=30)
    store = Store(open_database(database_url))
    made = Conversation(store, whisper, ToneSynthesizer(), llm, max_audio_seconds=60, max_audio_bytes=20 * 1024**2)
    yield made
    await made._keeper.aclose()


def settings(**shards: Any) -> Settings:
    return load_settings(discord_token=TOKEN, **shards)


def process(shard: int) -> Settings:
    return settings(discord_shards=str(shard), discord_shard_count=2)


@contextlib.asynccontextmanager
async def running(settings: Settings, conversation: Conversation, name: str) -> AsyncIterator[AlanBot]:
    """A bot process, as `serve` starts it, until it is ready (every server of its shards streamed in)."""
    bot = make_bot(settings, conversation)
    bot.http.user_agent = name  # how the fake tells processes apart

    async def identify_now(shard_id: int | None, *, initial: bool = False) -> None:
        pass  # discord.py waits 5 s before each later shard's IDENTIFY (Discord's rate limit, not the fake's)

    bot.before_identify_hook = identify_now  # type: ignore[method-assign]
    bot._connection.guild_ready_timeout = 0.05  # how long discord.py waits for more servers before READY (2 s)
    started = asyncio.create_task(bot.start(TOKEN))
    try:
        await eventually(lambda: bot.is_ready() or started.done())
        if started.done():
            started.result()  # a failed start fails the test with its own error
        yield bot
    finally:
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await started


# -- each process: its shard, its servers, and only one syncs the commands -----------------------------------


async def test_each_process_identifies_as_its_shard_and_has_only_its_servers(
    discord_api: FakeDiscord, conversation: Conversation, other_conversation: Conversation, clean_env: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level("INFO", logger="bot.discord.app")
    async with (
        running(process(0), conversation, "process-0") as first,
        running(process(1), other_conversation, "process-1") as second,
    ):
        assert isinstance(first, ShardedAlanBot) and isinstance(second, ShardedAlanBot)
        shards = sorted((connection.agent, connection.identify["shard"]) for connection in discord_api.connections)
        assert shards == [("process-0", [0, 2]), ("process-1", [1, 2])]
        assert [guild.id for guild in first.guilds] == [GUILD_0] and [guild.id for guild in second.guilds] == [GUILD_1]
        guild = second.get_guild(GUILD_1)
        assert guild is not None and guild.shard_id == 1  # discord.py's own rule agrees with Discord's

        # One process syncs the slash commands, for everyone; both handle them (the cogs are in both).
        assert [(agent, server) for agent, server, _ in discord_api.syncs] == [("process-0", None)]
        assert "join" in discord_api.syncs[0][2] and second.tree.get_command("join") is not None

        # Joining voice starts with a voice state sent on the connection of the server's shard.
        await guild.change_voice_state(channel=discord.Object(id=VOICE_1))
        shard_1 = next(c for c in discord_api.connections if c.shard == (1, 2))
        await eventually(lambda: shard_1.received)
        assert shard_1.received[0]["op"] == 4 and int(shard_1.received[0]["d"]["guild_id"]) == GUILD_1
        assert all(not c.received for c in discord_api.connections if c is not shard_1)

    assert "Discord: shard(s) 0 of 2; this process syncs the slash commands" in caplog.text
    assert "Discord: shard(s) 1 of 2; this process leaves the slash commands to shard 0's process" in caplog.text


@pytest.mark.parametrize("shard_count", [None, 2])
async def test_without_shards_set_one_process_serves_every_server(
    discord_api: FakeDiscord, conversation: Conversation, clean_env: Path, shard_count: int | None
) -> None:
    async with running(settings(discord_shard_count=shard_count), conversation, "alone") as bot:
        assert isinstance(bot, ShardedAlanBot) == (shard_count is not None)
        identified = [connection.identify for connection in discord_api.connections]
        if shard_count is None:  # as before sharding: one connection, no `shard` in IDENTIFY
            assert len(identified) == 1 and identified[0] is not None and "shard" not in identified[0]
        else:  # ALAN_DISCORD_SHARD_COUNT alone: this process runs every shard
            assert sorted(data["shard"] for data in identified if data is not None) == [[0, 2], [1, 2]]
        assert sorted(guild.id for guild in bot.guilds) == [GUILD_0, GUILD_1]
        assert [(agent, server) for agent, server, _ in discord_api.syncs] == [("alone", None)]


def test_a_shard_outside_the_count_is_refused(clean_env: Path) -> None:
    with pytest.raises(SettingsError, match=r"ALAN_DISCORD_SHARDS: shard ids run from 0 to .*COUNT - 1 \(1\)"):
        load_settings(discord_token=TOKEN, discord_shards="0,2", discord_shard_count=2)
    with pytest.raises(SettingsError, match="ALAN_DISCORD_SHARDS: needs ALAN_DISCORD_SHARD_COUNT"):
        load_settings(discord_token=TOKEN, discord_shards="1")


# -- who answers ---------------------------------------------------------------------------------------------


async def test_a_mention_is_answered_only_by_the_process_running_its_servers_shard(
    discord_api: FakeDiscord, conversation: Conversation, other_conversation: Conversation, ollama: FakeOllama,
    clean_env: Path,
) -> None:  # fmt: skip
    async with (
        running(process(0), conversation, "process-0"),
        running(process(1), other_conversation, "process-1"),
    ):
        ollama.script("Lima.")
        delivered = await discord_api.user_message(CHANNEL_1, BOB, f"{MENTION} capital of Peru?", guild_id=GUILD_1)
        assert [(c.agent, c.shard) for c in delivered] == [("process-1", (1, 2))]
        await eventually(lambda: discord_api.posted_in(CHANNEL_1))
        assert discord_api.posted_in(CHANNEL_1) == [("process-1", "Lima.")]

        ollama.script("Paris.")
        delivered = await discord_api.user_message(CHANNEL_0, ANN, f"{MENTION} capital of France?", guild_id=GUILD_0)
        assert [c.agent for c in delivered] == ["process-0"]
        await eventually(lambda: discord_api.posted_in(CHANNEL_0))

        ollama.script("Rome.")  # a direct message: Discord sends those on shard 0 only
        delivered = await discord_api.user_message(DM, CID, f"{MENTION} capital of Italy?")
        assert [c.agent for c in delivered] == ["process-0"]
        await eventually(lambda: discord_api.posted_in(DM))

    assert discord_api.posted_in(CHANNEL_0) == [("process-0", "Paris.")]
    assert discord_api.posted_in(DM) == [("process-0", "Rome.")]
    assert discord_api.posted_in(CHANNEL_1) == [("process-1", "Lima.")]
    assert len(ollama.chat_requests) == 3


async def test_restart_follow_ups_answer_only_the_turns_of_the_processs_own_servers(
    discord_api: FakeDiscord, conversation: Conversation, other_conversation: Conversation, store: Store,
    ollama: FakeOllama, clean_env: Path,
) -> None:  # fmt: skip
    # Turns stored, then every process was killed before answering: one in each server, one in a DM.
    turns = {CHANNEL_0: ANN, CHANNEL_1: BOB, DM: CID}
    for channel, who in turns.items():
        user = store.user("discord", who["id"], who["username"].title())
        store.add_turn(user.id, str(channel), "user", "Are you there?")

    async with running(process(1), other_conversation, "process-1") as second:
        # Shard 0's process isn't up yet, and still shard 1's leaves the turns of shard 0's server and DMs alone.
        assert second.follow_ups is not None and await second.follow_ups == 1
        assert discord_api.posted_in(CHANNEL_0) == [] and discord_api.posted_in(DM) == []
        async with running(process(0), conversation, "process-0") as first:
            assert first.follow_ups is not None and await first.follow_ups == 2

    assert discord_api.posted_in(CHANNEL_1) == [("process-1", "Okay.")]
    assert discord_api.posted_in(CHANNEL_0) == [("process-0", "Okay.")]
    assert discord_api.posted_in(DM) == [("process-0", "Okay.")]
    for channel, who in turns.items():  # each answered once, and stored as answered
        user = store.find_user("discord", who["id"])
        assert user is not None
        assert [(t.role, t.text) for t in store.recent_turns(user.id, str(channel))] == [
            ("user", "Are you there?"), ("assistant", "Okay.")
        ]  # fmt: skip
    assert len(ollama.chat_requests) == 3
    # Another process's server isn't in this one's cache, nor is a DM: one lookup each tells whose it is. (When
    # process 0 started, process 1 had answered its turn already: no longer pending, so not looked up.)
    assert sorted(discord_api.fetched) == sorted([("process-1", CHANNEL_0), ("process-1", DM), ("process-0", DM)])
