"""A short, bounded hold for audio from SSRCs that no user is known for yet.

Discord's SPEAKING event (op 5), which says whose SSRC is whose, can arrive after a speaker's first packets. Dropping
those would clip the first words, so they are kept here, already stripped of transport encryption (the key is the
one they arrived under) but still DAVE-encrypted: DAVE decryption needs the sender's user id, which is exactly what
is missing. Once the mapping arrives they are replayed, in arrival order, into that user's stream.

Everything is bounded: at most `max_packets` per SSRC (the newest are kept, so what is replayed joins up with the
live stream), at most `max_ssrcs` SSRCs (the stalest is evicted for a new one), and nothing older than `max_age`
seconds.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from .rtp import RtpHeader

_log = logging.getLogger(__name__)

MAX_PACKETS_PER_SSRC = 50  # 1 s of 20 ms frames
MAX_SSRCS = 16
MAX_AGE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class HeldPacket:
    header: RtpHeader
    payload: bytes  # transport-decrypted media payload, possibly still DAVE-encrypted
    arrival: float


@dataclass(slots=True)
class _Hold:
    packets: deque[HeldPacket]
    last_arrival: float
    dropped: int = 0


@dataclass(slots=True)
class UnmappedHold:
    max_packets: int = MAX_PACKETS_PER_SSRC
    max_ssrcs: int = MAX_SSRCS
    max_age: float = MAX_AGE_SECONDS
    # Packets given up on: expired, pushed out by a bound, or their SSRC evicted.
    dropped: int = 0
    _holds: dict[int, _Hold] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(hold.packets) for hold in self._holds.values())

    def __contains__(self, ssrc: int) -> bool:
        return ssrc in self._holds

    def hold(self, header: RtpHeader, payload: bytes, now: float) -> None:
        held = self._holds.get(header.ssrc)
        if held is None:
            if len(self._holds) >= self.max_ssrcs:
                self._evict_stalest()
            held = self._holds[header.ssrc] = _Hold(deque(maxlen=self.max_packets), now)
            # One line per SSRC, not per packet.
            _log.debug("holding audio from SSRC %d until Discord says whose it is", header.ssrc)
        if len(held.packets) == self.max_packets:
            held.dropped += 1
            self.dropped += 1
        held.packets.append(HeldPacket(header, payload, now))
        held.last_arrival = now
        self._expire(held, now)

    def take(self, ssrc: int, now: float) -> list[HeldPacket]:
        """Hand over what is held for `ssrc` (in arrival order) and forget it."""
        held = self._holds.pop(ssrc, None)
        if held is None:
            return []
        self._expire(held, now)
        return list(held.packets)

    def expire(self, now: float) -> None:
        """Drop what has been held too long; SSRCs nobody claimed within `max_age` are forgotten."""
        for ssrc, held in list(self._holds.items()):
            self._expire(held, now)
            if not held.packets:
                del self._holds[ssrc]
                _log.debug("no user was ever named for SSRC %d: dropped %d held packets", ssrc, held.dropped)

    def clear(self) -> None:
        self._holds.clear()

    def _expire(self, held: _Hold, now: float) -> None:
        while held.packets and now - held.packets[0].arrival > self.max_age:
            held.packets.popleft()
            held.dropped += 1
            self.dropped += 1

    def _evict_stalest(self) -> None:
        ssrc = min(self._holds, key=lambda candidate: self._holds[candidate].last_arrival)
        held = self._holds.pop(ssrc)
        held.dropped += len(held.packets)
        self.dropped += len(held.packets)
        _log.debug("too many unknown SSRCs: dropped %d held packets from SSRC %d", len(held.packets), ssrc)
