"""Discord's transport encryption for voice UDP, receive side (the `_rtpsize` AEAD modes).

Layout of an encrypted packet: clear RTP header (see `rtp.RtpHeader.clear_size`) | ciphertext (extension body +
media payload) | 16-byte auth tag | 4-byte big-endian nonce counter. The counter is the nonce's first 4 bytes, the
rest of the nonce is zero (24 bytes for XChaCha20, 12 for AES-GCM). The clear header is the associated data.
"""

from __future__ import annotations

from collections.abc import Callable

from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
from nacl.exceptions import CryptoError

from .rtp import RtpHeader

try:  # AES-GCM needs `cryptography`, which aLAN does not depend on; Discord requires only XChaCha20 support.
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:  # pragma: no cover - depends on the environment
    AESGCM = None
    InvalidTag = None

XCHACHA20 = "aead_xchacha20_poly1305_rtpsize"
AES256_GCM = "aead_aes256_gcm_rtpsize"
TAG_SIZE = 16
NONCE_SUFFIX_SIZE = 4
KEY_SIZE = 32


class DecryptError(ValueError):
    """The packet could not be authenticated/decrypted (wrong key, corrupted, truncated or unsupported mode)."""


def supported_modes() -> tuple[str, ...]:
    """Modes this machine can decrypt, most preferred first (Discord's own preference)."""
    return (AES256_GCM, XCHACHA20) if AESGCM is not None else (XCHACHA20,)


def _xchacha20(key: bytes, nonce4: bytes, aad: bytes, sealed: bytes) -> bytes:
    nonce = nonce4 + bytes(24 - NONCE_SUFFIX_SIZE)
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, aad, nonce, key)
    except CryptoError as error:
        raise DecryptError("xchacha20-poly1305 authentication failed") from error


def _aes256_gcm(key: bytes, nonce4: bytes, aad: bytes, sealed: bytes) -> bytes:
    if AESGCM is None:
        raise DecryptError(f"{AES256_GCM} needs the `cryptography` package")
    nonce = nonce4 + bytes(12 - NONCE_SUFFIX_SIZE)
    try:
        return AESGCM(key).decrypt(nonce, sealed, aad)
    except InvalidTag as error:
        raise DecryptError("aes256-gcm authentication failed") from error


_DECRYPTORS: dict[str, Callable[[bytes, bytes, bytes, bytes], bytes]] = {
    XCHACHA20: _xchacha20,
    AES256_GCM: _aes256_gcm,
}


def decrypt_packet(packet: bytes, header: RtpHeader, mode: str, secret_key: bytes) -> bytes:
    """Authenticate and decrypt one packet; returns the media payload with the extension body already stripped."""
    decrypt = _DECRYPTORS.get(mode)
    if decrypt is None:
        raise DecryptError(f"unsupported encryption mode {mode!r}")
    if len(secret_key) != KEY_SIZE:
        raise DecryptError(f"secret key has {len(secret_key)} bytes, expected {KEY_SIZE}")
    if len(packet) < header.clear_size + TAG_SIZE + NONCE_SUFFIX_SIZE:
        raise DecryptError(f"packet of {len(packet)} bytes is too short to hold a tag and nonce")
    aad = packet[: header.clear_size]
    sealed = packet[header.clear_size : -NONCE_SUFFIX_SIZE]  # ciphertext followed by the tag, as both libs expect
    plaintext = decrypt(secret_key, packet[-NONCE_SUFFIX_SIZE:], aad, sealed)
    return header.strip_extension(plaintext)
