"""Every audio conversion aLAN does, in-process with PyAV (FFmpeg).

Inside the engine audio is always float32 mono numpy at a known sample rate. This module turns whatever a
user sends (OGG/Opus voice notes, MP3, M4A, WAV, WebM, video notes) into that, and turns it back into what a
platform wants: OGG/Opus voice notes or WAV. A platform's own framing (raw PCM frames) is its adapter's, in `bot/`.

Decoding enforces the caps *while* reading: the byte size is checked before anything is parsed, and decoding
stops as soon as the decoded length passes the duration cap, so a tiny file that expands to hours of audio
costs almost nothing. Every failure is an `AudioError` whose message can be shown to the user as it is.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import av.error
import numpy as np

from engine.errors import AudioTooLargeError, AudioTooLongError, InvalidAudioError

# FFmpeg's own log (one line per damaged packet) stays off: PyAV leaves it off unless `av.logging.set_level` is
# called, and nothing in aLAN calls it. Damage is summed up in one line per file instead (`_Damage`).
log = logging.getLogger(__name__)

WHISPER_RATE = 16_000
CSM_RATE = 24_000

# Defaults for callers that have no settings at hand; the bots pass the configured caps.
DEFAULT_MAX_SECONDS = 120.0
DEFAULT_MAX_BYTES = 20 * 1024 * 1024

AudioInput = bytes | bytearray | memoryview | Path | str | BinaryIO


def _read_input(source: AudioInput, max_bytes: int) -> bytes:
    """Read the whole input, refusing anything over `max_bytes` before parsing any of it."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | Path):
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise AudioTooLargeError(size, max_bytes)
            data = path.read_bytes()
        except OSError as error:
            raise InvalidAudioError(f"Can't read {path.name}: {error.strerror or error}.") from error
    else:
        data = source.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise AudioTooLargeError(len(data), max_bytes)
    if not data:
        raise InvalidAudioError("That file is empty.")
    return data


TRUNCATED_MESSAGE = "That file seems to be cut off or damaged: please send it again."


def _check_complete(data: bytes) -> None:
    """Refuse OGG and WAV files that were cut short in transfer.

    FFmpeg quietly decodes what is there, so a truncated voice note would otherwise become half a sentence
    that the bot answers as if it were whole. OGG must end on a complete page flagged end-of-stream; a WAV
    must hold as many bytes as its RIFF header declares.
    """
    if data.startswith(b"OggS"):
        _check_ogg_pages(data)
    elif data.startswith(b"RIFF") and data[8:12] == b"WAVE":
        declared_size = int.from_bytes(data[4:8], "little")
        # Recorders writing to a pipe can't go back to fill the size in: they leave 0 or a huge placeholder.
        if declared_size in (0, 0xFFFFFFFF) or declared_size >= 0x7FFFF000:
            return
        if len(data) < declared_size + 8:
            raise InvalidAudioError(TRUNCATED_MESSAGE)


def _check_ogg_pages(data: bytes) -> None:
    header_size = 27
    offset = 0
    ended = False
    while offset < len(data):
        if data[offset : offset + 4] != b"OggS" or offset + header_size > len(data):
            raise InvalidAudioError(TRUNCATED_MESSAGE)
        flags = data[offset + 5]
        segment_count = data[offset + 26]
        table_end = offset + header_size + segment_count
        if table_end > len(data):
            raise InvalidAudioError(TRUNCATED_MESSAGE)
        body_size = sum(data[offset + header_size : table_end])
        offset = table_end + body_size
        if offset > len(data):
            raise InvalidAudioError(TRUNCATED_MESSAGE)
        ended = bool(flags & 0x04)
    if not ended:
        raise InvalidAudioError(TRUNCATED_MESSAGE)


def decode_audio(
    source: AudioInput,
    sample_rate: int,
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Decode the first audio stream of `source` to float32 mono at `sample_rate`.

    Raises `AudioTooLargeError` before parsing, `AudioTooLongError` as soon as the decoded audio passes `max_seconds`,
    and `InvalidAudioError` for anything that isn't decodable audio or holds no samples.
    """
    data = _read_input(source, max_bytes)
    _check_complete(data)
    max_samples = int(max_seconds * sample_rate)
    chunks: list[np.ndarray] = []
    total = 0
    damage = _Damage()
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
        log.info("audio rejected: not a readable media file (%s)", error)
        raise InvalidAudioError("That doesn't look like an audio file I can read.") from error
    try:
        if not container.streams.audio:
            raise InvalidAudioError("That file has no audio in it.")
        audio_stream = container.streams.audio[0]
        # A resampler locks onto the format of its first frame; one per decode keeps sources independent.
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in _decoded_frames(container, audio_stream, damage):
            frame.pts = None  # timestamps of damaged streams can jump; the resampler must not try to fill gaps
            for out in resampler.resample(frame):
                total += _append(chunks, out)
            if total > max_samples:
                raise AudioTooLongError(max_seconds)
        for out in resampler.resample(None):  # flush, or the tail of the audio is lost
            total += _append(chunks, out)
    finally:
        container.close()
        damage.report()
    if total > max_samples:
        raise AudioTooLongError(max_seconds)
    if total == 0:
        raise InvalidAudioError("That file holds no audio.")
    return np.concatenate(chunks).astype(np.float32, copy=False)


@dataclass
class _Damage:
    """Packets of one file that didn't decode: told in one log line, however many there are."""

    skipped: int = 0
    packets: int = 0
    first_error: str = ""

    def skip(self, error: av.error.FFmpegError) -> None:
        self.skipped += 1
        self.first_error = self.first_error or str(error)

    def report(self) -> None:
        if self.skipped:
            log.info("skipped %d undecodable audio packets of %d (first: %s)", self.skipped, self.packets,
                     self.first_error)  # fmt: skip


def _decoded_frames(
    container: av.container.InputContainer, stream: av.AudioStream, damage: _Damage
) -> Iterator[av.AudioFrame]:
    """Yield decoded frames, skipping (and counting in `damage`) packets that don't decode.

    A damaged packet in the middle costs a few milliseconds of audio, not the whole message; files cut off
    at the end are caught before decoding (`_check_complete`), and nothing decodable at all is rejected by
    the caller as empty.
    """
    try:
        for packet in container.demux(stream):
            damage.packets += 1
            try:
                yield from packet.decode()
            except av.error.FFmpegError as error:
                damage.skip(error)
    except av.error.FFmpegError as error:
        log.info("audio stream ended early: %s", error)


def _append(chunks: list[np.ndarray], frame: av.AudioFrame) -> int:
    samples = frame.to_ndarray().reshape(-1)
    if samples.size:
        chunks.append(samples)
    return int(samples.size)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample float32 mono audio with FFmpeg's resampler."""
    if from_rate == to_rate or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1), format="flt", layout="mono"
    )
    frame.sample_rate = from_rate
    chunks: list[np.ndarray] = []
    for out in resampler.resample(frame):
        _append(chunks, out)
    for out in resampler.resample(None):
        _append(chunks, out)
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def encode(audio: np.ndarray, sample_rate: int, container_format: str, codec: str, **options: str) -> bytes:
    """Encode float32 mono audio with any FFmpeg codec into any container, in memory.

    `bit_rate` among the options sets the stream's bitrate; the rest are the codec's private options.
    """
    if audio.ndim != 1:
        raise ValueError("expected mono audio as a 1-D array")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout="mono")
        if "bit_rate" in options:
            stream.bit_rate = int(options.pop("bit_rate"))
        stream.options = options
        samples = np.clip(np.ascontiguousarray(audio, dtype=np.float32), -1.0, 1.0).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        # Codecs differ in the sample format they take (s16, fltp, ...): convert to the encoder's own.
        to_codec = av.AudioResampler(format=stream.format.name, layout="mono", rate=sample_rate)
        for converted in [*to_codec.resample(frame), *to_codec.resample(None)]:
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def encode_ogg_opus(audio: np.ndarray, sample_rate: int, *, bitrate: int = 32_000) -> bytes:
    """A voice note: OGG/Opus, mono, libopus tuned for speech.

    Opus takes 8/12/16/24/48 kHz input directly, so CSM's 24 kHz needs no resampling. 32 kb/s keeps a
    one-minute reply near 240 KB, well under Telegram's 1 MB voice-bubble limit.
    """
    if sample_rate not in (8_000, 12_000, 16_000, 24_000, 48_000):
        audio, sample_rate = resample(audio, sample_rate, 48_000), 48_000
    return encode(audio, sample_rate, "ogg", "libopus", bit_rate=str(bitrate), application="voip")


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV."""
    return encode(audio, sample_rate, "wav", "pcm_s16le")


@dataclass(frozen=True)
class Samples:
    """Decoded audio: float32 mono at its own rate (a platform's PCM enters a turn as this, not as a file)."""

    audio: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


def is_ogg_opus(data: bytes) -> bool:
    """An Ogg stream carrying Opus: what Telegram's voice notes are, kept as they arrive."""
    return data[:4] == b"OggS" and b"OpusHead" in data[:200]
