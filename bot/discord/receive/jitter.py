"""Per-SSRC reorder buffer keyed by the 16-bit RTP sequence number.

UDP reorders, duplicates and drops packets. The buffer releases frames strictly in sequence order, drops duplicates
and packets that arrive after their slot was already played, and waits for a missing packet at most
`max_delay_frames` frames (Discord frames are 20 ms, so 3 frames = 60 ms of added latency, and only while a gap is
open: an in-order stream passes straight through). A missing packet is released as a `Slot` with `payload=None` so
the Opus decoder can conceal it (FEC from the next packet, or PLC).

Time is not measured here: the caller decides when a stream has gone quiet and calls `flush()`, so this stays a
pure data structure that tests can drive packet by packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

SEQUENCE_MODULO = 1 << 16


def sequence_delta(later: int, earlier: int) -> int:
    """Signed distance from `earlier` to `later` in 16-bit serial-number arithmetic (RFC 1982), in [-32768, 32767]."""
    delta = (later - earlier) % SEQUENCE_MODULO
    return delta - SEQUENCE_MODULO if delta >= SEQUENCE_MODULO // 2 else delta


@dataclass(frozen=True, slots=True)
class Slot(Generic[T]):
    sequence: int
    timestamp: int | None  # RTP timestamp; None for a lost packet
    payload: T | None  # None: the packet never arrived, conceal it

    @property
    def lost(self) -> bool:
        return self.payload is None


@dataclass(slots=True)
class JitterStats:
    received: int = 0
    released: int = 0
    lost: int = 0
    duplicates: int = 0
    late: int = 0
    resets: int = 0


@dataclass(slots=True)
class JitterBuffer(Generic[T]):
    max_delay_frames: int = 3
    # A forward jump larger than this is treated as a discontinuity (a long outage, or the sender restarting its
    # sequence), not as that many lost packets: concealing seconds of audio would only produce a long smear.
    max_gap: int = 25
    stats: JitterStats = field(default_factory=JitterStats)
    _next: int | None = None
    _pending: dict[int, tuple[int, T]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_delay_frames < 1:
            raise ValueError("max_delay_frames must be at least 1")

    @property
    def pending(self) -> int:
        return len(self._pending)

    def push(self, sequence: int, timestamp: int, payload: T) -> list[Slot[T]]:
        """Add one packet; return the frames that are now ready to play, in order (possibly none)."""
        self.stats.received += 1
        sequence %= SEQUENCE_MODULO
        if self._next is None:
            self._next = sequence
        delta = sequence_delta(sequence, self._next)
        released: list[Slot[T]] = []

        if delta < 0:
            # Far behind can only be a restarted sender: its old position means nothing any more.
            if delta > -self.max_gap * 4:
                self.stats.late += 1
                return released
            released = self._restart(sequence)
        elif delta > self.max_gap:
            released = self._restart(sequence)
        elif sequence in self._pending:
            self.stats.duplicates += 1
            return released

        self._pending[sequence] = (timestamp, payload)
        released.extend(self._drain())
        return released

    def flush(self) -> list[Slot[T]]:
        """Release everything buffered, concealing the holes between buffered packets (the stream went quiet)."""
        released: list[Slot[T]] = []
        while self._pending:
            released.extend(self._skip_one_or_release())
            released.extend(self._release_in_order())
        return released

    def reset(self) -> None:
        self._next = None
        self._pending.clear()

    def _restart(self, sequence: int) -> list[Slot[T]]:
        self.stats.resets += 1
        released = self.flush()
        self._next = sequence
        return released

    def _drain(self) -> list[Slot[T]]:
        released = self._release_in_order()
        # Still a hole at the head: give up on it once a later packet has waited `max_delay_frames`.
        while self._pending and self._span() >= self.max_delay_frames:
            released.extend(self._skip_one_or_release())
            released.extend(self._release_in_order())
        return released

    def _span(self) -> int:
        assert self._next is not None
        return max(sequence_delta(sequence, self._next) for sequence in self._pending)

    def _release_in_order(self) -> list[Slot[T]]:
        released: list[Slot[T]] = []
        assert self._next is not None
        while self._next in self._pending:
            timestamp, payload = self._pending.pop(self._next)
            released.append(Slot(self._next, timestamp, payload))
            self.stats.released += 1
            self._next = (self._next + 1) % SEQUENCE_MODULO
        return released

    def _skip_one_or_release(self) -> list[Slot[T]]:
        assert self._next is not None
        if self._next in self._pending:
            return self._release_in_order()
        lost: Slot[T] = Slot(self._next, None, None)
        self.stats.lost += 1
        self._next = (self._next + 1) % SEQUENCE_MODULO
        return [lost]
