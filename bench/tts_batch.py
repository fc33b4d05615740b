"""Benchmark: N requests stepped together (`BatchedFrameLoop`) against the same requests one after another.

    .venv/bin/python bench/tts_batch.py             # N = 1, 2, 4, 8; 4 frames each; 3 repetitions, medians
    .venv/bin/python bench/tts_batch.py --quick     # N = 1, 2, 4; 2 frames; 1 repetition

The full CSM-1B architecture with random weights (as bench/tts.py builds it), fp32 unless `--dtype bf16`. Each
request has its own prompt (mixed lengths, 40–120 positions); frames are greedy so both ways do the same work.
Per N: the aggregate frames per second of the batch and of the sequential runs, and each stream's time per frame
in the batch (what one listener waits per 80 ms of audio). Ends with
`RESULT batch<N>_speedup=… … batch<N>_stream_slowdown=…` (aggregate frames/s batched over sequential, and a
stream's ms/frame batched over alone).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tts import build, sync
from engine.tts.batch_loop import BatchedFrameLoop
from engine.tts.csm import CsmSpeech
from engine.tts.sampling import SamplingConfig, TokenPicker
from engine.tts.types import GenerationStats, Segment

GREEDY = TokenPicker(False, 0.9, 50, None)
WORDS = "i like to talk about music games and the weather and what you did today at work with your friends".split()


def prompt(index: int) -> tuple[list[Segment], str]:
    """Request `index`'s prompt: some history with audio frames, then its text (lengths differ per request)."""
    frames = 20 + 12 * (index % 8)
    codes = torch.randint(0, 2048, (frames, 32))
    said = " ".join(WORDS[: 4 + index % 9])
    return [Segment(1, said, codes)], " ".join(WORDS[index % 5 : index % 5 + 6]) + "."


def prefill(speech: CsmSpeech, index: int) -> tuple[torch.Tensor, object]:
    history, text = prompt(index)
    return speech._prefill(None, history, text, 0, None, GenerationStats())


def sequential(speech: CsmSpeech, count: int, frames: int) -> float:
    """Seconds to make `frames` frames for each of `count` requests, one request after another (prefill excluded)."""
    total = 0.0
    for index in range(count):
        last_hidden, cache = prefill(speech, index)
        sync(speech.device)
        start = time.perf_counter()
        for _ in range(frames):
            frame = speech.loop.sample_frame(last_hidden, GREEDY, GREEDY)
            last_hidden = speech.loop.step(frame, cache)  # type: ignore[arg-type]
        sync(speech.device)
        total += time.perf_counter() - start
    return total


def batched(speech: CsmSpeech, count: int, frames: int) -> float:
    """Seconds to make `frames` frames for `count` requests stepped together (prefill excluded)."""
    batch = BatchedFrameLoop(speech.loop, max_batch=count)
    hidden = []
    for index in range(count):
        last_hidden, cache = prefill(speech, index)
        batch.join(cache, SamplingConfig.greedy())  # type: ignore[arg-type]
        hidden.append(last_hidden)
    last = torch.cat(hidden)
    sync(speech.device)
    start = time.perf_counter()
    for _ in range(frames):
        picked = batch.sample_frames(last)
        last = batch.step(picked)
    sync(speech.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 1, 2, 4; 2 frames; 1 repetition")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    frames = args.frames or (2 if args.quick else 4)
    reps = args.reps or (1 if args.quick else 3)
    sizes = (1, 2, 4) if args.quick else (1, 2, 4, 8)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    torch.manual_seed(0)
    print(f"building the full CSM-1B architecture (random weights) on {device}, {torch.get_num_threads()} threads…")
    speech = build(device)
    if args.dtype == "bf16":
        speech.model.to(torch.bfloat16)
        speech.model.codec_model.float()
        speech.loop = type(speech.loop)(speech.model)
    rows = []
    results: dict[str, float] = {}
    with torch.inference_mode():
        batched(speech, 1, 1)  # warm-up: first-call allocations and kernel selection
        solo_ms = None
        for count in sizes:
            one_by_one = statistics.median(sequential(speech, count, frames) for _ in range(reps))
            together = statistics.median(batched(speech, count, frames) for _ in range(reps))
            seq_fps, batch_fps = count * frames / one_by_one, count * frames / together
            stream_ms = 1000 * together / frames
            solo_ms = solo_ms or 1000 * one_by_one / (count * frames)
            rows.append((count, seq_fps, batch_fps, batch_fps / seq_fps, stream_ms, stream_ms / solo_ms))
            results[f"batch{count}_speedup"] = batch_fps / seq_fps
            results[f"batch{count}_stream_slowdown"] = stream_ms / solo_ms
    print(f"\n{frames} frames per request, {reps} repetition(s), medians, {args.dtype}")
    print(f"{'N':>3} {'sequential fr/s':>16} {'batched fr/s':>13} {'speedup':>8} {'stream ms/fr':>13} {'vs alone':>9}")
    for count, seq_fps, batch_fps, speedup, stream_ms, slowdown in rows:
        print(f"{count:>3} {seq_fps:>16.3f} {batch_fps:>13.3f} {speedup:>7.2f}x {stream_ms:>13.0f} {slowdown:>8.2f}x")
    print("RESULT " + " ".join(f"{key}={value:.2f}" for key, value in results.items()))


if __name__ == "__main__":
    main()
