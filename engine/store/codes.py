"""Mimi codes as stored bytes: int16 little-endian, row-major [frames, codebooks].

Mimi's codebooks hold 2,048 entries, so int16 is exact and a quarter of int64's size.
"""

from __future__ import annotations

import numpy as np


def codes_to_bytes(codes: np.ndarray) -> tuple[bytes, int]:
    """Return the bytes to store and the number of codebooks needed to read them back."""
    if codes.ndim != 2:
        raise ValueError(f"codes must be [frames, codebooks], got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() > np.iinfo(np.int16).max):
        raise ValueError("codes out of int16 range")
    return codes.astype("<i2").tobytes(), int(codes.shape[1])


def codes_from_bytes(data: bytes, codebooks: int) -> np.ndarray:
    flat = np.frombuffer(data, dtype="<i2").astype(np.int64)
    if codebooks <= 0 or flat.size % codebooks:
        raise ValueError("stored codes do not divide into the stored number of codebooks")
    return flat.reshape(-1, codebooks)
