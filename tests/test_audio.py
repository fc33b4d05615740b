from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from engine.audio import (
    CSM_RATE,
    WHISPER_RATE,
    decode_audio,
    encode,
    encode_ogg_opus,
    encode_wav,
    resample,
)
from engine.errors import AudioTooLargeError, AudioTooLongError, InvalidAudioError
from tests.conftest import duration_seconds

OPUS_FRAME_SECONDS = 0.020


@pytest.fixture(scope="module")
def speech(speech_wav: Path) -> np.ndarray:
    return decode_audio(speech_wav, CSM_RATE)


def test_decodes_espeak_speech_to_float_mono(speech: np.ndarray, speech_wav: Path) -> None:
    assert speech.dtype == np.float32 and speech.ndim == 1
    assert 2.0 < duration_seconds(speech, CSM_RATE) < 6.0
    assert np.abs(speech).max() > 0.1  # real speech, not silence
    at_16k = decode_audio(speech_wav, WHISPER_RATE)
    assert duration_seconds(at_16k, WHISPER_RATE) == pytest.approx(duration_seconds(speech, CSM_RATE), abs=0.01)


@pytest.mark.parametrize(
    ("container", "codec", "rate", "tolerance"),
    [
        ("ogg", "libopus", 48_000, OPUS_FRAME_SECONDS),
        ("webm", "libopus", 48_000, OPUS_FRAME_SECONDS),
        # MP3 and AAC add an encoder delay and pad the last frame, which their containers don't always
        # let the decoder trim: up to two of their (longer) frames.
        ("mp3", "libmp3lame", 24_000, 2 * 1152 / 24_000),
        ("ipod", "aac", 24_000, 2 * 1024 / 24_000),  # .m4a
        ("wav", "pcm_s16le", 24_000, 1 / 24_000),
    ],
)
def test_every_user_format_decodes_to_the_right_duration(
    speech: np.ndarray, container: str, codec: str, rate: int, tolerance: float
) -> None:
    data = encode(resample(speech, CSM_RATE, rate), rate, container, codec)
    decoded = decode_audio(data, WHISPER_RATE)
    assert abs(duration_seconds(decoded, WHISPER_RATE) - duration_seconds(speech, CSM_RATE)) <= tolerance + 1e-3


def test_voice_note_is_ogg_opus_and_keeps_duration(speech: np.ndarray) -> None:
    note = encode_ogg_opus(speech, CSM_RATE)
    assert note[:4] == b"OggS" and b"OpusHead" in note[:200]
    decoded = decode_audio(note, CSM_RATE)
    assert abs(duration_seconds(decoded, CSM_RATE) - duration_seconds(speech, CSM_RATE)) <= OPUS_FRAME_SECONDS
    # Speech survives the codec: the decoded signal correlates with the original.
    n = min(len(decoded), len(speech))
    assert np.corrcoef(decoded[:n], speech[:n])[0, 1] > 0.8


def test_voice_note_of_a_minute_fits_telegrams_voice_bubble_limit() -> None:
    rng = np.random.default_rng(0)
    minute = (rng.standard_normal(60 * CSM_RATE) * 0.2).astype(np.float32)
    assert len(encode_ogg_opus(minute, CSM_RATE)) < 1_000_000


def test_wav_round_trip_is_sample_exact_in_length(speech: np.ndarray) -> None:
    decoded = decode_audio(encode_wav(speech, CSM_RATE), CSM_RATE)
    assert len(decoded) == len(speech)
    assert np.max(np.abs(decoded - speech)) < 1e-3


def test_zero_byte_input_is_invalid(tmp_path: Path) -> None:
    empty = tmp_path / "empty.ogg"
    empty.write_bytes(b"")
    with pytest.raises(InvalidAudioError):
        decode_audio(b"", WHISPER_RATE)
    with pytest.raises(InvalidAudioError):
        decode_audio(empty, WHISPER_RATE)


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n" + b"not audio at all " * 200,
        bytes(range(256)) * 40,
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 500,
    ],
    ids=["pdf-ish", "random-bytes", "png-ish"],
)
def test_non_audio_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidAudioError):
        decode_audio(data, WHISPER_RATE)


def test_missing_file_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidAudioError):
        decode_audio(tmp_path / "nope.ogg", WHISPER_RATE)


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.999])
def test_truncated_voice_note_is_invalid(speech: np.ndarray, cut: float) -> None:
    note = encode_ogg_opus(speech, CSM_RATE)
    with pytest.raises(InvalidAudioError, match="cut off"):
        decode_audio(note[: int(len(note) * cut)], WHISPER_RATE)


def test_truncated_wav_is_invalid(speech: np.ndarray) -> None:
    wav = encode_wav(speech, CSM_RATE)
    with pytest.raises(InvalidAudioError, match="cut off"):
        decode_audio(wav[: len(wav) // 2], WHISPER_RATE)


def test_corrupt_container_header_is_invalid(speech: np.ndarray) -> None:
    note = bytearray(encode_ogg_opus(speech, CSM_RATE))
    note[28:60] = b"\xff" * 32  # overwrite the OpusHead identification packet
    with pytest.raises(InvalidAudioError):
        decode_audio(bytes(note), WHISPER_RATE)


def test_file_with_no_audio_stream_is_invalid() -> None:
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index * 40, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(InvalidAudioError, match="no audio"):
        decode_audio(buffer.getvalue(), WHISPER_RATE)


def test_too_large_is_refused_before_decoding(speech: np.ndarray, tmp_path: Path) -> None:
    wav = encode_wav(speech, CSM_RATE)
    with pytest.raises(AudioTooLargeError, match="too large"):
        decode_audio(wav, WHISPER_RATE, max_bytes=len(wav) - 1)
    path = tmp_path / "big.wav"
    path.write_bytes(wav)
    with pytest.raises(AudioTooLargeError):
        decode_audio(path, WHISPER_RATE, max_bytes=1000)


def test_small_file_that_expands_to_ten_minutes_stops_at_the_cap() -> None:
    # Ten minutes of near-silence compresses to a few hundred KB of Opus: small on the wire, long decoded.
    ten_minutes = np.zeros(600 * 16_000, dtype=np.float32)
    note = encode(ten_minutes, 16_000, "ogg", "libopus", bit_rate="6000")
    assert len(note) < 1_000_000
    with pytest.raises(AudioTooLongError, match="2 seconds"):
        decode_audio(note, WHISPER_RATE, max_seconds=2)


def test_audio_within_the_cap_is_accepted(speech: np.ndarray) -> None:
    seconds = duration_seconds(speech, CSM_RATE)
    decoded = decode_audio(encode_wav(speech, CSM_RATE), WHISPER_RATE, max_seconds=seconds + 0.5)
    assert duration_seconds(decoded, WHISPER_RATE) == pytest.approx(seconds, abs=0.01)


@pytest.mark.parametrize("placeholder", [0, 0xFFFFFFFF, 0x7FFFFFFF])
def test_wav_streamed_through_a_pipe_without_its_size_is_accepted(speech: np.ndarray, placeholder: int) -> None:
    wav = bytearray(encode_wav(speech, CSM_RATE))
    wav[4:8] = placeholder.to_bytes(4, "little")  # what sox/ffmpeg/arecord write when they can't seek back
    decoded = decode_audio(bytes(wav), CSM_RATE)
    assert abs(len(decoded) - len(speech)) <= 1


def with_damaged_packets(note: bytes, every: int = 2, start: int = 20) -> tuple[bytes, int]:
    """The voice note remuxed with every `every`-th packet from `start` on replaced by bytes Opus can't decode.

    The OGG pages stay well-formed (the muxer writes them, checksums included): only the packets are damaged,
    as when a recorder or a transfer garbles the payload but not the container.
    """
    import io

    import av

    source = av.open(io.BytesIO(note))
    buffer = io.BytesIO()
    damaged = 0
    with av.open(buffer, mode="w", format="ogg") as target:
        stream = target.add_stream_from_template(source.streams.audio[0])
        packets = [packet for packet in source.demux(source.streams.audio[0]) if packet.size]
        for index, packet in enumerate(packets):
            if index >= start and index < len(packets) - 5 and index % every == 0:
                # TOC 0xff (code 3) with a frame count of 63: more than Opus allows in one packet.
                bad = av.Packet(b"\xff\xff" + bytes(packet)[2:])
                bad.pts, bad.dts, bad.duration = packet.pts, packet.dts, packet.duration
                bad.time_base = packet.time_base
                packet, damaged = bad, damaged + 1
            packet.stream = stream
            target.mux(packet)
    source.close()
    return buffer.getvalue(), damaged


def test_many_undecodable_packets_make_one_log_line_and_ffmpeg_prints_nothing(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    import av.logging

    tone = (0.3 * np.sin(np.arange(10 * CSM_RATE) / CSM_RATE * 2 * np.pi * 220)).astype(np.float32)
    note, damaged = with_damaged_packets(encode_ogg_opus(tone, CSM_RATE))
    assert damaged > 100
    capfd.readouterr()
    caplog.set_level("DEBUG", logger="engine.audio")
    audio = decode_audio(note, CSM_RATE)
    assert 4.0 < duration_seconds(audio, CSM_RATE) < 9.5  # what survived, not the whole message lost
    lines = [record.getMessage() for record in caplog.records if "undecodable" in record.getMessage()]
    assert len(lines) == 1 and f"skipped {damaged} undecodable audio packets" in lines[0]
    assert av.logging.get_level() is None  # PyAV keeps FFmpeg's own per-packet log off
    assert not re.search(r"\[\w+ @ 0x[0-9a-f]+\]", capfd.readouterr().err)  # no "[opus @ 0x…] …" lines
