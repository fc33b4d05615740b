"""Shared pieces for the Discord adapter tests (this module holds no tests itself).

The doubles here stand in for Discord only — members, channels, interactions, a voice connection and the player
thread that reads an `AudioSource` every 20 ms — never for aLAN's code: the engine is a real `Conversation` on
tiny random models with a local fake Ollama, exactly as in test_conversation.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import numpy as np

from engine.audio import WHISPER_RATE, decode_audio
from tests.conftest import espeak

_ids = itertools.count(100_000_000_000_000_001)


def speech_16k(text: str, path: Path, **kwargs: Any) -> np.ndarray:
    """espeak-ng speech at 16 kHz, without the quiet espeak leaves around it (tests place their own silence)."""
    audio = decode_audio(espeak(text, path, **kwargs), WHISPER_RATE)
    loud = np.nonzero(np.abs(audio) > 1e-3)[0]
    return audio[loud[0] : loud[-1] + 1]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * WHISPER_RATE), dtype=np.float32)


class FakeClock:
    """A controllable clock: time moves only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- Discord: members, channels, guilds --------------------------------------------------------------------


@dataclass
class FakeVoiceState:
    channel: Any


@dataclass(eq=False)
class FakeMember:
    name: str
    id: int = field(default_factory=lambda: next(_ids))
    bot: bool = False
    voice: FakeVoiceState | None = None
    guild_permissions: discord.Permissions = field(default_factory=discord.Permissions.none)
    guild: Any = None

    @property
    def display_name(self) -> str:
        return self.name.title()

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass(eq=False)
class FakeGuild:
    id: int = field(default_factory=lambda: next(_ids))
    me: FakeMember = field(default_factory=lambda: FakeMember("alan", bot=True))
    members: list[FakeMember] = field(default_factory=list)
    voice_channels: list[Any] = field(default_factory=list)
    voice_client: Any = None

    def __post_init__(self) -> None:
        self.me.guild = self

    def get_member(self, user_id: int) -> FakeMember | None:
        return next((m for m in [*self.members, self.me] if m.id == user_id), None)

    def add(self, member: FakeMember) -> FakeMember:
        member.guild = self
        self.members.append(member)
        return member


class FakeVoiceChannel:
    """A voice channel: who is in it, what the bot may do there, its text chat, and connecting to it."""

    def __init__(self, guild: FakeGuild, *, permissions: discord.Permissions | None = None) -> None:
        self.id = next(_ids)
        self.guild = guild
        self.permissions = permissions or discord.Permissions(connect=True, speak=True, view_channel=True)
        self.members: list[FakeMember] = []
        self.sent: list[str] = []
        self.connects: list[dict[str, Any]] = []
        self.fail_connects = 0
        guild.voice_channels.append(self)

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def enter(self, member: FakeMember) -> FakeMember:
        member.voice = FakeVoiceState(self)
        self.members.append(member)
        return member

    def permissions_for(self, member: Any) -> discord.Permissions:
        return self.permissions

    async def send(self, text: str) -> None:
        self.sent.append(text)

    async def connect(self, *, cls: type, reconnect: bool, self_deaf: bool) -> FakeVoiceClient:
        self.connects.append({"cls": cls, "reconnect": reconnect, "self_deaf": self_deaf})
        if self.guild.voice_client is not None:  # discord.py keeps a client registered until its clean-up
            raise discord.ClientException("Already connected to a voice channel.")
        if self.fail_connects:
            self.fail_connects -= 1
            raise TimeoutError("voice connection timed out")
        client = FakeVoiceClient(self)
        self.guild.voice_client = client
        self.enter(self.guild.me)
        return client


# -- Discord: a voice connection and its player thread -----------------------------------------------------


class FakeReceiver:
    def __init__(self) -> None:
        self.on_audio: Callable[..., Any] | None = None
        self.starts = 0

    @property
    def listening(self) -> bool:
        return self.on_audio is not None

    def start(self, on_audio: Callable[..., Any]) -> None:
        assert self.on_audio is None, "receiver started twice"
        self.on_audio, self.starts = on_audio, self.starts + 1

    def stop(self) -> None:
        self.on_audio = None


class FakeVoiceClient:
    """discord.VoiceClient's surface; `pull()` is what discord.py's player thread does every 20 ms."""

    def __init__(self, channel: FakeVoiceChannel) -> None:
        self.channel = channel
        self.guild = channel.guild
        self.receiver = FakeReceiver()
        self.connected = True
        self.source: discord.AudioSource | None = None
        self._after: Callable[[Exception | None], Any] | None = None
        self.played: list[discord.AudioSource] = []
        self.stops = 0
        self.disconnects = 0
        self.on_gone: Callable[[], None] | None = None

    def is_connected(self) -> bool:
        return self.connected

    def is_playing(self) -> bool:
        return self.source is not None

    def play(self, source: discord.AudioSource, *, after: Callable[[Exception | None], Any] | None = None) -> None:
        if not self.connected:
            raise discord.ClientException("Not connected to voice.")
        if self.source is not None:
            raise discord.ClientException("Already playing audio.")
        self.source, self._after = source, after
        self.played.append(source)

    def reconnecting(self) -> None:
        """discord.py lost the connection and is reconnecting on its own: not connected, still registered."""
        self.connected = False

    def _unregister(self) -> None:
        if self.guild.voice_client is self:
            self.guild.voice_client = None

    def pull(self) -> bytes | None:
        """One 20 ms tick of the player thread: None when nothing plays."""
        if self.source is None:
            return None
        data = self.source.read()
        if not data:
            self._end()
        return data

    def stop(self) -> None:
        self.stops += 1
        self._end()

    def _end(self) -> None:
        source, after = self.source, self._after
        self.source = self._after = None
        if source is not None:
            if after is not None:
                after(None)
            source.cleanup()

    async def move_to(self, channel: FakeVoiceChannel) -> None:
        self.channel = channel

    async def disconnect(self, *, force: bool = False) -> None:
        if not force and not self.connected:  # what discord.py does: only force ends a reconnect under way
            return
        self.disconnects += 1
        self.connected = False
        self._unregister()
        self._end()
        if self.guild.me in self.channel.members:
            self.channel.members.remove(self.guild.me)
        if self.on_gone is not None:
            self.on_gone()

    def drop(self) -> None:
        """discord.py gave up on this connection and cleaned it up (as after a failed resume)."""
        self.connected = False
        self._unregister()
        self._end()
        if self.on_gone is not None:
            self.on_gone()


async def play_out(client: FakeVoiceClient, clock: FakeClock | None = None, *, limit_s: float = 60.0) -> list[bytes]:
    """Be the player thread until the current (or next) playback ends; returns every frame read."""
    frames: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    started = False
    while loop.time() < deadline:
        data = client.pull()
        if data is None:
            if started:
                return frames
            await asyncio.sleep(0.01)  # nothing plays yet: the turn is still thinking
            continue
        started = True
        frames.append(data)
        if clock is not None:
            clock.advance(0.020)
        if not data:
            return frames
        # Silence means the engine is still making audio: give it real time instead of spinning.
        await asyncio.sleep(0.005 if data == b"\x00" * len(data) else 0)
    raise AssertionError("playback did not end in time")


# -- Discord: interactions -----------------------------------------------------------------------------------


@dataclass
class Sent:
    kind: str
    content: str | None = None
    ephemeral: bool | None = None
    view: Any = None
    modal: Any = None


class FakeResponse:
    def __init__(self, log: list[Sent]) -> None:
        self.log = log
        self.done = False

    def is_done(self) -> bool:
        return self.done

    def _answer(self, sent: Sent) -> None:
        assert not self.done, f"interaction answered twice ({sent.kind})"
        self.done = True
        self.log.append(sent)

    async def send_message(self, content: str, *, ephemeral: bool = False, view: Any = None) -> None:
        self._answer(Sent("send_message", content, ephemeral, view))

    async def defer(self, *, ephemeral: bool = False, thinking: bool = False) -> None:
        self._answer(Sent("defer", None, ephemeral))

    async def edit_message(self, *, content: str | None = None, view: Any = None) -> None:
        self._answer(Sent("edit_message", content, None, view))

    async def send_modal(self, modal: Any) -> None:
        self._answer(Sent("send_modal", modal=modal))


class FakeFollowup:
    def __init__(self, log: list[Sent]) -> None:
        self.log = log

    async def send(self, content: str, *, ephemeral: bool = False, view: Any = None) -> None:
        self.log.append(Sent("followup", content, ephemeral, view))


class FakeInteraction:
    def __init__(self, user: FakeMember, guild: FakeGuild | None, channel_id: int | None = None) -> None:
        self.user = user
        self.guild = guild
        self.channel_id = channel_id or 555
        self.log: list[Sent] = []
        self.response = FakeResponse(self.log)
        self.followup = FakeFollowup(self.log)
        self.command = None

    async def edit_original_response(self, *, content: str | None = None, view: Any = None) -> None:
        self.log.append(Sent("edit_original_response", content, None, view))

    @property
    def last(self) -> Sent:
        return self.log[-1]

    def texts(self) -> list[str]:
        return [sent.content for sent in self.log if sent.content]


class FakeAttachment:
    def __init__(self, data: bytes, filename: str, content_type: str | None, size: int | None = None) -> None:
        self.data, self.filename, self.content_type = data, filename, content_type
        self.size = len(data) if size is None else size
        self.reads = 0

    async def read(self) -> bytes:
        self.reads += 1
        return self.data


async def run(command: Any, cog: Any, interaction: Any, **options: Any) -> None:
    """Invoke a slash command the way discord.py's tree does once it has parsed the options."""
    await command.callback(cog, interaction, **options)


async def preview(cog: Any, interaction: Any, clip: bytes, **options: Any) -> Any:
    """Run /clone with `clip` attached; returns the preview's view (Confirm / Edit / Cancel)."""
    from bot.discord.commands import AlanCommands
    from bot.discord.views import CloneView
    from engine.voices import CONSENT_STATEMENT

    attachment = FakeAttachment(clip, "ann_voice.ogg", "audio/ogg")
    await run(AlanCommands.clone, cog, interaction, audio=attachment, **options)
    sent = interaction.last
    assert sent.kind == "followup" and sent.ephemeral and isinstance(sent.view, CloneView)
    assert CONSENT_STATEMENT in sent.content and "Confirm" in sent.content
    return sent.view
