"""The thin adapter that plugs `PacketProcessor` into a live discord.py 2.7 voice connection.

discord.py has no receive API, but it already owns the two things receiving needs:

* the UDP socket, read by `VoiceConnectionState._socket_reader` (a thread) which hands every datagram to the
  callbacks registered with `VoiceConnectionState.add_socket_listener(callback)`;
* the voice websocket, whose `DiscordVoiceWebSocket.received_message` awaits `ws._hook(ws, msg)` after its own
  handling of every JSON message. Each new websocket gets its hook from `VoiceConnectionState.hook`, so setting that
  attribute covers reconnects; the websocket already open (if any) is patched directly.

From the websocket we learn who owns which SSRC (SPEAKING, op 5) and who left (CLIENT_DISCONNECT, op 13). The
transport key, mode, DAVE session, DAVE protocol version and pending DAVE transitions are read from the connection
object for every datagram, never cached: DAVE re-keys whenever someone joins or leaves, a downgrade only changes
the protocol version, and a reconnect brings a new transport key. Audio that beats its SPEAKING event is held by the
processor and delivered as soon as the event arrives.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import discord
import numpy as np
from discord.gateway import DiscordVoiceWebSocket
from discord.utils import MISSING

from .dave import TransitionWatch
from .processor import RTP_CLOCK_RATE, ConnectionKeys, DecodedAudio, PacketProcessor

_log = logging.getLogger(__name__)

# on_audio(user_id, pcm, timestamp): float32 mono PCM at the receiver's sample rate; timestamp in seconds on that
# speaker's media clock (see DecodedAudio.timestamp). May be a plain function or a coroutine function; it is
# always called on the event loop, never on the socket thread.
AudioCallback = Callable[[int, np.ndarray, float], Awaitable[Any] | Any]
WebsocketHook = Callable[[DiscordVoiceWebSocket, dict[str, Any]], Awaitable[Any]]


class VoiceReceiver:
    """Receives every other speaker in `voice_client`'s channel as per-user PCM.

    Construct it as early as possible (ideally via `ReceivingVoiceClient`): SSRC tracking starts at construction,
    and a SPEAKING event that arrived before it cannot be recovered, so that speaker stays unheard until Discord
    announces their SSRC again.
    """

    def __init__(
        self,
        voice_client: discord.VoiceClient,
        *,
        sample_rate: int = RTP_CLOCK_RATE,
        max_delay_frames: int = 3,
        idle_flush_after: float = 0.1,
    ) -> None:
        self.voice_client = voice_client
        self.processor = PacketProcessor(sample_rate=sample_rate, max_delay_frames=max_delay_frames)
        self.idle_flush_after = idle_flush_after
        self._connection = voice_client._connection
        self._transitions = TransitionWatch()
        # Replaced, never mutated, so the socket thread can read it without a lock.
        self._ssrc_users: dict[int, int] = {}
        self._lock = threading.Lock()  # the processor is used from the socket thread and the event loop
        self._on_audio: AudioCallback | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._callbacks: set[asyncio.Future[Any]] = set()
        self._previous_hook: WebsocketHook | None = None
        self._patched_ws: DiscordVoiceWebSocket | None = None
        self._patched_ws_previous: WebsocketHook | None = None
        self._install_hooks()

    # -- public API -----------------------------------------------------------------------------------------

    @property
    def ssrc_users(self) -> dict[int, int]:
        return dict(self._ssrc_users)

    @property
    def listening(self) -> bool:
        return self._on_audio is not None

    def start(self, on_audio: AudioCallback) -> None:
        """Start delivering audio to `on_audio`. Call from the event loop."""
        if self._on_audio is not None:
            raise RuntimeError("receiver already started")
        self._on_audio = on_audio
        self._connection.add_socket_listener(self._on_datagram)
        self._flush_task = self.voice_client.loop.create_task(self._flush_loop(), name="voice-receive-flush")

    def stop(self) -> None:
        """Stop delivering audio; SSRC tracking continues so `start` can be called again."""
        if self._on_audio is None:
            return
        self._connection.remove_socket_listener(self._on_datagram)
        if self._flush_task is not None:
            self._flush_task.cancel()
            self._flush_task = None
        self._on_audio = None
        with self._lock:
            self.processor.reset()

    def close(self) -> None:
        """Stop, and take the websocket hooks back out."""
        self.stop()
        if self._connection.hook == self._connection_hook:
            self._connection.hook = self._previous_hook
        ws = self._patched_ws
        if ws is not None and ws._hook == self._live_ws_hook:  # type: ignore[comparison-overlap]
            ws._hook = self._patched_ws_previous  # type: ignore[assignment,method-assign]
        self._patched_ws = self._patched_ws_previous = None

    def current_keys(self) -> ConnectionKeys | None:
        """Snapshot of the live connection's keys; None until the session description has arrived."""
        connection = self._connection
        secret, mode, ssrc = connection.secret_key, connection.mode, connection.ssrc
        if secret is MISSING or not secret or mode is MISSING:
            return None
        return ConnectionKeys(
            mode=mode,
            secret_key=bytes(secret),
            ssrc_users=self._ssrc_users,
            own_ssrc=None if ssrc is MISSING else ssrc,
            dave_session=connection.dave_session,
            dave_protocol_version=connection.dave_protocol_version,
            dave_in_transition=self._transitions.in_transition(connection, time.monotonic()),
        )

    def handle_voice_event(self, msg: dict[str, Any]) -> None:
        """Learn from one voice-gateway JSON message. Never raises: it runs inside discord.py's websocket loop."""
        try:
            op, data = msg.get("op"), msg.get("d") or {}
            self._transitions.on_voice_event(op, data)
            if op == DiscordVoiceWebSocket.SPEAKING:
                self._map_ssrc(int(data["ssrc"]), int(data["user_id"]))
            elif op == DiscordVoiceWebSocket.CLIENT_CONNECT and data.get("audio_ssrc"):
                self._map_ssrc(int(data["audio_ssrc"]), int(data["user_id"]))  # older gateways announced it here
            elif op == DiscordVoiceWebSocket.CLIENT_DISCONNECT:
                self._forget_user(int(data["user_id"]))
            elif op == DiscordVoiceWebSocket.READY:
                # A new voice session (reconnect or move): SSRCs from the previous one mean nothing now.
                self._ssrc_users = {}
                with self._lock:
                    self.processor.reset()
        except (KeyError, TypeError, ValueError, AttributeError):
            _log.warning("ignoring malformed voice gateway message %r", msg, exc_info=True)

    # -- websocket side -------------------------------------------------------------------------------------

    def _install_hooks(self) -> None:
        self._previous_hook = self._connection.hook
        self._connection.hook = self._connection_hook
        ws = self._connection.ws
        if ws is not MISSING and ws is not None:
            self._patched_ws, self._patched_ws_previous = ws, ws._hook
            ws._hook = self._live_ws_hook  # type: ignore[method-assign]

    async def _connection_hook(self, ws: DiscordVoiceWebSocket, msg: dict[str, Any]) -> None:
        self.handle_voice_event(msg)
        if self._previous_hook is not None:
            await self._previous_hook(ws, msg)

    async def _live_ws_hook(self, ws: DiscordVoiceWebSocket, msg: dict[str, Any]) -> None:
        self.handle_voice_event(msg)
        if self._patched_ws_previous is not None:
            await self._patched_ws_previous(ws, msg)

    def _map_ssrc(self, ssrc: int, user_id: int) -> None:
        if self._ssrc_users.get(ssrc) != user_id:
            _log.debug("SSRC %d belongs to user %d", ssrc, user_id)
            self._ssrc_users = {**self._ssrc_users, ssrc: user_id}
        self._release_held(ssrc)

    def _release_held(self, ssrc: int) -> None:
        # Their first words may have arrived before this event: they are held, not lost, and go out now.
        if self._on_audio is None or not self.processor.holds(ssrc):
            return  # the usual case: nothing came first, so no keys to snapshot
        keys = self.current_keys()
        if keys is None or self._on_audio is None:
            return
        try:
            with self._lock:
                chunks = self.processor.release_held(ssrc, keys)
        except Exception:  # a bug here must cost the held audio, not discord.py's websocket loop
            _log.exception("replaying held audio for SSRC %d failed", ssrc)
            return
        self._deliver(chunks)

    def _forget_user(self, user_id: int) -> None:
        self._ssrc_users = {ssrc: user for ssrc, user in self._ssrc_users.items() if user != user_id}
        with self._lock:
            chunks = self.processor.drop_user(user_id)
        self._deliver(chunks)

    # -- socket side ----------------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes) -> None:
        # Runs on discord.py's socket reader thread.
        keys = self.current_keys()
        if keys is None:
            return
        try:
            with self._lock:
                chunks = self.processor.process(data, keys)
        except Exception:  # a bug here must cost one packet, not the connection's reader thread
            _log.exception("voice receive failed on a %d-byte datagram", len(data))
            return
        if chunks:
            self.voice_client.loop.call_soon_threadsafe(self._deliver, chunks)

    async def _flush_loop(self) -> None:
        # Packets held back waiting for a missing one must not wait for a speaker who has stopped talking.
        while True:
            await asyncio.sleep(self.idle_flush_after / 2)
            with self._lock:
                chunks = self.processor.flush_idle(time.monotonic(), self.idle_flush_after)
            self._deliver(chunks)

    def _deliver(self, chunks: list[DecodedAudio]) -> None:
        callback = self._on_audio
        if callback is None:
            return
        for chunk in chunks:
            try:
                result = callback(chunk.user_id, chunk.pcm, chunk.timestamp)
            except Exception:
                _log.exception("on_audio callback failed for user %d", chunk.user_id)
                continue
            if inspect.isawaitable(result):
                future = asyncio.ensure_future(result)
                self._callbacks.add(future)  # keep a reference until done, or the task may be collected
                future.add_done_callback(self._callback_done)

    def _callback_done(self, future: asyncio.Future[Any]) -> None:
        self._callbacks.discard(future)
        if not future.cancelled() and future.exception() is not None:
            _log.error("on_audio callback failed", exc_info=future.exception())


class ReceivingVoiceClient(discord.VoiceClient):
    """`await channel.connect(cls=ReceivingVoiceClient)`, then `vc.receiver.start(on_audio)`.

    The receiver exists before the voice websocket opens, so no SPEAKING event can slip past it.
    """

    # The rate the receiver decodes to; a subclass hearing for speech recognition sets 16 kHz.
    receive_sample_rate: int = RTP_CLOCK_RATE

    def __init__(self, client: discord.Client, channel: discord.abc.Connectable) -> None:
        super().__init__(client, channel)
        self.receiver = VoiceReceiver(self, sample_rate=self.receive_sample_rate)

    def cleanup(self) -> None:
        self.receiver.close()
        super().cleanup()
