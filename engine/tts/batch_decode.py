"""One Mimi decode for the code windows of several replies at once.

The batched speech service streams many replies together; each reply decodes its new frames with up to
`left_context` earlier frames (`WindowedDecoder`). Decoding every due window in one call instead of one call per
reply uses the device far better, but the windows have different lengths, so they are right-padded to the longest.

Right padding is exact because Mimi's decoder, as transformers implements it, is causal from the codes to the
last sample (checked against a solo decode in tests/test_batch_decode.py):
- the quantizer turns each frame's codes into its latent on its own (embedding sums, 1x1 projections);
- every `MimiConv1d` is causal: all of its padding goes on the left, and with stride 1 no extra right padding
  is added, so output t sees inputs <= t;
- every `MimiConvTranspose1d` (the 2x latent upsample and the SEANet upsamplers) has kernel = 2 * stride and
  trims its whole overlap (`kernel - stride`) from the right (`trim_right_ratio` = 1), so the output samples of
  input i are complete at once and never receive a contribution from input i + 1: the tail that input i + 1
  would have added to is exactly what is trimmed;
- the decoder transformer's attention is causal (sliding window) and its positions start at 0 in every row, so
  a row's real frames see the same keys, at the same positions, as in a solo decode.
So the first `frames * SAMPLES_PER_FRAME` samples of a padded row do not depend on the padding at all (they come
out bit-identical whatever the pad codes), and differ from a solo decode only by float rounding of the batched
matrix products (~1e-6 relative). Padding is with code 0, which every codebook has.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence

import torch
from transformers import MimiModel

from .codes import SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

# codes [batch, codebooks, frames] (int64) -> audio [batch, 1, samples] or [batch, samples]
CodecCall = Callable[[torch.Tensor], torch.Tensor]


def _codec_device(codec: MimiModel | CodecCall, windows: Sequence[torch.Tensor]) -> torch.device:
    if isinstance(codec, MimiModel):
        return next(codec.parameters()).device
    # a plain callable moves the codes itself if it needs to: keep them where the callers made them
    return windows[0].device


def _run_codec(codec: MimiModel | CodecCall, batch: torch.Tensor) -> torch.Tensor:
    """Audio [batch, samples] of `batch` [batch, codebooks, frames]."""
    audio = codec.decode(batch).audio_values if isinstance(codec, MimiModel) else codec(batch)
    if audio.dim() == 3:
        if audio.shape[1] != 1:
            raise ValueError(f"expected mono audio [batch, 1, samples], got {tuple(audio.shape)}")
        audio = audio[:, 0]
    if audio.dim() != 2 or audio.shape[0] != batch.shape[0]:
        raise ValueError(f"codec returned {tuple(audio.shape)} for codes {tuple(batch.shape)}")
    return audio


def decode_batch(codec: MimiModel | CodecCall, windows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Audio of each window ([frames, codebooks] codes) in one codec call: float32 `[frames * SAMPLES_PER_FRAME]`
    tensors on the codec's device, in the order of `windows`.

    `codec` is a (float32) `MimiModel`, whose device the codes are moved to, or any callable with the same
    contract as `MimiModel.decode(...).audio_values`, which gets the codes on the first window's device.
    Windows are right-padded with code 0 to the longest (see the module docstring for why that is exact), so
    the call costs about `len(windows) * longest` frames: similar lengths batch best. A window of 0 frames gets
    empty audio and takes no row.
    """
    if not windows:
        return []
    for window in windows:
        if window.dim() != 2 or window.shape[1] != windows[0].shape[1]:
            raise ValueError(f"windows must be [frames, codebooks] with one codebook count, got {tuple(window.shape)}")
    device = _codec_device(codec, windows)
    rows = [i for i, window in enumerate(windows) if window.shape[0] > 0]
    out = [torch.zeros(0, dtype=torch.float32, device=device) for _ in windows]
    if not rows:
        return out
    longest = max(windows[i].shape[0] for i in rows)
    with torch.inference_mode():
        batch = torch.zeros(len(rows), windows[0].shape[1], longest, dtype=torch.long, device=device)
        for row, i in enumerate(rows):
            batch[row, :, : windows[i].shape[0]] = windows[i].to(device).T
        audio = _run_codec(codec, batch)
        if audio.shape[1] < longest * SAMPLES_PER_FRAME:
            raise ValueError(f"codec returned {audio.shape[1]} samples for {longest} frames")
        for row, i in enumerate(rows):
            out[i] = audio[row, : windows[i].shape[0] * SAMPLES_PER_FRAME].float()
    return out


def decode_due(
    codec: MimiModel | CodecCall, windows: Sequence[torch.Tensor | None], *, together: bool
) -> tuple[dict[int, torch.Tensor], dict[int, Exception]]:
    """Audio for each window that is not None (by index), in one codec call (`together`) or one call each;
    and the indices whose decode failed. When a call for several fails, each of its windows is decoded alone,
    so one bad reply never silences the others."""
    audio: dict[int, torch.Tensor] = {}
    failed: dict[int, Exception] = {}
    present = [index for index, window in enumerate(windows) if window is not None]
    groups = deque([present] if together else [[index] for index in present])
    while groups:
        group = groups.popleft()
        try:
            pieces = decode_batch(codec, [windows[index] for index in group])  # type: ignore[misc]
        except Exception as error:
            if len(group) > 1:
                log.warning("a batched Mimi decode failed; decoding each reply alone", exc_info=True)
                groups.extend([index] for index in group)
            else:
                log.exception("a reply's Mimi decode failed")
                failed[group[0]] = error
            continue
        audio.update(zip(group, pieces, strict=True))
    return audio, failed
