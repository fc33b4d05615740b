"""Discord voice receive for discord.py >= 2.7 (which only sends): transport decryption, DAVE, reordering, Opus.

Usage::

    vc = await channel.connect(cls=ReceivingVoiceClient)
    vc.receiver.start(on_audio)          # on_audio(user_id: int, pcm: np.ndarray, timestamp: float)

`pcm` is float32 mono at the receiver's sample rate (48 kHz by default; pass `sample_rate=16_000` to
`VoiceReceiver` to get Whisper's rate straight from the Opus decoder). The packet path itself is `PacketProcessor`,
usable and testable without any network.
"""

from .dave import DaveError, TransitionWatch, dave_decrypt, looks_dave_encrypted
from .jitter import JitterBuffer, Slot, sequence_delta
from .processor import (
    OPUS_SILENCE,
    ConnectionKeys,
    DecodedAudio,
    PacketProcessor,
    ProcessorStats,
)
from .receiver import AudioCallback, ReceivingVoiceClient, VoiceReceiver
from .rtp import RtpError, RtpHeader, is_rtcp, parse_header
from .transport import AES256_GCM, XCHACHA20, DecryptError, decrypt_packet, supported_modes

__all__ = [
    "AES256_GCM",
    "OPUS_SILENCE",
    "XCHACHA20",
    "AudioCallback",
    "ConnectionKeys",
    "DaveError",
    "DecodedAudio",
    "DecryptError",
    "JitterBuffer",
    "PacketProcessor",
    "ProcessorStats",
    "ReceivingVoiceClient",
    "RtpError",
    "RtpHeader",
    "Slot",
    "TransitionWatch",
    "VoiceReceiver",
    "dave_decrypt",
    "decrypt_packet",
    "is_rtcp",
    "looks_dave_encrypted",
    "parse_header",
    "sequence_delta",
    "supported_modes",
]
