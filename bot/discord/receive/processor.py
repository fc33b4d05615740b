"""The receive packet path, free of any networking: UDP datagram in, per-user PCM out.

    datagram -> RTP header -> transport AEAD decrypt (+ strip extension body) -> DAVE E2EE decrypt
             -> silence filter -> per-SSRC jitter buffer -> per-SSRC Opus decoder (FEC/PLC for holes) -> DecodedAudio

Everything that can change while connected (transport key and mode, the DAVE session and protocol version, whether
a DAVE transition is under way, the SSRC -> user map) comes in with every packet as `ConnectionKeys`, so nothing
here can go stale when Discord re-keys. Audio from an SSRC whose user is not known yet is held briefly
(`UnmappedHold`) and replayed once the mapping arrives.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import davey
import numpy as np
from discord.opus import Decoder, OpusError

from .dave import DaveError, dave_decrypt
from .jitter import JitterBuffer, JitterStats, Slot, sequence_delta
from .rtp import RtpError, RtpHeader, is_rtcp, parse_header
from .transport import DecryptError, decrypt_packet
from .unmapped import UnmappedHold

_log = logging.getLogger(__name__)

OPUS_PAYLOAD_TYPE = 120  # Discord's dynamic payload type for Opus
# The frame Discord clients send (five times) when they stop talking; decoding it yields nothing worth hearing and
# feeding it to speech-to-text invites hallucinated words. DAVE leaves it unencrypted.
OPUS_SILENCE = b"\xf8\xff\xfe"
RTP_CLOCK_RATE = 48_000
FRAME_TICKS = 960  # 20 ms at the 48 kHz RTP clock
DECODER_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)  # libopus resamples internally to any of these


@dataclass(frozen=True, slots=True)
class ConnectionKeys:
    """What the live connection knows right now; read afresh for every packet."""

    mode: str
    secret_key: bytes
    ssrc_users: Mapping[int, int]
    own_ssrc: int | None = None
    dave_session: davey.DaveSession | None = None
    # The connection's DAVE protocol version: 0 means transport-only encryption (e.g. after a downgrade), whatever
    # state the davey session is left in.
    dave_protocol_version: int = davey.DAVE_PROTOCOL_VERSION
    # Between a prepared and an executed upgrade or downgrade: senders' plaintext passes (DAVE passthrough).
    dave_in_transition: bool = False


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    """A run of contiguous audio from one speaker."""

    user_id: int
    ssrc: int
    pcm: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    # Seconds on the speaker's media clock, 0.0 at the first packet seen from this SSRC. Continuous across
    # concealed packets, jumps over pauses (Discord stops sending while nobody talks).
    timestamp: float
    rtp_timestamp: int
    frames: int
    concealed: int  # of `frames`, how many were reconstructed by FEC/PLC

    @property
    def duration(self) -> float:
        return len(self.pcm) / self.sample_rate


@dataclass(slots=True)
class ProcessorStats:
    packets: int = 0
    rtcp: int = 0
    own: int = 0
    not_audio: int = 0
    unmapped: int = 0  # packets that arrived before their SSRC's user was known
    held: int = 0  # of those, kept to be replayed once the user is known
    replayed: int = 0
    malformed: int = 0
    decrypt_failed: int = 0
    dave_failed: int = 0
    silence: int = 0
    opus_errors: int = 0
    frames: int = 0
    concealed: int = 0
    # The hold counts what it gives up on (too old, too many, or never claimed); read from there, never copied.
    _held: UnmappedHold = field(default_factory=UnmappedHold, repr=False, compare=False)

    @property
    def held_dropped(self) -> int:
        """Packets held but given up on: too old, too many, or never claimed."""
        return self._held.dropped


@functools.cache
def _decoder_class(sample_rate: int) -> type[Decoder]:
    # discord.opus.Decoder reads its rate and channel count from class attributes, so a variant is a subclass.
    return type(
        f"MonoOpusDecoder{sample_rate}",
        (Decoder,),
        {
            "SAMPLING_RATE": sample_rate,
            "CHANNELS": 1,
            "SAMPLE_SIZE": 2,
            "SAMPLES_PER_FRAME": sample_rate // 50,
            "FRAME_SIZE": sample_rate // 50 * 2,
        },
    )


@dataclass(slots=True)
class _Stream:
    ssrc: int
    user_id: int
    decoder: Decoder
    jitter: JitterBuffer[bytes]
    last_arrival: float
    first_rtp: int | None = None
    last_rtp: int = 0
    last_unwrapped: int = 0
    last_sequence: int | None = None  # of the last frame that really arrived
    warned: set[str] = field(default_factory=set)

    def media_ticks(self, rtp_timestamp: int) -> int:
        """RTP timestamp as ticks since this stream's first packet, unwrapping the 32-bit counter."""
        if self.first_rtp is None:
            self.first_rtp = self.last_rtp = rtp_timestamp
            return 0
        step = (rtp_timestamp - self.last_rtp + (1 << 31)) % (1 << 32) - (1 << 31)
        self.last_rtp = rtp_timestamp
        self.last_unwrapped += step
        return self.last_unwrapped


class PacketProcessor:
    """Turns Discord voice datagrams into per-user PCM. Not thread-safe: serialise calls (the adapter locks)."""

    def __init__(self, *, sample_rate: int = RTP_CLOCK_RATE, max_delay_frames: int = 3) -> None:
        if sample_rate not in DECODER_RATES:
            raise ValueError(f"sample_rate must be one of {DECODER_RATES}, not {sample_rate}")
        self.sample_rate = sample_rate
        self.max_delay_frames = max_delay_frames
        self._held = UnmappedHold()
        self.stats = ProcessorStats(_held=self._held)
        self._streams: dict[int, _Stream] = {}
        self._warned_unmapped: set[int] = set()

    # -- the packet path ------------------------------------------------------------------------------------

    def process(self, packet: bytes, keys: ConnectionKeys, *, now: float | None = None) -> list[DecodedAudio]:
        """Handle one datagram; returns the audio it completes (usually zero or one chunk). Never raises on input."""
        self.stats.packets += 1
        if is_rtcp(packet):
            self.stats.rtcp += 1
            return []
        try:
            header = parse_header(packet)
        except RtpError as error:
            self.stats.malformed += 1
            _log.debug("dropping non-RTP datagram of %d bytes: %s", len(packet), error)
            return []
        if header.ssrc == keys.own_ssrc:
            self.stats.own += 1
            return []
        if header.payload_type != OPUS_PAYLOAD_TYPE:
            self.stats.not_audio += 1  # video or anything else sharing the socket
            return []
        arrival = time.monotonic() if now is None else now
        user_id = keys.ssrc_users.get(header.ssrc)
        if user_id is None:
            self._hold_unmapped(packet, header, keys, arrival)
            return []
        stream = self._stream(header.ssrc, user_id, arrival)
        try:
            payload = decrypt_packet(packet, header, keys.mode, keys.secret_key)
        except (DecryptError, RtpError) as error:
            self.stats.decrypt_failed += 1
            self._warn(stream, "transport", f"dropping packet seq {header.sequence}: {error}")
            return []
        chunks = self._replay_held(stream, keys, arrival) if header.ssrc in self._held else []
        return chunks + self._media(stream, header, payload, keys)

    def release_held(self, ssrc: int, keys: ConnectionKeys, *, now: float | None = None) -> list[DecodedAudio]:
        """The SSRC's user is known now: play what arrived before, in order. Call when the mapping changes."""
        user_id = keys.ssrc_users.get(ssrc)
        if user_id is None or ssrc not in self._held:
            return []
        arrival = time.monotonic() if now is None else now
        return self._replay_held(self._stream(ssrc, user_id, arrival), keys, arrival)

    def _media(self, stream: _Stream, header: RtpHeader, payload: bytes, keys: ConnectionKeys) -> list[DecodedAudio]:
        """A transport-decrypted payload of a known speaker: DAVE, then reordering and decoding."""
        if payload == OPUS_SILENCE:
            # Sent in the clear even under DAVE. Keep its sequence slot so it is not mistaken for a lost packet, but
            # it produces no audio (and nothing for speech-to-text to hallucinate on).
            self.stats.silence += 1
            return self._decode(stream, stream.jitter.push(header.sequence, header.timestamp, payload))
        try:
            opus = dave_decrypt(
                keys.dave_session,
                stream.user_id,
                payload,
                protocol_version=keys.dave_protocol_version,
                in_transition=keys.dave_in_transition,
            )
        except DaveError as error:
            self.stats.dave_failed += 1
            self._warn(stream, "dave", f"dropping packet seq {header.sequence}: DAVE: {error}")
            return []
        return self._decode(stream, stream.jitter.push(header.sequence, header.timestamp, opus))

    def _hold_unmapped(self, packet: bytes, header: RtpHeader, keys: ConnectionKeys, arrival: float) -> None:
        # Normal for a moment: audio can beat the SPEAKING event that says whose SSRC this is.
        self.stats.unmapped += 1
        try:
            # Strip transport encryption now, under the key it was sent with; DAVE needs the user, so it waits.
            payload = decrypt_packet(packet, header, keys.mode, keys.secret_key)
        except (DecryptError, RtpError) as error:
            if header.ssrc not in self._warned_unmapped and len(self._warned_unmapped) < 1024:
                self._warned_unmapped.add(header.ssrc)
                _log.debug("dropping audio from unknown SSRC %d: %s", header.ssrc, error)
            return
        self.stats.held += 1
        self._held.hold(header, payload, arrival)

    def _replay_held(self, stream: _Stream, keys: ConnectionKeys, now: float) -> list[DecodedAudio]:
        held = self._held.take(stream.ssrc, now)
        if held:
            _log.debug(
                "SSRC %d is user %d: replaying %d packets that came first", stream.ssrc, stream.user_id, len(held)
            )
        chunks: list[DecodedAudio] = []
        for packet in held:
            self.stats.replayed += 1
            chunks += self._media(stream, packet.header, packet.payload, keys)
        return chunks

    # -- stream lifecycle -----------------------------------------------------------------------------------

    def flush_idle(self, now: float, idle_after: float = 0.1) -> list[DecodedAudio]:
        """Release what streams that have been quiet for `idle_after` seconds still hold back for reordering."""
        out: list[DecodedAudio] = []
        for stream in list(self._streams.values()):
            if stream.jitter.pending and now - stream.last_arrival >= idle_after:
                out.extend(self._decode(stream, stream.jitter.flush()))
        self._held.expire(now)
        return out

    def drop_user(self, user_id: int) -> list[DecodedAudio]:
        """Forget a user who left: flush what is buffered and free their decoder(s)."""
        out: list[DecodedAudio] = []
        for ssrc, stream in list(self._streams.items()):
            if stream.user_id == user_id:
                out.extend(self._decode(stream, stream.jitter.flush()))
                del self._streams[ssrc]
        return out

    def reset(self) -> None:
        self._streams.clear()
        self._warned_unmapped.clear()
        self._held.clear()

    @property
    def held(self) -> int:
        """Packets held for SSRCs whose user is not known yet."""
        return len(self._held)

    def holds(self, ssrc: int) -> bool:
        """Whether audio from `ssrc` is held, waiting for its user to be known."""
        return ssrc in self._held

    def jitter_stats(self, ssrc: int) -> JitterStats | None:
        stream = self._streams.get(ssrc)
        return stream.jitter.stats if stream else None

    @property
    def ssrcs(self) -> dict[int, int]:
        return {ssrc: stream.user_id for ssrc, stream in self._streams.items()}

    def _stream(self, ssrc: int, user_id: int, arrival: float) -> _Stream:
        stream = self._streams.get(ssrc)
        if stream is None or stream.user_id != user_id:  # new speaker, or Discord reassigned the SSRC
            self._warned_unmapped.discard(ssrc)
            stream = _Stream(
                ssrc=ssrc,
                user_id=user_id,
                decoder=_decoder_class(self.sample_rate)(),
                jitter=JitterBuffer(max_delay_frames=self.max_delay_frames),
                last_arrival=arrival,
            )
            self._streams[ssrc] = stream
        stream.last_arrival = arrival
        return stream

    def _warn(self, stream: _Stream, kind: str, message: str) -> None:
        # One warning per stream and failure kind; a wrong key would otherwise log fifty lines a second.
        if kind in stream.warned:
            _log.debug("SSRC %d (user %d): %s", stream.ssrc, stream.user_id, message)
        else:
            stream.warned.add(kind)
            _log.warning("SSRC %d (user %d): %s", stream.ssrc, stream.user_id, message)

    # -- decoding -------------------------------------------------------------------------------------------

    def _decode(self, stream: _Stream, slots: list[Slot[bytes]]) -> list[DecodedAudio]:
        chunks: list[DecodedAudio] = []
        pieces: list[np.ndarray] = []
        start_ticks = expected_ticks = 0
        start_rtp = concealed = frames = 0

        def close() -> None:
            nonlocal pieces, concealed, frames
            if pieces:
                chunks.append(
                    DecodedAudio(
                        user_id=stream.user_id,
                        ssrc=stream.ssrc,
                        pcm=np.concatenate(pieces),
                        sample_rate=self.sample_rate,
                        timestamp=start_ticks / RTP_CLOCK_RATE,
                        rtp_timestamp=start_rtp,
                        frames=frames,
                        concealed=concealed,
                    )
                )
            pieces, concealed, frames = [], 0, 0

        for index, slot in enumerate(slots):
            if slot.payload == OPUS_SILENCE:
                close()
                continue
            if slot.payload is None:
                following = slots[index + 1].payload if index + 1 < len(slots) else None
                pcm = self._conceal(stream, following)
                ticks = expected_ticks if pieces else self._estimate_ticks(stream, slot)
                rtp = ((stream.first_rtp or 0) + ticks) % (1 << 32)
            else:
                pcm = self._decode_frame(stream, slot)
                assert slot.timestamp is not None
                ticks, rtp = stream.media_ticks(slot.timestamp), slot.timestamp
                stream.last_sequence = slot.sequence
            if pcm is None:
                close()
                continue
            if pieces and ticks != expected_ticks:
                close()  # the sender paused in between: keep chunks contiguous
            if not pieces:
                start_ticks, start_rtp = ticks, rtp
            pieces.append(pcm)
            frames += 1
            concealed += slot.payload is None
            expected_ticks = ticks + len(pcm) * RTP_CLOCK_RATE // self.sample_rate
        close()
        self.stats.frames += sum(chunk.frames for chunk in chunks)
        self.stats.concealed += sum(chunk.concealed for chunk in chunks)
        return chunks

    @staticmethod
    def _estimate_ticks(stream: _Stream, slot: Slot[bytes]) -> int:
        # A lost frame heading a chunk: place it one frame per sequence number after the last frame heard.
        if stream.last_sequence is None:
            return stream.last_unwrapped + FRAME_TICKS
        return stream.last_unwrapped + FRAME_TICKS * sequence_delta(slot.sequence, stream.last_sequence)

    def _decode_frame(self, stream: _Stream, slot: Slot[bytes]) -> np.ndarray | None:
        assert slot.payload is not None
        try:
            return _to_float(stream.decoder.decode(slot.payload, fec=False))
        except OpusError as error:
            self.stats.opus_errors += 1
            self._warn(stream, "opus", f"undecodable Opus frame seq {slot.sequence}: {error}")
            return None

    def _conceal(self, stream: _Stream, following: bytes | None) -> np.ndarray | None:
        try:
            if following is not None and following != OPUS_SILENCE:
                # Opus in-band FEC: the next packet carries a low-bitrate copy of the one that was lost.
                return _to_float(stream.decoder.decode(following, fec=True))
            return _to_float(stream.decoder.decode(None, fec=False))  # packet loss concealment
        except OpusError as error:
            self.stats.opus_errors += 1
            self._warn(stream, "opus", f"concealment failed: {error}")
            return None


def _to_float(pcm: bytes) -> np.ndarray | None:
    if not pcm:
        return None
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
