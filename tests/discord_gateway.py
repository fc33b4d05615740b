"""Discord's side of one bot voice connection, driving discord.py's own voice code (this module holds no tests).

* `VoiceGateway` plays the voice gateway: JSON messages go through `DiscordVoiceWebSocket.received_message` and
  binary DAVE messages (sequence number, opcode, payload) through `received_binary_message`, exactly as
  discord.py's reader hands them over, so the bot's davey session is created, welcomed, downgraded and upgraded by
  discord.py itself. What discord.py sends back (speaking, key packages, transition ready) is kept by
  `RecordingSocket`, which stands in for the aiohttp websocket underneath. The MLS side is a real
  `DaveVoiceServer`.
* `LiveCall` is a `ReceivingVoiceClient` with discord.py's own UDP socket and reader thread, bound to localhost,
  and a UDP socket to send to it from, as Discord's media server would.
* `FakeDiscord` is Discord's side of the bot's main connection, for whole bot processes: the main gateway, one
  connection per shard (a server's events only on its shard, DMs on shard 0), and the HTTP API routes the bot
  calls. Point discord.py at it with `Route.BASE` and `DiscordWebSocket.DEFAULT_GATEWAY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import davey
import discord
import numpy as np
from aiohttp import web
from discord.gateway import DiscordVoiceWebSocket

from bot.discord.receive import ReceivingVoiceClient
from tests.discord_packets import BOT_SSRC, BOT_USER, CHANNEL_ID, USER_A, XCHACHA20, DaveVoiceServer
from tests.fakes.local_server import LocalServer

WS = DiscordVoiceWebSocket


class RecordingSocket:
    """The websocket under `DiscordVoiceWebSocket`: keeps what discord.py sends to the voice gateway."""

    def __init__(self) -> None:
        self.json: list[dict[str, Any]] = []
        self.binary: list[bytes] = []

    async def send_str(self, data: str) -> None:
        self.json.append(json.loads(data))

    async def send_bytes(self, data: bytes) -> None:
        self.binary.append(bytes(data))

    def key_package(self) -> bytes:
        """The last MLS key package discord.py published (opcode 26)."""
        for frame in reversed(self.binary):
            if frame[0] == WS.MLS_KEY_PACKAGE:
                return frame[1:]
        raise AssertionError("discord.py has not sent a key package")

    def transitions_ready(self) -> list[int]:
        return [msg["d"]["transition_id"] for msg in self.json if msg["op"] == WS.DAVE_TRANSITION_READY]


class VoiceGateway:
    def __init__(self, voice_client: discord.VoiceClient, server: DaveVoiceServer) -> None:
        self.connection = voice_client._connection
        self.server = server
        self.socket = RecordingSocket()
        self.ws = DiscordVoiceWebSocket(self.socket, loop=voice_client.loop, hook=self.connection.hook)  # type: ignore[arg-type]
        self.ws._connection, self.connection.ws = self.connection, self.ws
        self._sequence = 0

    async def send(self, op: int, data: dict[str, Any]) -> None:
        self._sequence += 1
        await self.ws.received_message({"op": op, "d": data, "seq": self._sequence})

    async def send_binary(self, op: int, payload: bytes) -> None:
        self._sequence += 1
        await self.ws.received_binary_message(struct.pack(">HB", self._sequence, op) + payload)

    async def session_description(self, key: bytes, *, dave_protocol_version: int = 1) -> None:
        """Opcode 4: the transport key; with DAVE, discord.py creates its session and sends a key package."""
        description = {"mode": XCHACHA20, "secret_key": list(key), "dave_protocol_version": dave_protocol_version}
        await self.send(WS.SESSION_DESCRIPTION, description)

    async def speaking(self, user_id: int, ssrc: int) -> None:
        await self.send(WS.SPEAKING, {"user_id": str(user_id), "ssrc": ssrc, "speaking": 1})

    async def client_disconnect(self, user_id: int) -> None:
        await self.send(WS.CLIENT_DISCONNECT, {"user_id": str(user_id)})

    async def welcome_bot(self, transition_id: int) -> None:
        """The bot joins the server's group: external sender (25), the members commit its key package, welcome (30)."""
        await self.send_binary(WS.MLS_EXTERNAL_SENDER, self.server.external_sender())
        _, _, welcome = self.server.add(self.socket.key_package())
        await self.send_binary(WS.MLS_WELCOME, struct.pack(">H", transition_id) + welcome)

    async def member_joins(self, session: davey.DaveSession, transition_id: int) -> None:
        """Someone with DAVE joins a group the bot is in: proposal (27), commit (29), and their welcome."""
        proposals, commit, welcome = self.server.add(session.get_serialized_key_package())
        await self.send_binary(WS.MLS_PROPOSALS, bytes([0]) + proposals)  # 0: append
        await self.send_binary(WS.MLS_ANNOUNCE_COMMIT_TRANSITION, struct.pack(">H", transition_id) + commit)
        session.process_welcome(welcome)
        self.server.members.append(session)

    async def prepare_transition(self, transition_id: int, protocol_version: int) -> None:
        prepare = {"transition_id": transition_id, "protocol_version": protocol_version}
        await self.send(WS.DAVE_PREPARE_TRANSITION, prepare)

    async def execute_transition(self, transition_id: int) -> None:
        await self.send(WS.DAVE_EXECUTE_TRANSITION, {"transition_id": transition_id})

    async def prepare_epoch(self, epoch: int, protocol_version: int) -> None:
        await self.send(WS.DAVE_PREPARE_EPOCH, {"epoch": epoch, "protocol_version": protocol_version})


class LiveCall:
    def __init__(self, voice_client: ReceivingVoiceClient, gateway: VoiceGateway, address: tuple[str, int]) -> None:
        self.voice_client, self.gateway, self.address = voice_client, gateway, address
        self.connection = voice_client._connection
        self.receiver = voice_client.receiver
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.heard: asyncio.Queue[tuple[int, np.ndarray, float]] = asyncio.Queue()

    def listen(self) -> None:
        self.receiver.start(lambda user, pcm, timestamp: self.heard.put_nowait((user, pcm, timestamp)))

    def send(self, packets: list[bytes]) -> None:
        for packet in packets:
            self.udp.sendto(packet, self.address)

    async def until(self, condition: Callable[[], bool], within: float = 5.0) -> bool:
        """Wait (for the socket thread) until `condition` holds; False if it never does."""
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def hear(self, frames: int, within: float = 5.0) -> dict[int, np.ndarray]:
        """What was heard, per user, once `frames` 20 ms frames in all have come out (or `within` s have passed)."""
        pieces: dict[int, list[np.ndarray]] = {}
        samples, wanted = 0, frames * self.receiver.processor.sample_rate // 50
        deadline = time.monotonic() + within
        while samples < wanted:
            try:
                user, pcm, _ = await asyncio.wait_for(self.heard.get(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            pieces.setdefault(user, []).append(pcm)
            samples += len(pcm)
        return {user: np.concatenate(chunks) for user, chunks in pieces.items()}


@contextlib.asynccontextmanager
async def live_call(server: DaveVoiceServer) -> AsyncIterator[LiveCall]:
    """The bot in a voice channel, before the voice gateway has said anything."""
    async with discord.Client(intents=discord.Intents.none()) as client:
        client._connection.user = discord.Object(id=BOT_USER)  # type: ignore[assignment]  # who discord.py thinks it is
        voice_client = ReceivingVoiceClient(client, discord.Object(id=CHANNEL_ID))  # type: ignore[arg-type]
        connection = voice_client._connection
        connection.ssrc = BOT_SSRC  # from READY
        connection._create_socket()  # discord.py's own UDP socket; its reader thread delivers to listeners
        connection.socket.bind(("127.0.0.1", 0))
        call = LiveCall(voice_client, VoiceGateway(voice_client, server), connection.socket.getsockname())
        try:
            yield call
        finally:
            voice_client.receiver.close()
            connection._socket_reader.stop()
            connection.socket.close()
            call.udp.close()


@contextlib.asynccontextmanager
async def established_dave_call(key: bytes) -> AsyncIterator[tuple[LiveCall, DaveVoiceServer, davey.DaveSession]]:
    """A running DAVE call: user A (the speaker) formed the server's group and the bot was welcomed into it
    (transition 1, executed). Yields the call, the voice server and A's session."""
    server = DaveVoiceServer(CHANNEL_ID)
    speaker = server.session(USER_A)
    server.join(speaker)
    async with live_call(server) as call:
        await call.gateway.session_description(key)  # DAVE: discord.py creates its session and sends a key package
        await call.gateway.welcome_bot(transition_id=1)
        await call.gateway.execute_transition(1)
        yield call, server, speaker


# -- the main gateway and the HTTP API, per shard ------------------------------------------------------------

API = "/api/v10"  # discord.http.Route.BASE is https://discord.com/api/v10
JOINED = "2024-01-01T00:00:00+00:00"
_snowflakes = itertools.count(1_300_000_000_000_000_000)


def shard_of(guild_id: int, shard_count: int) -> int:
    """Discord's documented rule for the shard a server's events go to (a snowflake's bits above its low 22)."""
    return (guild_id >> 22) % shard_count


def json_response(data: Any, *, status: int = 200) -> web.Response:
    """Discord's JSON: discord.py reads a body as JSON only when the content type is exactly application/json."""
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json")


def user_payload(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {"id": str(user_id), "username": name, "discriminator": "0", "global_name": None, "avatar": None,
            "bot": bot}  # fmt: skip


def message_payload(channel_id: int, author: dict[str, Any], content: str, mentions: list[Any]) -> dict[str, Any]:
    return {"id": str(next(_snowflakes)), "channel_id": str(channel_id), "author": author, "content": content,
            "timestamp": JOINED, "edited_timestamp": None, "tts": False, "mention_everyone": False,
            "mentions": mentions, "mention_roles": [], "attachments": [], "embeds": [], "pinned": False, "type": 0,
            "flags": 0}  # fmt: skip


@dataclass
class FakeServer:
    """A Discord server (guild) the bot is in, with its text channels."""

    id: int
    text_channels: list[int] = field(default_factory=list)

    def channel_payload(self, channel_id: int) -> dict[str, Any]:
        return {"id": str(channel_id), "type": 0, "guild_id": str(self.id), "name": f"chat-{channel_id}",
                "position": 0, "permission_overwrites": [], "nsfw": False, "parent_id": None, "topic": None,
                "rate_limit_per_user": 0, "last_message_id": None}  # fmt: skip

    def create_payload(self, bot: dict[str, Any]) -> dict[str, Any]:
        """GUILD_CREATE's data: the server whole, as it streams in after READY."""
        everyone = {"id": str(self.id), "name": "@everyone", "permissions": "3148800", "position": 0, "color": 0,
                    "hoist": False, "managed": False, "mentionable": False, "flags": 0}  # fmt: skip
        me = {"user": bot, "roles": [], "joined_at": JOINED, "deaf": False, "mute": False, "flags": 0}
        return {"id": str(self.id), "name": f"server-{self.id}", "icon": None, "owner_id": "1", "roles": [everyone],
                "emojis": [], "stickers": [], "features": [], "member_count": 1, "members": [me],
                "channels": [self.channel_payload(c) for c in self.text_channels], "voice_states": [],
                "presences": [], "threads": [], "stage_instances": [], "guild_scheduled_events": [],
                "unavailable": False, "large": False, "joined_at": me["joined_at"], "mfa_level": 0,
                "verification_level": 0, "explicit_content_filter": 0, "default_message_notifications": 0,
                "premium_tier": 0, "preferred_locale": "en-US", "system_channel_flags": 0, "nsfw_level": 0,
                "afk_timeout": 300, "afk_channel_id": None, "system_channel_id": None}  # fmt: skip


class GatewayConnection:
    """One bot connection to the main gateway: what it identified as, and what it was sent."""

    def __init__(self, ws: web.WebSocketResponse, *, agent: str, compressed: bool) -> None:
        self.ws, self.agent = ws, agent
        self.shard: tuple[int, int] | None = None  # (id, count) from IDENTIFY; None until it identifies
        self.identify: dict[str, Any] | None = None
        self.received: list[dict[str, Any]] = []  # what the bot sent besides heartbeats and IDENTIFY
        self._zlib = zlib.compressobj() if compressed else None
        self._sequence = 0

    def receives(self, guild_id: int | None) -> bool:
        """Whether Discord would deliver this server's events (None: a DM's) on this connection."""
        if self.shard is None:
            return False
        shard_id, count = self.shard
        return shard_id == (0 if guild_id is None else shard_of(guild_id, count))

    async def send(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload)
        if self._zlib is None:
            await self.ws.send_str(data)
        else:  # zlib-stream: one compression context for the connection, each message ending in a sync flush
            await self.ws.send_bytes(self._zlib.compress(data.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self._sequence += 1
        await self.send({"op": 0, "t": event, "s": self._sequence, "d": data})


@dataclass
class Posted:
    agent: str  # the User-Agent of the process that sent it (tests tag each process's)
    channel_id: int
    content: str


class FakeDiscord(LocalServer):
    """Discord for a bot: the main gateway (IDENTIFY's `shard: [id, count]`, READY and GUILD_CREATE with only that
    shard's servers, events delivered only on the shard Discord would use) and the HTTP routes the bot calls:
    log-in, command sync, channels, messages, typing. (No `/gateway/bot`: discord.py asks it for a shard count
    only when it is given none.)"""

    APPLICATION_ID = 1_200_000_000_000_000_001

    def __init__(self) -> None:
        self.bot = user_payload(self.APPLICATION_ID, "alan", bot=True)
        self.servers: dict[int, FakeServer] = {}
        self.dm_channels: dict[int, dict[str, Any]] = {}
        self.connections: list[GatewayConnection] = []
        self.syncs: list[tuple[str, int | None, list[str]]] = []  # (agent, server or None: global, names)
        self.fetched: list[tuple[str, int]] = []  # GET /channels/{id}: (agent, channel id)
        self.posted: list[Posted] = []

    def add_server(self, guild_id: int, *text_channels: int) -> FakeServer:
        self.servers[guild_id] = server = FakeServer(guild_id, list(text_channels))
        return server

    def add_dm(self, channel_id: int, user_id: int, name: str) -> None:
        self.dm_channels[channel_id] = {"id": str(channel_id), "type": 1, "last_message_id": None,
                                        "recipients": [user_payload(user_id, name)]}  # fmt: skip

    @property
    def gateway_url(self) -> str:
        return self.host.replace("http://", "ws://") + "/gateway/"

    def posted_in(self, channel_id: int) -> list[tuple[str, str]]:
        return [(post.agent, post.content) for post in self.posted if post.channel_id == channel_id]

    async def user_message(self, channel_id: int, author: dict[str, Any], content: str, *,
                           guild_id: int | None = None) -> list[GatewayConnection]:  # fmt: skip
        """Someone posts `content` mentioning the bot: MESSAGE_CREATE on the connections Discord would use."""
        data = message_payload(channel_id, author, content, [self.bot])
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
            data["member"] = {"roles": [], "joined_at": JOINED, "deaf": False, "mute": False, "flags": 0}
        targets = [connection for connection in self.connections if connection.receives(guild_id)]
        for connection in targets:
            await connection.dispatch("MESSAGE_CREATE", data)
        return targets

    # --- the gateway ---

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/gateway/", self._gateway)
        app.router.add_get(f"{API}/users/@me", self._json(lambda _: self.bot))
        app.router.add_get(f"{API}/oauth2/applications/@me", self._json(lambda _: self._application()))
        app.router.add_put(f"{API}/applications/{{app}}/commands", self._sync)
        app.router.add_put(f"{API}/applications/{{app}}/guilds/{{guild}}/commands", self._sync)
        app.router.add_get(f"{API}/channels/{{channel}}", self._channel)
        app.router.add_post(f"{API}/channels/{{channel}}/messages", self._post)
        app.router.add_post(f"{API}/channels/{{channel}}/typing", self._typing)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        compressed = request.query.get("compress") == "zlib-stream"
        connection = GatewayConnection(ws, agent=request.headers.get("User-Agent", ""), compressed=compressed)
        self.connections.append(connection)
        await connection.send({"op": 10, "d": {"heartbeat_interval": 45_000}})  # HELLO
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            payload = json.loads(message.data)
            if payload["op"] == 1:  # HEARTBEAT
                await connection.send({"op": 11})
            elif payload["op"] == 2:
                await self._identify(connection, payload["d"])
            else:
                connection.received.append(payload)
        self.connections.remove(connection)
        return ws

    async def _identify(self, connection: GatewayConnection, data: dict[str, Any]) -> None:
        shard_id, count = data.get("shard", [0, 1])  # no `shard`: the one connection for every server
        connection.identify, connection.shard = data, (shard_id, count)
        servers = [server for server in self.servers.values() if shard_of(server.id, count) == shard_id]
        ready = {"v": 10, "user": self.bot, "guilds": [{"id": str(s.id), "unavailable": True} for s in servers],
                 "session_id": f"session-{len(self.connections)}", "resume_gateway_url": self.gateway_url,
                 "shard": [shard_id, count], "application": {"id": str(self.APPLICATION_ID), "flags": 0}}  # fmt: skip
        await connection.dispatch("READY", ready)
        for server in servers:
            await connection.dispatch("GUILD_CREATE", server.create_payload(self.bot))

    # --- HTTP ---

    @staticmethod
    def _json(make: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            return json_response(make(request))

        return handler

    @staticmethod
    async def _typing(request: web.Request) -> web.Response:
        return web.Response(status=204)

    def _application(self) -> dict[str, Any]:
        return {"id": str(self.APPLICATION_ID), "name": "aLAN", "description": "", "icon": None, "bot_public": True,
                "bot_require_code_grant": False, "owner": user_payload(1, "owner"), "verify_key": "00",
                "flags": 0}  # fmt: skip

    async def _sync(self, request: web.Request) -> web.Response:
        commands = await request.json()
        guild = request.match_info.get("guild")
        self.syncs.append((request.headers["User-Agent"], int(guild) if guild else None, [c["name"] for c in commands]))
        for command in commands:
            command.update(id=str(next(_snowflakes)), application_id=str(self.APPLICATION_ID), version="1")
            if guild:
                command["guild_id"] = guild
        return json_response(commands)

    async def _channel(self, request: web.Request) -> web.Response:
        channel_id = int(request.match_info["channel"])
        self.fetched.append((request.headers["User-Agent"], channel_id))
        if channel_id in self.dm_channels:
            return json_response(self.dm_channels[channel_id])
        for server in self.servers.values():
            if channel_id in server.text_channels:
                return json_response(server.channel_payload(channel_id))
        return json_response({"message": "Unknown Channel", "code": 10003}, status=404)

    async def _post(self, request: web.Request) -> web.Response:
        channel_id, body = int(request.match_info["channel"]), await request.json()
        self.posted.append(Posted(request.headers["User-Agent"], channel_id, body["content"]))
        return json_response(message_payload(channel_id, self.bot, body["content"], []))
