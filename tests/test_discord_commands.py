"""The slash commands, called through their real callbacks with interaction doubles; the engine behind them is the
real one (tiny models, fake Ollama), so a confirmed /clone really stores a voice and /forget really deletes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import discord
import pytest

from bot.discord.app import AlanVoiceClient
from bot.discord.commands import AlanCommands
from bot.discord.session import voice_queue_key
from bot.discord.views import ForgetView
from engine.addressing import ListenMode
from engine.conversation import Conversation
from engine.store.repository import Store
from tests.discord_doubles import (
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeVoiceChannel,
    preview,
    run,
)

# -- /join and /leave -----------------------------------------------------------------------------------------


async def test_join_needs_the_caller_in_a_voice_channel(cog: AlanCommands, guild: FakeGuild, ann: FakeMember) -> None:
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.join, cog, interaction)
    assert interaction.last.kind == "send_message" and interaction.last.ephemeral
    assert "Join a voice channel first" in interaction.last.content
    assert cog.sessions.get(guild.id) is None


async def test_join_says_which_permission_is_missing(cog: AlanCommands, guild: FakeGuild, ann: FakeMember) -> None:
    channel = FakeVoiceChannel(guild, permissions=discord.Permissions(connect=True, speak=False))
    channel.enter(ann)
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.join, cog, interaction)
    assert interaction.last.ephemeral and "need the Speak permission" in interaction.last.content
    assert channel.mention in interaction.last.content
    channel.permissions = discord.Permissions.none()
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.join, cog, interaction)
    assert "Connect and Speak" in interaction.last.content
    assert channel.connects == []


async def test_join_connects_listens_and_leave_disconnects(
    cog: AlanCommands, guild: FakeGuild, ann: FakeMember
) -> None:
    channel = FakeVoiceChannel(guild)
    channel.enter(ann)
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.join, cog, interaction)
    assert [sent.kind for sent in interaction.log] == ["defer", "followup"]
    assert interaction.log[0].ephemeral and channel.mention in interaction.last.content
    assert channel.connects == [{"cls": AlanVoiceClient, "reconnect": True, "self_deaf": False}]
    session = cog.sessions.get(guild.id)
    assert session is not None and session.voice_client.receiver.listening

    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.leave, cog, interaction)
    assert cog.sessions.get(guild.id) is None and session.voice_client.disconnects == 1
    assert [sent.kind for sent in interaction.log] == ["defer", "followup"] and interaction.log[0].ephemeral
    assert "Bye" in interaction.last.content
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.leave, cog, interaction)
    assert "not in a voice channel" in interaction.last.content


async def test_join_and_leave_while_discord_py_reconnects_end_the_old_connection(
    cog: AlanCommands, guild: FakeGuild, ann: FakeMember
) -> None:
    channel = FakeVoiceChannel(guild)
    channel.enter(ann)
    await run(AlanCommands.join, cog, FakeInteraction(ann, guild))
    session = cog.sessions.get(guild.id)
    assert session is not None
    old = session.voice_client
    old.reconnecting()  # not connected, still registered with discord.py
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.join, cog, interaction)
    assert old.disconnects == 1 and "I'm in" in interaction.last.content
    session = cog.sessions.get(guild.id)
    assert session is not None and session.voice_client is not old and session.voice_client.is_connected()

    session.voice_client.reconnecting()
    await run(AlanCommands.leave, cog, FakeInteraction(ann, guild))
    assert session.voice_client.disconnects == 1 and guild.voice_client is None

    # No session at all, yet discord.py still holds a client: /leave ends it too.
    stray = await channel.connect(cls=AlanVoiceClient, reconnect=True, self_deaf=False)
    stray.reconnecting()
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.leave, cog, interaction)
    assert stray.disconnects == 1 and guild.voice_client is None and "Bye" in interaction.last.content


async def test_join_reports_a_failed_connection(cog: AlanCommands, guild: FakeGuild, ann: FakeMember) -> None:
    channel = FakeVoiceChannel(guild)
    channel.enter(ann)
    channel.fail_connects = 1
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.join, cog, interaction)
    assert "couldn't connect" in interaction.last.content and cog.sessions.get(guild.id) is None


# -- /voices, /voice, /reset, /forget ------------------------------------------------------------------------


async def test_voices_and_choosing_one_and_the_server_default(
    cog: AlanCommands, conversation: Conversation, guild: FakeGuild, ann: FakeMember, store: Store, clip: bytes
) -> None:
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.voices, cog, interaction)
    assert [sent.kind for sent in interaction.log] == ["defer", "followup"] and interaction.log[0].ephemeral
    assert "no voices yet" in interaction.last.content

    view = await preview(cog, FakeInteraction(ann, guild), clip, name="Calm")
    await view.confirm.callback(FakeInteraction(ann, guild))
    voice_channel = FakeVoiceChannel(guild)
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.voices, cog, interaction)
    assert "• Calm — speaking to you here" in interaction.last.content

    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.voice, cog, interaction, name="Loud")
    assert "no voice called “Loud”" in interaction.last.content and "Calm" in interaction.last.content
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.voice, cog, interaction, name="Calm")
    assert [sent.kind for sent in interaction.log] == ["defer", "followup"]
    assert "with “Calm”" in interaction.last.content

    # The server default needs Manage Server.
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.voice, cog, interaction, name="Calm", server_default=True)
    assert "Manage Server" in interaction.last.content
    bob = guild.add(FakeMember("bob"))
    user = store.find_user("discord", str(ann.id))
    assert user is not None
    assert store.active_voice(store.user("discord", str(bob.id)).id, str(voice_channel.id)) is None
    ann.guild_permissions = discord.Permissions(manage_guild=True)
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.voice, cog, interaction, name="Calm", server_default=True)
    assert "this server's voice" in interaction.last.content
    bob_user = store.user("discord", str(bob.id))
    calm = store.voices_of(user.id)[0]
    assert store.active_voice(bob_user.id, str(guild.id)).id == calm.id
    # Voice turns happen in a channel, with the server as parent scope: the default applies there too,
    # and in channels made after it was set.
    assert store.active_voice(bob_user.id, str(voice_channel.id), str(guild.id)).id == calm.id
    later_channel = FakeVoiceChannel(guild)
    assert store.active_voice(bob_user.id, str(later_channel.id), str(guild.id)).id == calm.id

    choices = await AlanCommands._voice_names(cog, FakeInteraction(ann, guild), "ca")
    assert [choice.value for choice in choices] == ["Calm"]


async def test_voices_lists_what_fits_in_one_message_and_counts_the_rest(
    cog: AlanCommands, conversation: Conversation, guild: FakeGuild, ann: FakeMember, store: Store
) -> None:
    user = store.user("discord", str(ann.id), ann.display_name)
    for index in range(80):
        store.add_voice(user.id, f"voice {index:02d} " + "x" * 30, reference_audio=b"-", reference_seconds=5.0,
                        transcript="hello")  # fmt: skip
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.voices, cog, interaction)
    reply = interaction.last.content
    assert len(reply) <= 2000 and "• voice 00" in reply
    shown = reply.count("\n• ")
    assert 40 < shown < 80 and reply.endswith(f"…and {80 - shown} more")


async def test_reset_forgets_the_conversation_here_but_keeps_voices(
    cog: AlanCommands, conversation: Conversation, guild: FakeGuild, ann: FakeMember, store: Store
) -> None:
    interaction = FakeInteraction(ann, guild, channel_id=4242)
    user = store.user("discord", str(ann.id), ann.display_name)
    store.add_turn(user.id, "4242", "user", "hello")
    store.add_turn(user.id, "elsewhere", "user", "hi")
    await run(AlanCommands.reset, cog, interaction)
    assert [sent.kind for sent in interaction.log] == ["defer", "followup"]
    assert "(1 messages)" in interaction.last.content and interaction.last.ephemeral
    assert store.recent_turns(user.id, "4242") == [] and len(store.recent_turns(user.id, "elsewhere")) == 1


async def test_reset_in_a_server_channel_clears_everyones_conversation_there(
    cog: AlanCommands, guild: FakeGuild, ann: FakeMember, store: Store
) -> None:
    bob = guild.add(FakeMember("bob"))
    channel = FakeVoiceChannel(guild)
    channel.enter(ann)
    for member, text in ((ann, "lunch?"), (bob, "Alan, pizza?")):
        user = store.user("discord", str(member.id), member.display_name)
        store.add_turn(user.id, str(channel.id), "user", text)
    user = store.user("discord", str(bob.id))
    store.add_turn(user.id, "elsewhere", "user", "mine")
    interaction = FakeInteraction(ann, guild)  # Ann, in the voice channel
    await run(AlanCommands.reset, cog, interaction)
    assert store.shared_turns(str(channel.id)) == [] and "(2 messages)" in interaction.last.content
    assert [turn.text for turn, _ in store.shared_turns("elsewhere")] == ["mine"]  # other channels keep theirs


# -- /listen ----------------------------------------------------------------------------------------------------


async def test_listen_shows_and_sets_the_voice_channels_mode(
    cog: AlanCommands, conversation: Conversation, guild: FakeGuild, ann: FakeMember
) -> None:
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.listen, cog, interaction, mode="off")
    assert "not in a voice channel" in interaction.last.content and interaction.last.ephemeral

    channel = FakeVoiceChannel(guild)
    channel.enter(ann)
    await run(AlanCommands.join, cog, FakeInteraction(ann, guild))
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.listen, cog, interaction)
    assert "is addressed" in interaction.last.content and channel.mention in interaction.last.content
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.listen, cog, interaction, mode="off")
    assert "I only listen" in interaction.last.content
    assert await conversation.listen_mode(str(channel.id)) is ListenMode.OFF

    # Someone elsewhere in the server can't silence (or unleash) aLAN in a channel they aren't in…
    carol = guild.add(FakeMember("carol"))
    interaction = FakeInteraction(carol, guild)
    await run(AlanCommands.listen, cog, interaction, mode="always")
    assert "Only people in" in interaction.last.content
    assert await conversation.listen_mode(str(channel.id)) is ListenMode.OFF
    # …unless they manage the server's channels.
    carol.guild_permissions = discord.Permissions(manage_channels=True)
    await run(AlanCommands.listen, cog, FakeInteraction(carol, guild), mode="always")
    assert await conversation.listen_mode(str(channel.id)) is ListenMode.ALWAYS
    await run(AlanCommands.leave, cog, FakeInteraction(ann, guild))


async def test_forget_asks_first_then_deletes_everything(
    cog: AlanCommands, conversation: Conversation, guild: FakeGuild, ann: FakeMember, store: Store
) -> None:
    user = store.user("discord", str(ann.id), ann.display_name)
    store.add_turn(user.id, "1", "user", "remember me")
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.forget, cog, interaction)
    view = interaction.last.view
    assert isinstance(view, ForgetView) and interaction.last.ephemeral and "can't be undone" in interaction.last.content
    assert store.find_user("discord", str(ann.id)) is not None  # nothing happens before the button

    await view.cancel.callback(FakeInteraction(ann, guild))
    assert store.find_user("discord", str(ann.id)) is not None

    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.forget, cog, interaction)
    press = FakeInteraction(ann, guild)
    await interaction.last.view.confirm.callback(press)
    assert "deleted" in press.last.content and interaction.last.view.forgotten
    assert store.find_user("discord", str(ann.id)) is None


async def test_reset_and_forget_wait_for_the_voice_turn_in_progress(
    cog: AlanCommands, conversation: Conversation, guild: FakeGuild, ann: FakeMember, store: Store
) -> None:
    user = store.user("discord", str(ann.id), ann.display_name)
    store.add_turn(user.id, "555", "user", "hello")
    turn_done = asyncio.Event()
    # A voice turn holds the server's queue (VoiceSession.queue_key is this same key).
    turn = asyncio.create_task(cog.sessions.scheduler.run(voice_queue_key(guild.id), turn_done.wait))
    await asyncio.sleep(0)
    reset = asyncio.create_task(run(AlanCommands.reset, cog, interaction := FakeInteraction(ann, guild)))
    forget = FakeInteraction(ann, guild)
    await run(AlanCommands.forget, cog, forget)
    press = asyncio.create_task(forget.last.view.confirm.callback(FakeInteraction(ann, guild)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert [sent.kind for sent in interaction.log] == ["defer"] and len(store.recent_turns(user.id, "555")) == 1
    assert store.find_user("discord", str(ann.id)) is not None
    turn_done.set()
    await asyncio.gather(turn, reset, press)
    assert "(1 messages)" in interaction.last.content and store.find_user("discord", str(ann.id)) is None


async def test_unexpected_errors_become_an_apology(cog: AlanCommands, guild: FakeGuild, ann: FakeMember) -> None:
    interaction = FakeInteraction(ann, guild)
    error = discord.app_commands.CommandInvokeError(AlanCommands.voices, RuntimeError("database on fire"))
    await cog.cog_app_command_error(interaction, error)  # type: ignore[arg-type]
    assert "Sorry, something went wrong" in interaction.last.content and "fire" not in interaction.last.content


# -- the bot: command registration and sync ----------------------------------------------------------------


@pytest.mark.parametrize(("guild_ids", "expected"), [("", [None]), ("11,22", [11, 22])])
async def test_commands_are_synced_to_the_configured_servers_or_globally(
    conversation: Conversation, clean_env: Path, monkeypatch: pytest.MonkeyPatch, guild_ids: str, expected: list
) -> None:
    from alan.settings import load_settings
    from bot.discord.app import AlanBot

    settings = load_settings(discord_token="not-a-real-token", discord_guild_ids=guild_ids)
    bot = AlanBot(settings, conversation)
    synced: list[int | None] = []

    async def sync(*, guild: discord.abc.Snowflake | None = None) -> list[Any]:  # Discord's HTTP endpoint
        synced.append(guild.id if guild is not None else None)
        return bot.tree.get_commands(guild=guild)

    monkeypatch.setattr(bot.tree, "sync", sync)
    await bot.setup_hook()
    assert synced == expected
    for guild_id in expected:
        target = discord.Object(id=guild_id) if guild_id else None
        names = {command.name for command in bot.tree.get_commands(guild=target)}
        assert names == {
            "join", "leave", "listen", "clone", "voices", "voice", "memory", "link", "unlink", "reset", "forget"
        }
    clone = bot.tree.get_command("clone")
    assert isinstance(clone, discord.app_commands.Command)
    options = {parameter.name: parameter for parameter in clone.parameters}
    assert options["audio"].type is discord.AppCommandOptionType.attachment and options["audio"].required
    assert not options["transcript"].required
    voice = bot.tree.get_command("voice")
    assert isinstance(voice, discord.app_commands.Command)
    assert {parameter.name for parameter in voice.parameters} == {"name", "server_default"}
    await bot.close()
