"""Model-free tests of the TTS engine's pieces: budget, sampling, prefix cache, chunking, stop guards, stored codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from engine.tts.budget import (
    REPLY_MIN_FRAMES,
    TextTooLongError,
    VoiceTooLongError,
    estimate_reply_frames,
    max_reference_frames,
    plan_positions,
    segment_positions,
)
from engine.tts.codes import codes_from_bytes, codes_to_bytes
from engine.tts.prefix_cache import PrefixCache, content_key, restore, snapshot
from engine.tts.sampling import SamplingConfig, TokenPicker, make_generator
from engine.tts.streaming_decode import (
    SAMPLES_PER_FRAME,
    ChunkAssembler,
    RepeatGuard,
    StreamConfig,
    WindowedDecoder,
    is_end_frame,
)

# ---------------------------------------------------------------- budget


def test_reply_estimate_grows_with_text_and_has_a_floor() -> None:
    assert estimate_reply_frames("") == REPLY_MIN_FRAMES
    assert estimate_reply_frames("Hi.") == REPLY_MIN_FRAMES
    long = "word " * 60
    assert estimate_reply_frames(long) > estimate_reply_frames(long[:100]) > REPLY_MIN_FRAMES
    # generous: about twice the frames a 15 chars/s speaker needs
    assert estimate_reply_frames(long) >= 1.9 * len(long.strip()) / 15 * 12.5


def test_segment_positions_counts_end_frame() -> None:
    assert segment_positions(7, 100) == 108
    assert segment_positions(7, 0) == 8
    assert segment_positions(7, None) == 7


def test_plan_drops_oldest_history_first_and_keeps_newest_run() -> None:
    plan = plan_positions(500, [400, 300, 200, 100], 20, 100, 1300)
    # room = 1300 - 500 - 120 = 680: newest 100 + 200 + 300 = 600 fit, 400 does not
    assert plan.kept_history == 3
    assert plan.dropped_history == 1
    assert plan.history_positions == 600
    assert plan.total_positions <= 1300
    # a big middle segment stops the run: older small segments are not kept around the hole
    plan = plan_positions(0, [10, 1000, 10], 20, 100, 600)
    assert plan.kept_history == 1


def test_plan_never_drops_voice_and_raises_when_it_cannot_fit() -> None:
    plan = plan_positions(1800, [10, 10, 10], 20, 200, 2048)  # room for two of the three
    assert plan.voice_positions == 1800 and plan.kept_history == 2
    with pytest.raises(VoiceTooLongError):
        plan_positions(1900, [], 20, 200, 2048)
    with pytest.raises(TextTooLongError):
        plan_positions(0, [], 1900, 200, 2048)
    exact = plan_positions(2048 - 220, [], 20, 200, 2048)
    assert exact.total_positions == 2048


def test_max_reference_frames_leaves_exactly_the_reserve() -> None:
    frames = max_reference_frames(transcript_positions=30, reserved_positions=500, max_positions=2048)
    assert segment_positions(30, frames) + 500 == 2048


# ---------------------------------------------------------------- stored codes


def test_codes_survive_storage_exactly() -> None:
    codes = np.random.default_rng(1).integers(0, 2048, size=(37, 32))
    data = codes_to_bytes(codes)
    assert len(data) == 37 * 32 * 2  # int16: a quarter of int64
    np.testing.assert_array_equal(codes_from_bytes(data, 32), codes)
    # Frames spoken back to back are their bytes back to back (the CSM adapter's `join` relies on it).
    np.testing.assert_array_equal(codes_from_bytes(data + codes_to_bytes(codes[:3]), 32), np.vstack([codes, codes[:3]]))
    with pytest.raises(ValueError):
        codes_to_bytes(np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError):
        codes_to_bytes(np.full((1, 32), 40_000))
    with pytest.raises(ValueError):
        codes_from_bytes(data[:-2], 32)


# ---------------------------------------------------------------- sampling


def test_greedy_and_top1_pick_argmax() -> None:
    logits = torch.randn(3, 64)
    assert torch.equal(TokenPicker(False, 0.9, 50, None)(logits), logits.argmax(-1))
    assert torch.equal(TokenPicker(True, 0.0, 50, None)(logits), logits.argmax(-1))
    assert torch.equal(TokenPicker(True, 1.0, 1, None)(logits), logits.argmax(-1))


def test_top_k_sampling_stays_in_top_k_and_is_seeded() -> None:
    logits = torch.randn(1, 100)
    allowed = set(torch.topk(logits, 5).indices[0].tolist())
    picker = TokenPicker(True, 1.5, 5, make_generator(1, torch.device("cpu")))
    draws = [int(picker(logits)) for _ in range(200)]
    assert set(draws) <= allowed and len(set(draws)) > 1
    again = TokenPicker(True, 1.5, 5, make_generator(1, torch.device("cpu")))
    assert draws == [int(again(logits)) for _ in range(200)]


def test_sampling_defaults_match_reference() -> None:
    cfg = SamplingConfig()
    assert (cfg.temperature, cfg.top_k, cfg.do_sample) == (0.9, 50, True)
    depth = cfg.depth_picker(None)
    assert (depth.temperature, depth.top_k) == (0.9, 50)
    custom = SamplingConfig(depth_temperature=0.5, depth_top_k=10).depth_picker(None)
    assert (custom.temperature, custom.top_k) == (0.5, 10)


# ---------------------------------------------------------------- prefix cache


def _cache(positions: int, layers: int = 2) -> DynamicCache:
    cache = DynamicCache()
    for i in range(layers):
        cache.update(torch.randn(1, 2, positions, 4), torch.randn(1, 2, positions, 4), i)
    return cache


def test_prefix_cache_lru_and_restore_does_not_mutate_entry() -> None:
    lru = PrefixCache(max_entries=2)
    entry = snapshot(_cache(5))
    before = [(k.clone(), v.clone()) for k, v in entry.layers]
    lru.put("a", entry)
    lru.put("b", snapshot(_cache(3)))
    assert lru.get("a") is entry  # refreshes "a"
    lru.put("c", snapshot(_cache(2)))
    assert "b" not in lru and "a" in lru and "c" in lru
    restored = restore(entry, None)  # type: ignore[arg-type]
    assert restored.get_seq_length() == 5
    restored.update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), 0)
    restored.layers[1].keys.add_(1.0)  # even an in-place edit of a restored cache must not reach the entry
    assert restored.get_seq_length() == 8
    for (k, v), (k0, v0) in zip(entry.layers, before, strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    assert lru.hits == 1 and lru.misses == 0


def test_content_key_depends_on_codes_text_and_speaker() -> None:
    codes = torch.randint(0, 50, (10, 4))
    other = codes.clone()
    other[3, 2] += 1
    keys = {
        content_key(0, "hi", codes),
        content_key(0, "hi", other),
        content_key(1, "hi", codes),
        content_key(0, "hi!", codes),
    }
    assert len(keys) == 4
    assert content_key(0, "hi", codes) == content_key(0, "hi", codes.clone())


# ---------------------------------------------------------------- chunks and guards


def _frames(*levels: float) -> np.ndarray:
    return np.concatenate([np.full(SAMPLES_PER_FRAME, lvl, dtype=np.float32) for lvl in levels])


def test_assembler_holds_back_trailing_silence_and_releases_it_on_speech() -> None:
    asm = ChunkAssembler(StreamConfig(silence_dbfs=-50.0, keep_silence_frames=1))
    asm.add(_frames(0.5, 0.5, 0.0, 0.0, 0.0))
    out = asm.take()
    assert out is not None and out.size == 3 * SAMPLES_PER_FRAME  # 2 voiced + 1 kept silent
    assert asm.trailing_silence_frames == 3
    assert asm.take() is None
    asm.add(_frames(0.0, 0.5))  # speech resumes: the held pause goes out with it
    out = asm.take()
    assert out is not None and out.size == 4 * SAMPLES_PER_FRAME
    assert asm.emitted_frames == 7 and asm.trailing_silence_frames == 0


def test_assembler_force_and_disabled_trimming() -> None:
    asm = ChunkAssembler(StreamConfig(silence_dbfs=-50.0, keep_silence_frames=0))
    asm.add(_frames(0.0, 0.0))
    assert asm.take() is None
    forced = asm.take(force=True)
    assert forced is not None and forced.size == 2 * SAMPLES_PER_FRAME
    plain = ChunkAssembler(StreamConfig(silence_dbfs=None))
    plain.add(_frames(0.0, 0.0))
    assert plain.take() is not None and plain.trailing_silence_frames == 0


def test_windowed_decoder_crops_context() -> None:
    calls: list[int] = []

    def fake_decode(codes: torch.Tensor) -> torch.Tensor:
        calls.append(codes.shape[0])
        # each frame decodes to its own index so cropping errors are visible
        return codes[:, 0].float().repeat_interleave(SAMPLES_PER_FRAME)

    codes = torch.arange(30).unsqueeze(1).repeat(1, 2)
    dec = WindowedDecoder(fake_decode, left_context=4)
    parts = [dec.decode_until(codes, end) for end in (5, 17, 30)]
    assert calls == [5, 16, 17]
    assert np.array_equal(np.concatenate(parts), np.arange(30).repeat(SAMPLES_PER_FRAME).astype(np.float32))
    assert dec.decode_until(codes, 30).size == 0


def test_end_frame_and_repeat_guard() -> None:
    assert is_end_frame([0, 0, 0, 0])
    assert is_end_frame([0, 0, 0, 7])  # last codebook ignored, as in transformers' generate()
    assert not is_end_frame([0, 3, 0, 0])
    guard = RepeatGuard(3)
    assert not guard.push([1, 2]) and not guard.push([1, 2])
    assert guard.push([1, 2]) and guard.run == 3
    assert not guard.push([2, 2]) and guard.run == 1
    off = RepeatGuard(None)
    assert not any(off.push([1]) for _ in range(100))


def test_stream_config_validates() -> None:
    with pytest.raises(ValueError):
        StreamConfig(first_chunk_frames=0)
    with pytest.raises(ValueError):
        StreamConfig(left_context_frames=-1)
