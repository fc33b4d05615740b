"""RTP header parsing for Discord's voice UDP packets (RFC 3550, with Discord's `_rtpsize` encryption layout).

In the `_rtpsize` modes the part of a packet that stays in the clear, and is authenticated as AEAD associated
data, is the fixed 12-byte header, the CSRC list, and, when the X bit is set, only the 4-byte extension *header*
(profile + length). The extension *body* is encrypted together with the payload, so it can only be stripped after
decryption: `RtpHeader.strip_extension` does that.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_VERSION = 2
FIXED_HEADER_SIZE = 12
EXTENSION_HEADER_SIZE = 4
# Discord sends the RFC 8285 one-byte-header profile.
ONE_BYTE_EXTENSION_PROFILE = 0xBEDE
# RTCP packet types (SR, RR, SDES, BYE, APP): the second byte of an RTCP packet is its full packet type, which in
# RTP terms reads as marker bit set + payload type 72..76. Discord multiplexes RTCP on the same socket.
RTCP_PACKET_TYPES = range(200, 205)

_FIXED = struct.Struct(">BBHII")


class RtpError(ValueError):
    """The bytes are not a well-formed RTP packet."""


@dataclass(frozen=True, slots=True)
class RtpHeader:
    padding: bool
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrcs: tuple[int, ...]
    extension_profile: int | None
    # Length of the (encrypted) extension body in bytes; 0 without an extension.
    extension_body_size: int
    # Bytes at the start of the packet that are sent in the clear and serve as AEAD associated data.
    clear_size: int

    def strip_extension(self, plaintext: bytes) -> bytes:
        """Remove the decrypted extension body (and RTP padding) so only the media payload remains."""
        if self.extension_body_size > len(plaintext):
            raise RtpError(f"extension body of {self.extension_body_size} bytes but only {len(plaintext)} decrypted")
        payload = plaintext[self.extension_body_size :]
        if self.padding and payload:
            # RFC 3550 5.1: the last padding octet counts the padding octets, itself included.
            count = payload[-1]
            if count == 0 or count > len(payload):
                raise RtpError(f"bad RTP padding count {count}")
            payload = payload[:-count]
        return payload


def is_rtcp(packet: bytes) -> bool:
    return len(packet) >= 2 and packet[0] >> 6 == RTP_VERSION and packet[1] in RTCP_PACKET_TYPES


def parse_header(packet: bytes) -> RtpHeader:
    """Parse the clear part of an RTP packet; raises `RtpError` for anything that is not RTP version 2."""
    if len(packet) < FIXED_HEADER_SIZE:
        raise RtpError(f"packet of {len(packet)} bytes is shorter than an RTP header")
    first, second, sequence, timestamp, ssrc = _FIXED.unpack_from(packet)
    if first >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {first >> 6}, expected {RTP_VERSION}")
    csrc_count = first & 0x0F
    offset = FIXED_HEADER_SIZE + 4 * csrc_count
    if len(packet) < offset:
        raise RtpError(f"packet of {len(packet)} bytes too short for {csrc_count} CSRCs")
    csrcs = struct.unpack_from(f">{csrc_count}I", packet, FIXED_HEADER_SIZE) if csrc_count else ()

    profile: int | None = None
    body_size = 0
    if first & 0x10:
        if len(packet) < offset + EXTENSION_HEADER_SIZE:
            raise RtpError("packet too short for its extension header")
        profile, words = struct.unpack_from(">HH", packet, offset)
        body_size = 4 * words
        offset += EXTENSION_HEADER_SIZE

    return RtpHeader(
        padding=bool(first & 0x20),
        marker=bool(second & 0x80),
        payload_type=second & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        csrcs=csrcs,
        extension_profile=profile,
        extension_body_size=body_size,
        clear_size=offset,
    )
