"""Discord voice under DAVE: end-to-end encrypted frames from real MLS groups (davey), and the protocol's
transitions — downgrade to transport-only encryption, upgrade back, re-keys — driven through discord.py's own
voice websocket code, with packets on discord.py's own UDP socket."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np

from bot.discord.receive import PacketProcessor, TransitionWatch, looks_dave_encrypted
from tests.discord_gateway import established_dave_call
from tests.discord_packets import (
    BOT_USER,
    CHANNEL_ID,
    SILENCE,
    SSRC_A,
    SSRC_B,
    USER_A,
    USER_B,
    DaveVoiceServer,
    DiscordSender,
    Speech,
    aligned_correlation,
    joined,
    keys_for,
    run,
)


def test_dave_frames_are_decrypted(speech: Speech, key: bytes, dave_group) -> None:
    _, speaker, bot = dave_group
    e2ee = [speaker.encrypt_opus(frame) for frame in speech.opus]
    assert e2ee[0] != speech.opus[0] and e2ee[0].endswith(b"\xfa\xfa")
    chunks = run(PacketProcessor(), list(DiscordSender(SSRC_A, key).stream(e2ee)), keys_for(key, dave_session=bot))
    assert aligned_correlation(speech.mono, joined(chunks)) > 0.95


def test_dave_group_rekey_when_someone_joins(speech: Speech, key: bytes, dave_group) -> None:
    server, speaker, bot = dave_group
    sender, processor = DiscordSender(SSRC_A, key), PacketProcessor()
    keys = keys_for(key, dave_session=bot)
    chunks = run(processor, [sender.packet(speaker.encrypt_opus(f)) for f in speech.opus[:60]], keys)
    epoch = bot.epoch
    server.join(server.session(USER_B))  # a third person joins: new MLS epoch, new media keys
    assert bot.epoch == epoch + 1
    chunks += run(processor, [sender.packet(speaker.encrypt_opus(f)) for f in speech.opus[60:]], keys)
    assert sum(c.frames for c in chunks) == len(speech.opus) and processor.stats.dave_failed == 0


def test_dave_failures_drop_without_raising(speech: Speech, key: bytes, dave_group, caplog) -> None:
    _, speaker, _ = dave_group
    outsider = DaveVoiceServer(CHANNEL_ID).session(BOT_USER)  # DAVE negotiated but our group not formed yet
    packets = list(DiscordSender(SSRC_A, key).stream(speaker.encrypt_opus(f) for f in speech.opus[:10]))
    processor = PacketProcessor()
    with caplog.at_level(logging.WARNING, logger="bot.discord.receive"):
        assert run(processor, packets, keys_for(key, dave_session=outsider)) == []
    assert processor.stats.dave_failed == 10
    assert any("DAVE" in r.getMessage() for r in caplog.records)
    # while no group exists, unencrypted frames pass (protocol transition / downgrade)
    plain = list(DiscordSender(SSRC_A, key, sequence=10).stream(speech.opus[10:20]))
    assert sum(c.frames for c in run(processor, plain, keys_for(key, dave_session=outsider))) == 10


def test_dave_refuses_plaintext_once_the_group_is_active(speech: Speech, key: bytes, dave_group) -> None:
    _, _, bot = dave_group
    processor = PacketProcessor()
    plain = list(DiscordSender(SSRC_A, key).stream(speech.opus[:10]))
    assert run(processor, plain, keys_for(key, dave_session=bot)) == []
    assert processor.stats.dave_failed == 10
    # ...but silence frames are sent in the clear under DAVE, and are recognised as silence
    assert (
        processor.process(DiscordSender(SSRC_A, key, sequence=10).packet(SILENCE), keys_for(key, dave_session=bot))
        == []
    )
    assert processor.stats.silence == 1


def test_dave_frames_are_told_from_plain_opus_as_davey_tells_them(speech: Speech, dave_group) -> None:
    _, speaker, _ = dave_group
    assert all(looks_dave_encrypted(speaker.encrypt_opus(frame)) for frame in speech.opus)
    assert not any(looks_dave_encrypted(frame) for frame in speech.opus)
    assert not looks_dave_encrypted(SILENCE)
    # the magic marker alone is not enough: the footer size before it must fit the frame
    assert not looks_dave_encrypted(speech.opus[0][:-3] + b"\xff\xfa\xfa")


def test_protocol_version_0_lets_plaintext_through_whatever_the_session_says(speech: Speech, key: bytes, dave_group):
    _, speaker, bot = dave_group
    assert bot.ready  # discord.py keeps the (still ready) session when the call is downgraded
    processor = PacketProcessor()
    downgraded = keys_for(key, {SSRC_A: USER_A, SSRC_B: USER_B}, dave_session=bot, dave_protocol_version=0)
    # B's client has no DAVE, so davey has no decryptor for B: their frames must not go near it
    plain_b = list(DiscordSender(SSRC_B, key).stream(speech.opus[:20]))
    # A's frames still in flight from before the downgrade are decrypted
    sender_a = DiscordSender(SSRC_A, key)
    late_a = [sender_a.packet(speaker.encrypt_opus(frame)) for frame in speech.opus[:5]]
    chunks = run(processor, plain_b + late_a, downgraded)
    assert sum(c.frames for c in chunks if c.user_id == USER_B) == 20
    assert sum(c.frames for c in chunks if c.user_id == USER_A) == 5
    assert processor.stats.dave_failed == 0


def test_transition_watch_opens_passthrough_only_for_upgrades_and_downgrades_and_not_for_ever() -> None:
    # discord.py's VoiceConnectionState fields, as its gateway code leaves them at each step
    state = SimpleNamespace(dave_protocol_version=1, dave_pending_transitions={}, dave_downgraded=False)
    watch = TransitionWatch(max_seconds=120.0)
    assert not watch.in_transition(state, 0.0)
    state.dave_pending_transitions = {4: 1}  # someone joined a DAVE call: a re-key, not a transition
    assert not watch.in_transition(state, 1.0)
    state.dave_pending_transitions = {5: 0}  # op 21: downgrade prepared
    assert watch.in_transition(state, 2.0)
    state.dave_pending_transitions, state.dave_protocol_version, state.dave_downgraded = {}, 0, True  # op 22
    watch.on_voice_event(22, {"transition_id": 5})
    assert not watch.in_transition(state, 3.0)
    watch.on_voice_event(24, {"epoch": 1, "protocol_version": 1})  # upgrade: discord.py switches version now
    state.dave_protocol_version, state.dave_downgraded = 1, False
    state.dave_pending_transitions = {6: 1}  # welcome (op 30) for the new group
    assert watch.in_transition(state, 10.0)
    assert not watch.in_transition(state, 10.0 + 121.0)  # never executed: passthrough does not stay open
    watch.on_voice_event(22, {"transition_id": 6})
    state.dave_pending_transitions = {7: 1}
    assert not watch.in_transition(state, 200.0)


# -- transitions, through discord.py's voice websocket and UDP socket ----------------------------------------------

EMPTY = np.zeros(0, np.float32)


async def test_after_a_downgrade_the_user_without_dave_is_heard(speech: Speech, other_speech: Speech, key: bytes):
    async with established_dave_call(key) as (call, _server, speaker):
        gateway = call.gateway
        await gateway.speaking(USER_A, SSRC_A)
        call.listen()
        a = DiscordSender(SSRC_A, key)
        call.send([a.packet(speaker.encrypt_opus(frame)) for frame in speech.opus[:25]])
        assert set(await call.hear(25)) == {USER_A}

        # B joins with a client that has no DAVE: the voice server downgrades the call to transport-only encryption.
        await gateway.prepare_transition(2, protocol_version=0)
        await gateway.execute_transition(2)
        assert call.connection.dave_protocol_version == 0 and call.connection.dave_session.ready
        await gateway.speaking(USER_B, SSRC_B)
        call.send(list(DiscordSender(SSRC_B, key).stream(other_speech.opus)))
        call.send(list(a.stream(speech.opus[25:50])))  # A's client stops encrypting as well
        heard = await call.hear(len(other_speech.opus) + 25)
        assert len(heard.get(USER_B, EMPTY)) == len(other_speech.opus) * 960
        assert aligned_correlation(other_speech.mono, heard[USER_B]) > 0.95
        assert len(heard.get(USER_A, EMPTY)) == 25 * 960
        assert call.receiver.processor.stats.dave_failed == 0


async def test_during_an_upgrade_plaintext_and_dave_frames_are_both_heard(speech: Speech, key: bytes) -> None:
    async with established_dave_call(key) as (call, server, speaker):
        gateway = call.gateway
        await gateway.prepare_transition(2, protocol_version=0)  # someone without DAVE was here for a while
        await gateway.execute_transition(2)
        await gateway.speaking(USER_A, SSRC_A)
        call.listen()

        # They left: the voice server upgrades the call to a new group.
        await gateway.prepare_epoch(1, protocol_version=1)  # discord.py re-creates its session, new key package
        speaker.reinit(1, USER_A, CHANNEL_ID)
        server.new_group()
        server.join(speaker)
        await gateway.welcome_bot(transition_id=3)
        connection = call.connection
        assert connection.dave_session.ready and connection.dave_pending_transitions == {3: 1}
        # Welcomed, transition not executed yet: senders switch when they do, so either kind of frame comes.
        a = DiscordSender(SSRC_A, key)
        call.send(list(a.stream(speech.opus[:40])))
        call.send([a.packet(speaker.encrypt_opus(frame)) for frame in speech.opus[40:80]])
        before = await call.hear(80)
        await gateway.execute_transition(3)
        call.send([a.packet(speaker.encrypt_opus(frame)) for frame in speech.opus[80:]])
        after = await call.hear(len(speech.opus) - 80)
        pcm = np.concatenate([before.get(USER_A, EMPTY), after.get(USER_A, EMPTY)])
        assert len(pcm) == len(speech.opus) * 960
        assert aligned_correlation(speech.mono, pcm) > 0.95
        assert call.receiver.processor.stats.dave_failed == 0


async def test_a_rekey_of_a_running_group_still_refuses_plaintext(speech: Speech, key: bytes) -> None:
    # Passthrough is for upgrades and downgrades only: while someone joins a DAVE call, unencrypted audio (which
    # the voice server itself could have made up) is still refused.
    async with established_dave_call(key) as (call, server, speaker):
        gateway = call.gateway
        await gateway.speaking(USER_A, SSRC_A)
        call.listen()
        await gateway.member_joins(server.session(USER_B), transition_id=4)
        assert call.connection.dave_pending_transitions == {4: 1} and 4 in gateway.socket.transitions_ready()
        a = DiscordSender(SSRC_A, key)
        call.send(list(a.stream(speech.opus[:10])))
        call.send([a.packet(speaker.encrypt_opus(frame)) for frame in speech.opus[10:30]])
        heard = await call.hear(20)
        stats = call.receiver.processor.stats
        assert await call.until(lambda: stats.packets >= 30)
        assert len(heard.get(USER_A, EMPTY)) == 20 * 960 and stats.dave_failed == 10


async def test_a_new_group_welcomed_at_once_does_not_leave_plaintext_accepted(speech: Speech, key: bytes) -> None:
    # Op 24 asks for a new group, whose welcome comes with transition id 0: discord.py executes it at once, records
    # nothing pending and no op 22 follows. The next re-key is one of the running group: plaintext stays refused.
    async with established_dave_call(key) as (call, server, speaker):
        gateway = call.gateway
        await gateway.speaking(USER_A, SSRC_A)
        call.listen()
        await gateway.prepare_epoch(1, protocol_version=1)
        speaker.reinit(1, USER_A, CHANNEL_ID)
        server.new_group()
        server.join(speaker)
        await gateway.welcome_bot(transition_id=0)
        assert call.connection.dave_session.ready and call.connection.dave_pending_transitions == {}
        await gateway.member_joins(server.session(USER_B), transition_id=5)
        assert call.connection.dave_pending_transitions == {5: 1}
        a = DiscordSender(SSRC_A, key)
        call.send(list(a.stream(speech.opus[:10])))
        call.send([a.packet(speaker.encrypt_opus(frame)) for frame in speech.opus[10:30]])
        heard = await call.hear(20)
        stats = call.receiver.processor.stats
        assert await call.until(lambda: stats.packets >= 30)
        assert len(heard.get(USER_A, EMPTY)) == 20 * 960 and stats.dave_failed == 10


def test_a_new_group_stops_counting_as_a_transition_once_in_place_or_too_old() -> None:
    watch = TransitionWatch(max_seconds=120.0)
    joining = SimpleNamespace(ready=False, epoch=None)
    state = SimpleNamespace(
        dave_protocol_version=1, dave_pending_transitions={}, dave_downgraded=False, dave_session=joining
    )
    watch.on_voice_event(24, {"epoch": 1, "protocol_version": 1})
    assert not watch.in_transition(state, 0.0)  # nothing pending yet: the welcome has not come
    state.dave_pending_transitions = {3: 1}  # the welcome, transition 3 not executed yet
    joining.ready, joining.epoch = True, 1
    assert watch.in_transition(state, 1.0)
    assert not watch.in_transition(state, 1.0 + 121.0)  # op 22 never came: not open for ever
    state.dave_pending_transitions = {4: 1}  # ...so a later re-key is not one either
    assert not watch.in_transition(state, 130.0)


async def test_dave_audio_that_beats_its_speaking_event_is_heard_once_it_comes(speech: Speech, key: bytes) -> None:
    async with established_dave_call(key) as (call, _server, speaker):
        gateway = call.gateway
        call.listen()
        a = DiscordSender(SSRC_A, key)
        # A short "yes" said before Discord tells whose SSRC this is: DAVE needs the sender, so it has to wait.
        call.send([a.packet(speaker.encrypt_opus(frame)) for frame in speech.opus[:30]])
        stats = call.receiver.processor.stats
        assert await call.until(lambda: stats.unmapped == 30)
        assert call.heard.empty()
        await gateway.speaking(USER_A, SSRC_A)
        first = await call.hear(30)  # out as soon as SPEAKING arrives, without waiting for more audio
        call.send([a.packet(speaker.encrypt_opus(frame)) for frame in speech.opus[30:]])
        rest = await call.hear(len(speech.opus) - 30)
        assert len(first.get(USER_A, EMPTY)) == 30 * 960
        pcm = np.concatenate([first[USER_A], rest.get(USER_A, EMPTY)])
        assert len(pcm) == len(speech.opus) * 960
        assert aligned_correlation(speech.mono, pcm) > 0.95
        assert stats.replayed == 30 and stats.dave_failed == 0
