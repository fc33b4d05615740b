"""Benchmark: our CSM engine vs transformers' `generate()` on the full CSM-1B architecture (random weights).

    .venv/bin/python bench/tts.py            # 38-frame (≈3 s) reply, 3 repetitions, medians
    .venv/bin/python bench/tts.py --quick    # 6 frames, 1 repetition (the full model is ~3 s/frame on 2 CPU cores)

Same model, same inputs (a 30 s voice prompt + a few history turns + the target text), same sampling settings
(temperature 0.9, top-k 50), end-of-audio and silence/repeat guards off so both produce exactly `--frames`
frames. Nothing is downloaded: the default `CsmConfig()` (1B backbone, 100M depth decoder, full Mimi; only the
codebook heads trimmed from 2051 to Mimi's 2048 codes) gets random weights and a small local word-level
tokenizer.

Measured:
- prefill: ours cold (voice not cached: whole prompt) vs cached (history + text only);
- time to first audio: ours = first streamed chunk; generate() = the whole call, since it returns audio only at
  the end (so this ratio grows with the reply length);
- ms per frame: medians of per-frame wall times (generate's from a streamer's per-frame callbacks);
- real-time factor: generation time after prefill over the audio duration.
Ends with `RESULT ttfa_speedup=<generate/ours> frame_speedup=<generate/ours>`.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import CsmConfig, CsmForConditionalGeneration
from transformers.generation.streamers import BaseStreamer

from engine.tts.csm import CsmSpeech
from engine.tts.sampling import SamplingConfig
from engine.tts.streaming_decode import StreamConfig
from engine.tts.types import Segment
from tests.tiny_models.csm import build_processor, randomize_codebooks, special_token_ids

FRAME_HZ = 12.5
VOICE_TEXT = (
    "hello there, this is the voice you will hear today. i like to talk about music, games and the weather, "
    "and i will tell you what i think about your day, your work and your budget. thank you for listening to "
    "me for a while now, it is really nice to speak with you this morning."
)
HISTORY = [
    (1, "hey, how are you doing today?", 3.0),
    (0, "i am fine, thanks. what are you working on?", 4.0),
    (1, "i am figuring out my budget for the week.", 3.5),
]
TARGET = "that sounds like a good plan, tell me more about it."


class FrameClock(BaseStreamer):
    """Records when generate() hands over each frame (its first call is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(device: torch.device) -> CsmSpeech:
    processor = build_processor()
    # vocab_size 2048 instead of 2051: random heads would otherwise sample codes 2048-2050, which Mimi cannot
    # decode and generate() crashes on (our engine never picks them); the compute is the same to 0.1 %
    config = CsmConfig(
        vocab_size=2048,
        codebook_pad_token_id=2047,
        depth_decoder_config={"vocab_size": 2048},
        **special_token_ids(processor),
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = CsmForConditionalGeneration(config)
    randomize_codebooks(model)
    model.to(dtype).eval()
    model.codec_model.float()  # as CsmSpeech.load does
    return CsmSpeech(model, processor)


def run_ours(speech: CsmSpeech, voice, history, frames: int, key: str, cfg: StreamConfig) -> dict[str, float]:
    stream = speech.stream(
        voice,
        history,
        TARGET,
        0,
        voice_cache_key=key,
        sampling=SamplingConfig(seed=0),
        streaming=cfg,
        max_frames=frames,
    )
    for _ in stream:
        pass
    stats = stream.result.stats
    return {
        "prefill": stats.prefill_s,
        "ttfa": stats.first_audio_s if stats.first_audio_s is not None else float("nan"),
        "frame": statistics.median(stats.frame_s),
        "rtf": stats.real_time_factor,
        "frames": stats.frames,
        "hit": float(stats.prefix_cache_hit),
    }


def run_generate(speech: CsmSpeech, inputs, frames: int) -> dict[str, float]:
    clock = FrameClock()
    device = speech.device
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = speech.model.generate(
            **inputs,
            max_new_tokens=frames,
            output_audio=True,
            streamer=clock,
            do_sample=True,
            temperature=0.9,
            top_k=50,
            depth_decoder_do_sample=True,
            depth_decoder_temperature=0.9,
            depth_decoder_top_k=50,
        )
    sync(device)
    total = time.perf_counter() - start
    frame_times = clock.times[1:]  # [0] is the prompt, handed over before any work
    per_frame = [b - a for a, b in itertools.pairwise(frame_times)]
    frame = statistics.median(per_frame) if per_frame else float("nan")
    first_frame = frame_times[0] - start
    audio_s = out[0].shape[-1] / 24_000 if out else 0.0
    return {
        "prefill": first_frame - frame,  # time to the first frame minus one frame's work
        "ttfa": total,  # audio exists only when generate() returns
        "frame": frame,
        "rtf": (total - (first_frame - frame)) / audio_s if audio_s else float("nan"),
        "frames": len(frame_times),
    }


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 frames, 1 repetition")
    parser.add_argument("--frames", type=int, default=None, help="reply length in frames (default 38, quick 6)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    parser.add_argument("--voice-seconds", type=float, default=30.0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    frames = args.frames or (6 if args.quick else 38)
    reps = args.reps or (1 if args.quick else 3)
    cfg = StreamConfig(first_chunk_frames=5, silence_dbfs=None, repeat_frames=None)
    if frames < cfg.first_chunk_frames:
        parser.error(f"--frames must be >= {cfg.first_chunk_frames} (the first chunk)")

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    t = time.perf_counter()
    speech = build(device)
    print(
        f"built full CSM-1B ({sum(p.numel() for p in speech.model.parameters()) / 1e9:.2f}B params) on "
        f"{device} in {time.perf_counter() - t:.1f}s; threads={torch.get_num_threads()}",
        flush=True,
    )

    rng = np.random.default_rng(0)
    voice_audio = (0.1 * rng.standard_normal(int(args.voice_seconds * 24_000))).astype(np.float32)
    turn_audio = [(0.1 * rng.standard_normal(int(s * 24_000))).astype(np.float32) for _, _, s in HISTORY]
    voice = Segment(0, VOICE_TEXT, speech.encode_audio(voice_audio))
    history = [
        Segment(spk, text, speech.encode_audio(a)) for (spk, text, _), a in zip(HISTORY, turn_audio, strict=True)
    ]
    _, plan = speech.plan_context(voice, history, TARGET, 0)
    conversation = [
        {"role": str(seg.speaker), "content": [{"type": "text", "text": seg.text}, {"type": "audio", "path": a}]}
        for seg, a in zip([voice, *history], [voice_audio, *turn_audio], strict=True)
    ] + [{"role": "0", "content": [{"type": "text", "text": TARGET}]}]
    inputs = speech.processor.apply_chat_template(conversation, tokenize=True, return_dict=True).to(device)
    print(
        f"prompt: {plan.prompt_positions} positions (voice {plan.voice_positions}, history "
        f"{plan.history_positions}, text {plan.text_positions}); reply {frames} frames; {reps} rep(s)",
        flush=True,
    )

    if not args.quick:  # warm-up (allocator, kernels) for both
        run_ours(speech, voice, history, cfg.first_chunk_frames, "warmup", cfg)
        run_generate(speech, inputs, 2)

    # interleaved, so that load from other processes on the machine hits both engines alike
    cold, cached, gen = [], [], []
    for i in range(reps):
        cold.append(run_ours(speech, voice, history, frames, f"cold-{i}", cfg))
        cached.append(run_ours(speech, voice, history, frames, "cold-0", cfg))
        gen.append(run_generate(speech, inputs, frames))
        print(
            f"  rep {i + 1}: ours cold ttfa {cold[-1]['ttfa']:.2f}s, cached ttfa {cached[-1]['ttfa']:.2f}s, "
            f"generate {gen[-1]['ttfa']:.2f}s",
            flush=True,
        )
    assert all(r["hit"] for r in cached) and not any(r["hit"] for r in cold)

    rows = [
        ("prefill (s)", median_of(cold, "prefill"), median_of(cached, "prefill"), median_of(gen, "prefill")),
        ("time to first audio (s)", median_of(cold, "ttfa"), median_of(cached, "ttfa"), median_of(gen, "ttfa")),
        (
            "ms per frame",
            1000 * median_of(cold, "frame"),
            1000 * median_of(cached, "frame"),
            1000 * median_of(gen, "frame"),
        ),
        ("real-time factor", median_of(cold, "rtf"), median_of(cached, "rtf"), median_of(gen, "rtf")),
    ]
    print(f"\n{'':26}{'ours cold':>12}{'ours cached':>13}{'generate()':>12}")
    for name, a, b, c in rows:
        print(f"{name:26}{a:12.3f}{b:13.3f}{c:12.3f}")
    ttfa_speedup = median_of(gen, "ttfa") / median_of(cached, "ttfa")
    frame_speedup = median_of(gen, "frame") / median_of(cached + cold, "frame")
    # generate() returns audio only at the end, so its TTFA is its whole call: project it to a typical reply
    projected = median_of(gen, "prefill") + 62 * median_of(gen, "frame")
    print(
        f"\n(generate() TTFA projected for a 5 s / 62-frame reply: {projected:.2f}s = "
        f"{projected / median_of(cached, 'ttfa'):.1f}x ours; measured above with {frames} frames)"
    )
    print(f"RESULT ttfa_speedup={ttfa_speedup:.2f} frame_speedup={frame_speedup:.2f}")


if __name__ == "__main__":
    main()
