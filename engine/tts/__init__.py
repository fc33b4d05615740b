"""Text-to-speech: CSM-1B with a prefix-cached voice, an exact position budget and streaming audio."""

from .budget import BudgetError, ContextPlan, TextTooLongError, VoiceTooLongError, estimate_reply_frames
from .csm import CsmSpeech, resolve_device
from .sampling import SamplingConfig
from .stream import SpeechStream
from .streaming_decode import SAMPLES_PER_FRAME, StreamConfig
from .types import SAMPLE_RATE, GenerationStats, Segment, SpeechResult

__all__ = [
    "SAMPLES_PER_FRAME",
    "SAMPLE_RATE",
    "BudgetError",
    "ContextPlan",
    "CsmSpeech",
    "GenerationStats",
    "SamplingConfig",
    "Segment",
    "SpeechResult",
    "SpeechStream",
    "StreamConfig",
    "TextTooLongError",
    "VoiceTooLongError",
    "estimate_reply_frames",
    "resolve_device",
]
