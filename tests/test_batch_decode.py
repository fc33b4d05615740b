"""Mimi decode batched across replies: padded rows equal solo decodes, and streamed replies decoded in shared
batches still concatenate to a one-shot decode. Runs on the tiny random CSM's Mimi (real frame geometry)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.tts.batch_decode import decode_batch, decode_due
from engine.tts.csm import CsmSpeech
from engine.tts.streaming_decode import SAMPLES_PER_FRAME, StreamConfig, WindowedDecoder


@pytest.fixture(scope="module")
def speech(tiny_csm_dir: Path) -> CsmSpeech:
    return CsmSpeech.load(str(tiny_csm_dir), device="cpu", weights="fp32")


def random_codes(speech: CsmSpeech, frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = speech.model.codec_model.config.codebook_size
    return torch.randint(0, size, (frames, speech.num_codebooks), generator=generator)


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("lengths", [(52,), (17, 5), (5, 40, 17), (5, 17, 40, 52), (52, 52, 1, 33)])
def test_batch_equals_solo_decodes(speech: CsmSpeech, lengths: tuple[int, ...]) -> None:
    windows = [random_codes(speech, n, seed) for seed, n in enumerate(lengths)]
    audio = decode_batch(speech.model.codec_model, windows)
    assert len(audio) == len(windows)
    with torch.inference_mode():
        for window, got in zip(windows, audio, strict=True):
            solo = speech._decode_tensor(window)
            assert got.dtype == torch.float32 and got.shape == (window.shape[0] * SAMPLES_PER_FRAME,)
            assert max_rel(got, solo) < 1e-5


def test_padding_never_reaches_the_kept_samples(speech: CsmSpeech) -> None:
    """Mimi is causal: a window's samples are the same whatever follows it in its row, even the last frame's."""
    head = random_codes(speech, 9, seed=1)
    codec = speech.model.codec_model
    rows = []
    with torch.inference_mode():
        for seed in (2, 3):
            row = torch.cat([head, random_codes(speech, 7, seed)])
            rows.append(codec.decode(row.T.unsqueeze(0)).audio_values[0, 0])
    kept = 9 * SAMPLES_PER_FRAME
    assert max_rel(rows[0][:kept], rows[1][:kept]) < 1e-6
    assert max_rel(rows[0][kept : kept + SAMPLES_PER_FRAME], rows[1][kept : kept + SAMPLES_PER_FRAME]) > 1e-2


def test_streamed_replies_decoded_in_shared_batches_match_one_shot(speech: CsmSpeech) -> None:
    cfg = StreamConfig()  # 5-frame first chunk, then 12, with 40 frames of left context
    totals = [53, 30, 17, 41]  # 53: the last window is a full 40 + 12
    starts = [0, 1, 3, 0]  # replies join at different steps, so batches mix first, second and full windows
    codes = [random_codes(speech, n, seed=10 + i) for i, n in enumerate(totals)]
    decoders = [WindowedDecoder(speech._decode_tensor, cfg.left_context_frames) for _ in totals]
    pieces: list[list[np.ndarray]] = [[] for _ in totals]
    batch_sizes = []
    step = 0
    while any(d.decoded_frames < n for d, n in zip(decoders, totals, strict=True)):
        due = []
        for i, (decoder, total) in enumerate(zip(decoders, totals, strict=True)):
            if step >= starts[i] and decoder.decoded_frames < total:
                chunk = cfg.first_chunk_frames if decoder.decoded_frames == 0 else cfg.chunk_frames
                due.append((i, min(total, decoder.decoded_frames + chunk)))
        spans = [decoders[i].window(codes[i], end) for i, end in due]
        audio = decode_batch(speech.model.codec_model, [span[0] for span in spans if span is not None])
        for (i, end), piece in zip(due, audio, strict=True):
            pieces[i].append(decoders[i].accept(piece, end))
        batch_sizes.append(len(due))
        step += 1
    assert max(batch_sizes) == len(totals)
    for i, total in enumerate(totals):
        streamed = np.concatenate(pieces[i])
        assert streamed.dtype == np.float32 and streamed.size == total * SAMPLES_PER_FRAME
        one_shot = speech.decode_codes(codes[i])
        rel_err = np.linalg.norm(streamed - one_shot) / np.linalg.norm(one_shot)
        assert rel_err < 1e-3, rel_err
        # and the batched stream is the solo stream up to float rounding
        solo = WindowedDecoder(speech._decode_tensor, cfg.left_context_frames)
        with torch.inference_mode():
            solo_stream = np.concatenate([solo.decode_until(codes[i], end) for end in [*range(5, total, 12), total]])
        assert np.abs(streamed - solo_stream).max() <= 1e-5 * np.abs(solo_stream).max()


def test_empty_inputs_make_no_codec_call() -> None:
    calls: list[tuple[int, ...]] = []

    def codec(batch: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(batch.shape))
        return batch[:, 0].float().repeat_interleave(SAMPLES_PER_FRAME, dim=1)  # [batch, samples]

    assert decode_batch(codec, []) == []
    empty = decode_batch(codec, [torch.zeros(0, 4, dtype=torch.long)] * 2)
    assert [a.shape for a in empty] == [(0,), (0,)] and calls == []
    assert decode_due(codec, [None, None], together=True) == ({}, {}) and calls == []

    windows = [torch.zeros(0, 4, dtype=torch.long), torch.full((3, 4), 7), torch.full((1, 4), 2)]
    audio = decode_batch(codec, windows)
    assert calls == [(2, 4, 3)]  # one call, empty window left out, padded to the longest
    assert audio[0].numel() == 0
    assert torch.equal(audio[1], torch.full((3 * SAMPLES_PER_FRAME,), 7.0))
    assert torch.equal(audio[2], torch.full((SAMPLES_PER_FRAME,), 2.0))


def test_window_and_accept_are_decode_until() -> None:
    def fake_decode(codes: torch.Tensor) -> torch.Tensor:
        return codes[:, 0].float().repeat_interleave(SAMPLES_PER_FRAME)

    codes = torch.arange(30).unsqueeze(1).repeat(1, 2)
    split = WindowedDecoder(fake_decode, left_context=4)
    whole = WindowedDecoder(fake_decode, left_context=4)
    for end in (5, 17, 17, 30):
        span = split.window(codes, end)
        if end == 17 and split.decoded_frames == 17:
            assert span is None
            assert split.accept(torch.zeros(0), end).size == 0
            continue
        assert span is not None
        window, offset, length = span
        assert offset == (window.shape[0] - (end - split.decoded_frames)) * SAMPLES_PER_FRAME
        assert length == (end - split.decoded_frames) * SAMPLES_PER_FRAME
        assert np.array_equal(split.accept(fake_decode(window), end), whole.decode_until(codes, end))
        assert split.decoded_frames == whole.decoded_frames == end

    short = WindowedDecoder(fake_decode, left_context=4)
    window, _, _ = short.window(codes, 5) or (torch.zeros(0), 0, 0)
    with pytest.raises(ValueError, match="samples"):
        short.accept(fake_decode(window)[:-1], 5)
    assert short.decoded_frames == 0


@pytest.mark.parametrize("together", [True, False])
def test_one_bad_window_fails_alone(together: bool) -> None:
    """A decode that fails for one reply's window: the others still get their audio (batched: retried alone)."""
    calls: list[int] = []

    def codec(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        if (batch == 666).any():
            raise RuntimeError("bad codes")
        return batch[:, 0].float().repeat_interleave(SAMPLES_PER_FRAME, dim=1)

    windows = [torch.full((2, 4), 1), None, torch.full((3, 4), 666), torch.full((1, 4), 3)]
    audio, failed = decode_due(codec, windows, together=together)
    assert set(audio) == {0, 3} and set(failed) == {2} and "bad codes" in str(failed[2])
    assert torch.equal(audio[3], torch.full((SAMPLES_PER_FRAME,), 3.0))
    assert calls == ([3, 1, 1, 1] if together else [1, 1, 1])
