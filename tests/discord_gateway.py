"""Discord's side of one bot voice connection, driving discord.py's own voice code (this module holds no tests).

* `VoiceGateway` plays the voice gateway: JSON messages go through `DiscordVoiceWebSocket.received_message` and
  binary DAVE messages (sequence number, opcode, payload) through `received_binary_message`, exactly as
  discord.py's reader hands them over, so the bot's davey session is created, welcomed, downgraded and upgraded by
  discord.py itself. What discord.py sends back (speaking, key packages, transition ready) is kept by
  `RecordingSocket`, which stands in for the aiohttp websocket underneath. The MLS side is a real
  `DaveVoiceServer`.
* `LiveCall` is a `ReceivingVoiceClient` with discord.py's own UDP socket and reader thread, bound to localhost,
  and a UDP socket to send to it from, as Discord's media server would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import davey
import discord
import numpy as np
from discord.gateway import DiscordVoiceWebSocket

from bot.discord.receive import ReceivingVoiceClient
from tests.discord_packets import BOT_SSRC, BOT_USER, CHANNEL_ID, USER_A, XCHACHA20, DaveVoiceServer

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
