"""Builds voice traffic the way Discord does; the packet builders share no code with the code under test.

* `DiscordSender`: what a Discord client puts on the wire: RTP (v2, payload type 120, +1 sequence, +960 timestamp
  per 20 ms frame), the 0xBEDE one-byte header extension, `_rtpsize` AEAD with the clear header as associated data,
  and the 4-byte big-endian nonce counter appended to the packet.
* `DaveVoiceServer`: the part of Discord's voice server that DAVE needs: an MLS *external sender* that proposes
  adding members. Proposals are real MLS (RFC 9420) PublicMessages signed with ECDSA P-256, so two or more local
  `davey.DaveSession`s can form a real group and end-to-end encrypt to each other without any network.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import davey
import numpy as np
from discord.opus import Encoder
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

from bot.discord.receive import ConnectionKeys, DecodedAudio, PacketProcessor
from engine.audio import decode_audio
from tests.discord_pcm import to_discord_frames

try:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:  # pragma: no cover
    AESGCM = None

XCHACHA20 = "aead_xchacha20_poly1305_rtpsize"
AES256_GCM = "aead_aes256_gcm_rtpsize"
SILENCE = b"\xf8\xff\xfe"
FRAME_SAMPLES = 960
FRAME = 0.020

# The people (and SSRCs) of the test calls.
USER_A, USER_B, BOT_USER = 111_111_111_111_111_111, 222_222_222_222_222_222, 999_999_999_999_999_999
SSRC_A, SSRC_B, BOT_SSRC = 0x1111, 0x2222, 0x9999
CHANNEL_ID = 333_333_333_333_333_333


# -- audio ------------------------------------------------------------------------------------------------------


def opus_frames(stereo_frames: Iterable[bytes]) -> list[bytes]:
    """Encode 20 ms frames of 48 kHz stereo s16 with discord.py's encoder (FEC on, as Discord clients send)."""
    encoder = Encoder()
    return [encoder.encode(frame, FRAME_SAMPLES) for frame in stereo_frames]


def frames_to_mono(stereo_frames: Iterable[bytes]) -> np.ndarray:
    pcm = np.frombuffer(b"".join(stereo_frames), dtype="<i2").astype(np.float32) / 32768.0
    return pcm.reshape(-1, 2).mean(axis=1)


def aligned_correlation(source: np.ndarray, decoded: np.ndarray, max_lag: int = 2000) -> float:
    """Pearson correlation after undoing the Opus codec delay (the lag that maximises the cross-correlation)."""
    n = min(len(source), len(decoded) - max_lag)
    reference = source[:n]
    size = 1 << int(np.ceil(np.log2(n + max_lag)))
    cross = np.fft.irfft(np.fft.rfft(decoded[: n + max_lag], size) * np.conj(np.fft.rfft(reference, size)), size)
    lag = int(np.argmax(cross[: max_lag + 1]))
    return float(np.corrcoef(reference, decoded[lag : lag + n])[0, 1])


class Speech:
    """Real speech as Discord would send it: source PCM (mono, for comparison) and its 20 ms Opus frames."""

    def __init__(self, wav: Path) -> None:
        frames = list(to_discord_frames(decode_audio(wav, 48_000), 48_000))
        self.mono = frames_to_mono(frames)
        self.opus = opus_frames(frames)


def run(processor: PacketProcessor, packets: list[bytes], keys: ConnectionKeys) -> list[DecodedAudio]:
    out: list[DecodedAudio] = []
    for packet in packets:
        out += processor.process(packet, keys)
    return out + processor.flush_idle(time.monotonic() + 1.0)


def joined(chunks: list[DecodedAudio]) -> np.ndarray:
    return np.concatenate([chunk.pcm for chunk in chunks]) if chunks else np.zeros(0, np.float32)


def keys_for(key: bytes, users: dict[int, int] | None = None, **extra: object) -> ConnectionKeys:
    """What a connection knows: `key` for transport, user A on SSRC A unless told otherwise, and our own SSRC."""
    return ConnectionKeys(
        mode=str(extra.pop("mode", XCHACHA20)),
        secret_key=key,
        ssrc_users={SSRC_A: USER_A} if users is None else users,
        own_ssrc=BOT_SSRC,
        **extra,  # type: ignore[arg-type]
    )


# -- RTP + transport encryption ---------------------------------------------------------------------------------


class DiscordSender:
    """One Discord client's outgoing audio stream."""

    def __init__(
        self,
        ssrc: int,
        secret_key: bytes,
        *,
        mode: str = XCHACHA20,
        sequence: int = 0,
        timestamp: int = 123_456,
        extension: bytes | None = b"\x10\x7f\x00\x00",  # one-byte header element id=1 (audio level), padded
        csrcs: tuple[int, ...] = (),
    ) -> None:
        self.ssrc, self.secret_key, self.mode = ssrc, secret_key, mode
        self.sequence, self.timestamp, self.nonce = sequence, timestamp, 0
        self.extension, self.csrcs = extension, csrcs

    def packet(self, opus: bytes, *, advance: bool = True) -> bytes:
        first = 0x80 | len(self.csrcs) | (0x10 if self.extension is not None else 0)
        header = struct.pack(">BBHII", first, 0x78, self.sequence, self.timestamp, self.ssrc)
        header += b"".join(struct.pack(">I", csrc) for csrc in self.csrcs)
        body = opus
        if self.extension is not None:
            assert len(self.extension) % 4 == 0
            header += struct.pack(">HH", 0xBEDE, len(self.extension) // 4)
            body = self.extension + opus  # the extension body is encrypted along with the payload
        nonce = struct.pack(">I", self.nonce)
        packet = header + seal(self.mode, self.secret_key, nonce, header, body) + nonce
        if advance:
            self.sequence = (self.sequence + 1) & 0xFFFF
            self.timestamp = (self.timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
            self.nonce = (self.nonce + 1) & 0xFFFFFFFF
        return packet

    def stream(self, frames: Iterable[bytes]) -> Iterator[bytes]:
        for frame in frames:
            yield self.packet(frame)


def seal(mode: str, key: bytes, nonce4: bytes, aad: bytes, plaintext: bytes) -> bytes:
    if mode == XCHACHA20:
        return crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce4 + bytes(20), key)
    if mode == AES256_GCM:
        assert AESGCM is not None, "AES-GCM needs `cryptography`"
        return AESGCM(key).encrypt(nonce4 + bytes(8), plaintext, aad)
    raise ValueError(mode)


def rtcp_receiver_report(ssrc: int) -> bytes:
    return struct.pack(">BBHI", 0x80, 201, 1, ssrc)


# -- DAVE: a local MLS external sender ----------------------------------------------------------------------------

_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)


def _point_add(p: tuple[int, int] | None, q: tuple[int, int] | None) -> tuple[int, int] | None:
    if p is None:
        return q
    if q is None:
        return p
    if p[0] == q[0] and (p[1] + q[1]) % _P == 0:
        return None
    if p == q:
        slope = (3 * p[0] * p[0] - 3) * pow(2 * p[1], -1, _P) % _P
    else:
        slope = (q[1] - p[1]) * pow(q[0] - p[0], -1, _P) % _P
    x = (slope * slope - p[0] - q[0]) % _P
    return x, (slope * (p[0] - x) - p[1]) % _P


def _scalar_mult(k: int, point: tuple[int, int]) -> tuple[int, int]:
    result: tuple[int, int] | None = None
    addend: tuple[int, int] | None = point
    while k:
        if k & 1:
            result = _point_add(result, addend)
        addend = _point_add(addend, addend)
        k >>= 1
    assert result is not None
    return result


def _der_integer(value: int) -> bytes:
    raw = value.to_bytes(33, "big").lstrip(b"\0")
    if raw[0] & 0x80:
        raw = b"\0" + raw
    return b"\x02" + bytes([len(raw)]) + raw


def ecdsa_p256_sign(private_key: bytes, message: bytes) -> bytes:
    """ECDSA P-256/SHA-256, DER-encoded as MLS expects (test use only: plain Python, not constant time)."""
    d = int.from_bytes(private_key, "big")
    z = int.from_bytes(hashlib.sha256(message).digest(), "big")
    while True:
        k = secrets.randbelow(_N - 1) + 1
        r = _scalar_mult(k, _G)[0] % _N
        s = pow(k, -1, _N) * (z + r * d) % _N
        if r and s:
            body = _der_integer(r) + _der_integer(s)
            return b"\x30" + bytes([len(body)]) + body


def mls_varint(n: int) -> bytes:
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return struct.pack(">H", 0x4000 | n)
    return struct.pack(">I", 0x80000000 | n)


def mls_vector(data: bytes) -> bytes:
    return mls_varint(len(data)) + data


class DaveVoiceServer:
    """Plays Discord's role in DAVE for one channel: external sender, proposals, commit/welcome fan-out."""

    MLS10 = 1
    PUBLIC_MESSAGE = 1
    SENDER_EXTERNAL = 2
    CONTENT_PROPOSAL = 2
    PROPOSAL_ADD = 1
    CREDENTIAL_BASIC = 1

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        self.signing = davey.generate_p256_keypair()
        self.members: list[davey.DaveSession] = []
        self.epoch = 0

    def external_sender(self) -> bytes:
        # DAVE opcode 25 payload: ExternalSender { signature_key<V>, Credential { basic, identity<V> } }
        return mls_vector(self.signing.public) + struct.pack(">H", self.CREDENTIAL_BASIC) + mls_vector(b"")

    def session(self, user_id: int) -> davey.DaveSession:
        """A client joining the call: gets the external sender and publishes a key package (opcodes 25 and 26)."""
        session = davey.DaveSession(1, user_id, self.channel_id)
        session.set_external_sender(self.external_sender())
        return session

    def add_proposal(self, key_package: bytes) -> bytes:
        """DAVE opcode 27 (append) payload: a vector of MLSMessages, here one Add proposal from the external sender."""
        content = (
            mls_vector(struct.pack(">Q", self.channel_id))
            + struct.pack(">QBI", self.epoch, self.SENDER_EXTERNAL, 0)
            + mls_vector(b"")  # authenticated_data
            + struct.pack(">BH", self.CONTENT_PROPOSAL, self.PROPOSAL_ADD)
            + key_package
        )
        framing = struct.pack(">HH", self.MLS10, self.PUBLIC_MESSAGE)
        to_sign = mls_vector(b"MLS 1.0 FramedContentTBS") + mls_vector(framing + content)
        message = framing + content + mls_vector(ecdsa_p256_sign(self.signing.private, to_sign))
        return mls_vector(message)

    def add(self, key_package: bytes) -> tuple[bytes, bytes, bytes]:
        """Add the owner of `key_package`: the members held here process the proposal (opcode 27) and the winning
        commit (29), and the group moves to the next epoch. Returns (proposals, commit, welcome) for whoever gets
        them over a voice gateway instead: other members (27, 29) and the newcomer (30)."""
        assert self.members, "the first member forms the group with join()"
        proposals = self.add_proposal(key_package)
        commits = [m.process_proposals(davey.ProposalsOperationType.append, proposals) for m in self.members]
        winner = commits[0]
        assert winner is not None and winner.welcome is not None
        for member in self.members:
            member.process_commit(winner.commit)  # opcode 29: the server announces the winning commit to all
        self.epoch += 1
        return proposals, winner.commit, winner.welcome

    def join(self, session: davey.DaveSession) -> None:
        """Add `session` to the group the way the voice server does, and bring everyone to the new epoch."""
        if not self.members:  # the first member commits to a group of its own
            self.members.append(session)
            return
        _, _, welcome = self.add(session.get_serialized_key_package())
        session.process_welcome(welcome)  # opcode 30
        self.members.append(session)

    def new_group(self) -> None:
        """Opcode 24 with epoch 1: the next members form a new group (an upgrade, or the group re-created)."""
        self.members, self.epoch = [], 0


def dave_call() -> tuple[DaveVoiceServer, davey.DaveSession, davey.DaveSession]:
    """A DAVE group formed by a local voice server: user A (who speaks) and the bot (who listens)."""
    server = DaveVoiceServer(CHANNEL_ID)
    speaker, bot = server.session(USER_A), server.session(BOT_USER)
    server.join(speaker)
    server.join(bot)
    assert speaker.ready and bot.ready
    return server, speaker, bot
