"""Discord voice receive: real packets (RTP + rtpsize AEAD + DAVE/MLS via davey) built as Discord builds them,
real Opus from espeak-ng speech, and discord.py's own voice connection objects for the adapter."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import socket
import struct
import time

import discord
import numpy as np
import pytest
from discord.gateway import DiscordVoiceWebSocket

from bot.discord.receive import (
    JitterBuffer,
    PacketProcessor,
    ReceivingVoiceClient,
    VoiceReceiver,
    is_rtcp,
    parse_header,
    sequence_delta,
    supported_modes,
)
from bot.discord.receive.unmapped import MAX_AGE_SECONDS, MAX_PACKETS_PER_SSRC, MAX_SSRCS
from engine.audio import resample
from tests.discord_packets import (
    AES256_GCM,
    BOT_SSRC,
    BOT_USER,
    CHANNEL_ID,
    FRAME,
    SILENCE,
    SSRC_A,
    SSRC_B,
    USER_A,
    USER_B,
    XCHACHA20,
    DiscordSender,
    Speech,
    aligned_correlation,
    joined,
    keys_for,
    rtcp_receiver_report,
    run,
    seal,
)

# -- RTP and the jitter buffer on their own ---------------------------------------------------------------------


def test_header_with_csrcs_and_extension_keeps_only_the_extension_header_clear(key: bytes) -> None:
    packet = DiscordSender(SSRC_A, key, sequence=7, timestamp=4242, csrcs=(5, 6)).packet(b"opus")
    header = parse_header(packet)
    assert (header.sequence, header.timestamp, header.ssrc, header.payload_type) == (7, 4242, SSRC_A, 120)
    assert header.csrcs == (5, 6)
    assert header.extension_profile == 0xBEDE
    assert header.extension_body_size == 4
    assert header.clear_size == 12 + 2 * 4 + 4
    assert header.strip_extension(b"\x10\x7f\x00\x00opus") == b"opus"


def test_rtcp_is_recognised(key: bytes) -> None:
    assert is_rtcp(rtcp_receiver_report(SSRC_A))
    assert not is_rtcp(DiscordSender(SSRC_A, key).packet(b"x"))


def test_sequence_delta_wraps() -> None:
    assert sequence_delta(0, 65_535) == 1
    assert sequence_delta(65_535, 0) == -1
    assert sequence_delta(10, 65_530) == 16


def test_jitter_waits_at_most_max_delay_frames_for_a_hole() -> None:
    buffer: JitterBuffer[str] = JitterBuffer(max_delay_frames=3)
    assert [s.sequence for s in buffer.push(10, 0, "a")] == [10]
    assert buffer.push(12, 0, "c") == []
    assert buffer.push(13, 0, "d") == []
    released = buffer.push(14, 0, "e")  # third packet past the hole: stop waiting for 11
    assert [(s.sequence, s.lost) for s in released] == [(11, True), (12, False), (13, False), (14, False)]
    assert buffer.push(11, 0, "b") == [] and buffer.stats.late == 1


# -- the packet path --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [XCHACHA20, AES256_GCM])
def test_in_order_stream_decodes_to_the_source(speech: Speech, key: bytes, mode: str) -> None:
    if mode not in supported_modes():
        pytest.skip("AES-GCM needs the optional `cryptography` package")
    sender = DiscordSender(SSRC_A, key, mode=mode, csrcs=(SSRC_A,))
    chunks = run(PacketProcessor(), list(sender.stream(speech.opus)), keys_for(key, mode=mode))
    assert {chunk.user_id for chunk in chunks} == {USER_A}
    pcm = joined(chunks)
    assert pcm.dtype == np.float32
    assert len(pcm) == len(speech.opus) * 960
    assert chunks[0].timestamp == 0.0 and chunks[-1].timestamp == pytest.approx((len(speech.opus) - 1) * FRAME)
    assert aligned_correlation(speech.mono, pcm) > 0.95


def test_sixteen_khz_output_comes_straight_from_the_decoder(speech: Speech, key: bytes) -> None:
    chunks = run(
        PacketProcessor(sample_rate=16_000), list(DiscordSender(SSRC_A, key).stream(speech.opus)), keys_for(key)
    )
    pcm = joined(chunks)
    assert len(pcm) == len(speech.opus) * 320
    assert aligned_correlation(resample(speech.mono, 48_000, 16_000), pcm, max_lag=700) > 0.9


def test_reordering_and_loss_keep_the_duration_with_concealment(speech: Speech, key: bytes) -> None:
    packets = list(DiscordSender(SSRC_A, key).stream(speech.opus))
    rng = random.Random(5)
    lost = set(rng.sample(range(1, len(packets) - 1), k=len(packets) // 20))  # 5%
    kept = [p for i, p in enumerate(packets) if i not in lost]
    # Swap neighbours (not the very first pair: a packet that precedes the first one ever heard is indistinguishable
    # from a late one, and the receiver rightly drops it).
    for i in range(3, len(kept) - 1, 6):
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    processor = PacketProcessor()
    chunks = run(processor, kept, keys_for(key))
    assert sum(c.frames for c in chunks) == len(packets)
    assert sum(c.concealed for c in chunks) == len(lost)
    assert len(joined(chunks)) == len(packets) * 960
    # chunks tile the media clock without gaps or overlaps
    for before, after in itertools.pairwise(chunks):
        assert after.timestamp == pytest.approx(before.timestamp + before.duration)
    assert aligned_correlation(speech.mono, joined(chunks)) > 0.8


def test_duplicates_are_dropped(speech: Speech, key: bytes) -> None:
    packets = list(DiscordSender(SSRC_A, key).stream(speech.opus))
    clean = joined(run(PacketProcessor(), packets, keys_for(key)))
    noisy: list[bytes] = []
    for i, packet in enumerate(packets):
        noisy.append(packet)
        if i % 7 == 0:
            noisy.append(packet)  # immediate duplicate
        if i % 11 == 0 and i > 2:
            noisy.append(packets[i - 2])  # duplicate of one already played
    processor = PacketProcessor()
    assert np.array_equal(joined(run(processor, noisy, keys_for(key))), clean)
    stats = processor.jitter_stats(SSRC_A)
    assert stats is not None and stats.duplicates + stats.late == len(noisy) - len(packets)


def test_sequence_and_timestamp_wrap_around(speech: Speech, key: bytes) -> None:
    sender = DiscordSender(SSRC_A, key, sequence=65_500, timestamp=(1 << 32) - 960 * 40)
    packets = list(sender.stream(speech.opus))
    wrap = 65_536 - 65_500
    packets[wrap - 1], packets[wrap] = packets[wrap], packets[wrap - 1]  # 65535 and 0 swapped
    del packets[wrap + 3]  # and one lost right after the wrap
    chunks = run(PacketProcessor(), packets, keys_for(key))
    assert sum(c.frames for c in chunks) == len(speech.opus)
    assert sum(c.concealed for c in chunks) == 1
    assert chunks[-1].timestamp == pytest.approx((len(speech.opus) - 1) * FRAME)


def test_audio_that_beats_its_speaking_event_is_held_and_replayed(speech: Speech, key: bytes) -> None:
    # Discord's SPEAKING event (whose SSRC this is) can come after someone's first packets: their first words.
    packets = list(DiscordSender(SSRC_A, key).stream(speech.opus))
    processor = PacketProcessor()
    assert run(processor, packets[:20], keys_for(key, users={})) == []
    assert processor.stats.unmapped == 20
    chunks = run(processor, packets[20:], keys_for(key))
    assert sum(c.frames for c in chunks) == len(packets)
    assert chunks[0].timestamp == 0.0
    assert aligned_correlation(speech.mono, joined(chunks)) > 0.95
    assert processor.stats.replayed == 20 and processor.held == 0


def test_held_audio_is_bounded_and_expires(speech: Speech, key: bytes, caplog: pytest.LogCaptureFixture) -> None:
    processor, unknown, start = PacketProcessor(), keys_for(key, users={}), 1000.0
    with caplog.at_level(logging.DEBUG, logger="bot.discord.receive"):
        # three seconds from one unknown SSRC: only the newest second is kept
        for index, packet in enumerate(DiscordSender(SSRC_A, key).stream(speech.opus[:150])):
            processor.process(packet, unknown, now=start + index * FRAME)
        assert processor.held == MAX_PACKETS_PER_SSRC
        # forty unknown SSRCs: a bounded number is held, the stalest give way
        for ssrc in range(0x5000, 0x5000 + 40):
            processor.process(DiscordSender(ssrc, key).packet(speech.opus[0]), unknown, now=start + 3.0)
        assert processor.held == MAX_SSRCS
        # nobody claims them: gone after a while
        processor.flush_idle(start + 3.0 + MAX_AGE_SECONDS + 0.1)
        assert processor.held == 0 and processor.stats.held_dropped == 150 + 40
    assert processor.release_held(SSRC_A, keys_for(key)) == []
    # a line per SSRC at most, never one per packet
    assert len(caplog.records) <= 2 * 41


def test_undecryptable_packets_from_an_unknown_ssrc_are_not_held(speech: Speech, key: bytes) -> None:
    processor = PacketProcessor()
    forged = list(DiscordSender(SSRC_A, os.urandom(32)).stream(speech.opus[:10]))
    assert run(processor, forged, keys_for(key, users={})) == []
    assert processor.stats.unmapped == 10 and processor.held == 0
    assert run(processor, list(DiscordSender(SSRC_A, key, sequence=10).stream(speech.opus[10:20])), keys_for(key))
    assert processor.stats.replayed == 0


def test_own_ssrc_and_rtcp_are_ignored(speech: Speech, key: bytes) -> None:
    processor = PacketProcessor()
    own = DiscordSender(BOT_SSRC, key).packet(speech.opus[0])
    assert processor.process(own, keys_for(key, users={BOT_SSRC: BOT_USER})) == []
    assert processor.process(rtcp_receiver_report(SSRC_A), keys_for(key)) == []
    assert (processor.stats.own, processor.stats.rtcp) == (1, 1)


def test_bad_packets_are_dropped_with_a_log_line(speech: Speech, key: bytes, caplog: pytest.LogCaptureFixture) -> None:
    processor = PacketProcessor()
    wrong = DiscordSender(SSRC_A, os.urandom(32))
    good = DiscordSender(SSRC_A, key).packet(speech.opus[0])
    lying_extension = bytearray(DiscordSender(SSRC_A, key).packet(speech.opus[0]))
    garbage_opus = DiscordSender(SSRC_A, key, sequence=500).packet(b"\x03\x00")
    bad = [
        b"",
        os.urandom(3),
        os.urandom(200),
        bytes(74),  # an IP discovery reply
        good[:11],
        good[:30],
        good[:-1],
        good[:-5] + good[-4:],
        bytes([0x8F]) + good[1:],  # claims 15 CSRCs
        wrong.packet(speech.opus[0]),
        wrong.packet(speech.opus[1]),
    ]
    lying_extension[14:16] = (200).to_bytes(2, "big")  # tampered clear header: authentication fails
    bad.append(bytes(lying_extension))
    # correctly sealed, but the extension header claims more body than was encrypted
    header = struct.pack(">BBHIIHH", 0x90, 0x78, 1, 960, SSRC_A, 0xBEDE, 200)
    nonce = struct.pack(">I", 99)
    bad.append(header + seal(XCHACHA20, key, nonce, header, b"\x10\x00\x00\x00" + speech.opus[1]) + nonce)
    with caplog.at_level(logging.DEBUG, logger="bot.discord.receive"):
        for packet in [*bad, garbage_opus]:
            assert processor.process(packet, keys_for(key)) == []
    stats = processor.stats
    assert stats.decrypt_failed == 8 and stats.opus_errors == 1 and stats.malformed >= 4
    assert stats.malformed + stats.not_audio + stats.unmapped + stats.decrypt_failed + stats.opus_errors == len(bad) + 1
    # one warning per stream and kind of failure, the repeats at debug level
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "too short" in warnings[0] and "Opus" in warnings[1]
    assert any("authentication failed" in r.getMessage() for r in caplog.records)
    # the stream is not poisoned: good packets still decode
    assert run(processor, list(DiscordSender(SSRC_A, key, sequence=501).stream(speech.opus[:5])), keys_for(key))


def test_silence_frames_produce_no_audio_and_no_concealment(speech: Speech, key: bytes) -> None:
    sender = DiscordSender(SSRC_A, key)
    first = list(sender.stream(speech.opus[:50]))
    silence = [sender.packet(SILENCE) for _ in range(5)]
    sender.timestamp += 48_000  # one second of nothing on the wire
    second = list(sender.stream(speech.opus[50:100]))
    processor = PacketProcessor()
    chunks = run(processor, first + silence + second, keys_for(key))
    assert sum(c.frames for c in chunks) == 100 and sum(c.concealed for c in chunks) == 0
    assert processor.stats.silence == 5
    resumed = next(c for c in chunks if c.timestamp > 50 * FRAME)
    assert resumed.timestamp == pytest.approx(55 * FRAME + 1.0)


def test_two_users_interleaved_come_out_separately(speech: Speech, other_speech: Speech, key: bytes) -> None:
    a = list(DiscordSender(SSRC_A, key, sequence=100).stream(speech.opus))
    b = list(DiscordSender(SSRC_B, key, sequence=40_000).stream(other_speech.opus))
    interleaved = [p for pair in zip(a, b, strict=False) for p in pair] + a[len(b) :] + b[len(a) :]
    chunks = run(PacketProcessor(), interleaved, keys_for(key, users={SSRC_A: USER_A, SSRC_B: USER_B}))
    pcm_a = joined([c for c in chunks if c.user_id == USER_A])
    pcm_b = joined([c for c in chunks if c.user_id == USER_B])
    assert len(pcm_a) == len(a) * 960 and len(pcm_b) == len(b) * 960
    assert aligned_correlation(speech.mono, pcm_a) > 0.95
    assert aligned_correlation(other_speech.mono, pcm_b) > 0.95
    assert abs(aligned_correlation(speech.mono, pcm_b)) < 0.3


def test_transport_rekey_mid_stream_is_picked_up(speech: Speech, key: bytes) -> None:
    sender = DiscordSender(SSRC_A, key)
    processor = PacketProcessor()
    chunks = run(processor, list(sender.stream(speech.opus[:60])), keys_for(key))
    new_key = os.urandom(32)
    sender.secret_key = new_key  # e.g. a reconnect brought a new SESSION_DESCRIPTION
    chunks += run(processor, list(sender.stream(speech.opus[60:])), keys_for(new_key))
    assert sum(c.frames for c in chunks) == len(speech.opus) and processor.stats.decrypt_failed == 0


# -- the discord.py adapter, over a real UDP socket and discord.py's own voice websocket code ---------------------


async def _collect(
    queue: asyncio.Queue, frames: int, samples_per_frame: int = 960
) -> list[tuple[int, np.ndarray, float]]:
    items: list[tuple[int, np.ndarray, float]] = []
    deadline = time.monotonic() + 10
    while sum(len(pcm) for _, pcm, _ in items) < frames * samples_per_frame:
        items.append(await asyncio.wait_for(queue.get(), timeout=max(0.1, deadline - time.monotonic())))
    return items


async def test_receiver_on_a_live_discord_voice_client(speech: Speech, key: bytes, dave_group) -> None:
    _, speaker, bot = dave_group
    async with discord.Client(intents=discord.Intents.none()) as client:
        vc = ReceivingVoiceClient(client, discord.Object(id=CHANNEL_ID))  # type: ignore[arg-type]
        connection = vc._connection
        # What discord.py's voice handshake leaves on the connection (READY + SESSION_DESCRIPTION with DAVE).
        connection.ssrc, connection.mode, connection.secret_key = BOT_SSRC, XCHACHA20, list(key)
        connection.dave_protocol_version, connection.dave_session = 1, bot
        connection._create_socket()  # discord.py's own UDP socket; its reader thread delivers to listeners
        connection.socket.bind(("127.0.0.1", 0))
        address = connection.socket.getsockname()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        queue: asyncio.Queue = asyncio.Queue()
        try:
            vc.receiver.start(lambda user, pcm, ts: queue.put_nowait((user, pcm, ts)))
            # A voice websocket built the way DiscordVoiceWebSocket.from_connection_state builds one.
            ws = DiscordVoiceWebSocket(None, loop=vc.loop, hook=connection.hook)  # type: ignore[arg-type]
            ws._connection, connection.ws = connection, ws
            await ws.received_message({"op": 5, "d": {"user_id": str(USER_A), "ssrc": SSRC_A, "speaking": 1}})
            assert vc.receiver.ssrc_users == {SSRC_A: USER_A}

            sender = DiscordSender(SSRC_A, key)
            udp.sendto(DiscordSender(BOT_SSRC, key).packet(speech.opus[0]), address)  # our own echo: ignored
            for frame in speech.opus[:50]:
                udp.sendto(sender.packet(speaker.encrypt_opus(frame)), address)
            first = await _collect(queue, 50)
            assert {user for user, _, _ in first} == {USER_A}

            # Reconnect: new transport key on the live connection; the receiver must not be deaf afterwards.
            new_key = os.urandom(32)
            connection.secret_key, sender.secret_key = list(new_key), new_key
            for index, frame in enumerate(speech.opus[50:], start=50):
                packet = sender.packet(speaker.encrypt_opus(frame))
                if index != len(speech.opus) - 3:  # lost near the end: the last two wait for the idle flush
                    udp.sendto(packet, address)
            second = await _collect(queue, len(speech.opus) - 50)
            assert vc.receiver.processor.stats.concealed == 1
            pcm = np.concatenate([pcm for _, pcm, _ in first + second])
            assert aligned_correlation(speech.mono, pcm) > 0.95
            assert vc.receiver.processor.stats.own == 1

            await ws.received_message({"op": 13, "d": {"user_id": str(USER_A)}})
            assert vc.receiver.ssrc_users == {} and vc.receiver.processor.ssrcs == {}
        finally:
            vc.receiver.close()
            connection._socket_reader.stop()
            connection.socket.close()
            udp.close()
        assert connection.hook is None


async def test_receiver_attached_to_an_open_websocket_chains_its_hook(key: bytes) -> None:
    seen: list[int] = []

    async def existing_hook(ws: DiscordVoiceWebSocket, msg: dict) -> None:
        seen.append(msg["op"])

    async with discord.Client(intents=discord.Intents.none()) as client:
        vc = discord.VoiceClient(client, discord.Object(id=CHANNEL_ID))  # type: ignore[arg-type]
        ws = DiscordVoiceWebSocket(None, loop=vc.loop, hook=existing_hook)  # type: ignore[arg-type]
        ws._connection, vc._connection.ws = vc._connection, ws
        receiver = VoiceReceiver(vc)
        try:
            await ws.received_message({"op": 5, "d": {"user_id": str(USER_B), "ssrc": SSRC_B, "speaking": 1}})
            await ws.received_message({"op": 5, "d": {"user_id": "not a number"}})  # malformed: logged, not raised
            assert receiver.ssrc_users == {SSRC_B: USER_B}
            assert seen == [5, 5]
        finally:
            receiver.close()
            vc._connection._socket_reader.stop()
        assert ws._hook is existing_hook
