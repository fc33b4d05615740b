"""CSM's Mimi codes: the audio rates they stand for, and their stored bytes.

Stored codes are int16 little-endian, row-major [frames, codebooks]: Mimi's codebooks hold 2,048 entries, so int16
is exact and a quarter of int64's size. The number of codebooks is the model's, so a reader passes it back in.
Nothing here imports PyTorch: the CSM adapter is built (and its payloads read) without loading the model.
"""

from __future__ import annotations

import numpy as np

from .budget import FRAME_RATE_HZ

SAMPLE_RATE = 24_000  # of Mimi's audio, in and out
SAMPLES_PER_FRAME = int(SAMPLE_RATE / FRAME_RATE_HZ)  # one Mimi frame: 1920 samples


def codes_to_bytes(codes: np.ndarray) -> bytes:
    """The bytes to store for `codes` [frames, codebooks]."""
    if codes.ndim != 2:
        raise ValueError(f"codes must be [frames, codebooks], got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() > np.iinfo(np.int16).max):
        raise ValueError("codes out of int16 range")
    return codes.astype("<i2").tobytes()


def codes_from_bytes(data: bytes, codebooks: int) -> np.ndarray:
    """The codes [frames, codebooks] (int64) stored as `data`."""
    flat = np.frombuffer(data, dtype="<i2").astype(np.int64)
    if codebooks <= 0 or flat.size % codebooks:
        raise ValueError("stored codes do not divide into the stored number of codebooks")
    return flat.reshape(-1, codebooks)
