"""Benchmark: the CSM engine on the full CSM-1B architecture (random weights): alone against transformers'
`generate()`, its weight modes, and the batched speech service under load.

    .venv/bin/python bench/tts.py            # the full run (≈20 min on a 2-core CPU)
    .venv/bin/python bench/tts.py --quick    # a smoke run: few frames, one repetition, N = 1, 2

1. Alone, in the base mode (fp32; bf16 on CUDA), against `generate()`: same model, same inputs (a 30 s voice
   prompt + three history turns + the target text), same sampling (temperature 0.9, top-k 50), guards off so
   both make exactly `--frames` frames: prefill, time to first audio (ours: the first streamed chunk, cold =
   voice not cached, and cached; generate(): the whole call, it returns audio only at the end), ms per frame,
   real-time factor.
2. The memory ceiling: a frame's bytes (bench/tts_quality.py) over a plain matrix-vector product's GB/s, both
   measured here: the fastest a frame can be; `ceiling_fraction` = that over our base-mode frame.
3. Weight modes (fp32, bf16, int8 on a CPU): one frame's time side by side (1 and 2 threads), and quality against
   fp32 (KL at temperature 0.9 and top-50 overlap, teacher-forced on the same codes).
4. The speech service: N = 1, 2, 4, 8 simultaneous requests against the same requests one after another, in
   each mode: aggregate frames/s and each stream's ms per frame; then, in the mode that serves 8 best, the time
   to first audio of a request arriving while 7 others speak.
Ends with `RESULT ttfa_speedup=… frame_speedup=… ceiling_fraction=… batch8_speedup=… batch4_stream_slowdown=…
int8_frame_speedup=… int8_kl=…` (and which mode served 8 best).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers.generation.streamers import BaseStreamer

from bench.csm_setup import TARGET, build, conversation, sync, with_weights
from bench.tts_quality import frame_bytes, frame_logits, lockstep_ms, matvec_gbps, quality
from bench.tts_service import Load, ServiceBench
from engine.tts.csm import CsmSpeech
from engine.tts.sampling import SamplingConfig
from engine.tts.streaming_decode import StreamConfig

FRAME_HZ = 12.5


class FrameClock(BaseStreamer):
    """Records when generate() hands over each frame (its first call is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


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


def alone_vs_generate(speech: CsmSpeech, voice, history, audio, frames: int, reps: int, quick: bool, base: str):  # type: ignore[no-untyped-def]
    cfg = StreamConfig(first_chunk_frames=5, silence_dbfs=None, repeat_frames=None)
    conversation_turns = [
        {"role": str(seg.speaker), "content": [{"type": "text", "text": seg.text}, {"type": "audio", "path": a}]}
        for seg, a in zip([voice, *history], audio, strict=True)
    ] + [{"role": "0", "content": [{"type": "text", "text": TARGET}]}]
    inputs = speech.processor.apply_chat_template(conversation_turns, tokenize=True, return_dict=True)
    inputs = inputs.to(speech.device)
    if not quick:  # warm-up (allocator, kernels) for both
        run_ours(speech, voice, history, cfg.first_chunk_frames, "warmup", cfg)
        run_generate(speech, inputs, 2)
    # interleaved, so that load from other processes on the machine hits both engines alike
    cold, cached, gen = [], [], []
    for i in range(reps):
        cold.append(run_ours(speech, voice, history, frames, f"cold-{i}", cfg))
        cached.append(run_ours(speech, voice, history, frames, "cold-0", cfg))
        gen.append(run_generate(speech, inputs, frames))
        print(f"  rep {i + 1}: ours cold ttfa {cold[-1]['ttfa']:.2f}s, cached ttfa {cached[-1]['ttfa']:.2f}s, "
              f"generate {gen[-1]['ttfa']:.2f}s", flush=True)  # fmt: skip
    assert all(r["hit"] for r in cached) and not any(r["hit"] for r in cold)
    print(f"\n1. alone, {base}, {frames} frames, {reps} rep(s), medians")
    print(f"{'':26}{'ours cold':>12}{'ours cached':>13}{'generate()':>12}")
    for name, key, scale in (("prefill (s)", "prefill", 1), ("time to first audio (s)", "ttfa", 1),
                             ("ms per frame", "frame", 1000), ("real-time factor", "rtf", 1)):  # fmt: skip
        values = [scale * median_of(runs, key) for runs in (cold, cached, gen)]
        print(f"{name:26}{values[0]:12.3f}{values[1]:13.3f}{values[2]:12.3f}")
    return {
        "ttfa_speedup": median_of(gen, "ttfa") / median_of(cached, "ttfa"),
        "frame_speedup": median_of(gen, "frame") / median_of(cached + cold, "frame"),
        "frame_ms": 1000 * median_of(cached + cold, "frame"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few frames, one repetition, N = 1, 2")
    parser.add_argument("--frames", type=int, default=None, help="reply length alone (default 30, quick 6)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions alone (default 2, quick 1)")
    parser.add_argument("--voice-seconds", type=float, default=30.0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    quick = args.quick
    frames = args.frames or (6 if quick else 30)
    reps = args.reps or (1 if quick else 2)
    if frames < 5:
        parser.error("--frames must be >= 5 (the first chunk)")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    started = time.perf_counter()
    speech = build(device)
    threads = torch.get_num_threads()
    print(f"built full CSM-1B ({sum(p.numel() for p in speech.model.parameters()) / 1e9:.2f}B params) on {device} "
          f"in {time.perf_counter() - started:.0f}s; threads={threads}", flush=True)  # fmt: skip
    voice, history, audio = conversation(speech, args.voice_seconds)
    _, plan = speech.plan_context(voice, history, TARGET, 0)
    print(f"prompt: {plan.prompt_positions} positions (voice {plan.voice_positions}, history "
          f"{plan.history_positions}, text {plan.text_positions})", flush=True)  # fmt: skip
    base = "bf16" if device.type == "cuda" else "fp32"  # what build() makes: the weights generate() runs on
    result = alone_vs_generate(speech, voice, history, audio, frames, reps, quick, base)

    # 2. The memory ceiling
    gbps = matvec_gbps(speech.loop.dtype, device)
    need = frame_bytes(speech, plan.prompt_positions)
    ceiling_ms = 1000 * need / 1e9 / gbps
    print(f"\n2. memory ceiling: a frame reads {need / 1e9:.2f} GB; matrix-vector {gbps:.1f} GB/s -> "
          f"{ceiling_ms:.0f} ms; ours {result['frame_ms']:.0f} ms", flush=True)  # fmt: skip
    result["ceiling_fraction"] = ceiling_ms / result["frame_ms"]

    # 3. Weight modes: speed side by side, quality against fp32
    modes = {base: speech} if device.type == "cuda" else {"fp32": speech, "bf16": None, "int8": None}
    quality_frames = 2 if quick else 4
    reference = frame_logits(speech, voice, history, TARGET, quality_frames)
    figures: dict[str, dict[str, float]] = {}
    for mode in modes:
        engine = modes[mode] or with_weights(speech, mode)
        modes[mode] = engine
        figures[mode] = {"frame_ms": lockstep_ms(engine, voice, history, TARGET, 1)}
        if mode != base:
            figures[mode].update(quality(reference, frame_logits(engine, voice, history, TARGET, quality_frames,
                                                                 reference[1])[0]))  # fmt: skip
        if device.type == "cpu" and threads > 1:
            torch.set_num_threads(1)
            figures[mode]["frame_ms_1_thread"] = lockstep_ms(engine, voice, history, TARGET, 1)
            torch.set_num_threads(threads)
        print(f"  {mode}: {figures[mode]}", flush=True)
    print(f"\n3. weight modes (one frame alone; quality vs {base} over {quality_frames} frames x 32 codebooks)")
    print(f"{'mode':6}{'ms/frame':>10}{'1 thread':>10}{'vs ' + base:>9}{'KL':>10}{'worst KL':>10}{'top-50':>8}")
    for mode, row in figures.items():
        print(f"{mode:6}{row['frame_ms']:10.0f}{row.get('frame_ms_1_thread', float('nan')):10.0f}"
              f"{figures[base]['frame_ms'] / row['frame_ms']:8.2f}x{row.get('kl', 0.0):10.5f}"
              f"{row.get('worst_kl', 0.0):10.5f}{row.get('top50', 1.0):8.3f}")  # fmt: skip

    # 4. The speech service under load, in each mode
    sizes = (1, 2) if quick else (1, 2, 4, 8)
    loads: dict[str, Load] = {}
    for mode, engine in modes.items():
        bench = ServiceBench(engine, voice, history, max_batch=max(sizes))  # type: ignore[arg-type]
        bench.measure((1,), 5, sequential=1)  # warm-up: kernels, and the voice's prefix cache filled
        # fp32 is the slow mode on a CPU: only N = 1 and the largest, to keep the run inside 25 minutes
        mode_sizes = (sizes[0], sizes[-1]) if mode == "fp32" and device.type == "cpu" else sizes
        service_frames = 6 if quick else (12 if mode == "fp32" else 16)
        loads[mode] = bench.measure(mode_sizes, service_frames, sequential=2)
        print(f"  {mode}: {loads[mode]}", flush=True)
        bench.close()
    best = max(loads, key=lambda mode: sizes[-1] * 1000 / loads[mode].stream_ms[sizes[-1]])
    bench = ServiceBench(modes[best], voice, history, max_batch=8)  # type: ignore[arg-type]
    bench.measure((1,), 5, sequential=1)
    bench.ttfa(loads[best], speaking=1 if quick else 7)
    bench.close()
    print(
        "\n4. the speech service: a stream's ms per frame with N in flight (aggregate frames/s), "
        "against one after another"
    )
    print(f"{'mode':6}{'alone fr/s':>11}" + "".join(f"{'N=' + str(n):>18}" for n in sizes[1:]))
    for mode, load in loads.items():
        cells = "".join(f"{load.stream_ms[n]:7.0f} ms {n * 1000 / load.stream_ms[n]:5.2f}/s " if n in load.stream_ms
                        else f"{'-':>18}" for n in sizes[1:])  # fmt: skip
        print(f"{mode:6}{load.sequential_fps:11.2f}  {cells}")
    waiting = 1 if quick else 7
    print(f"mode serving {sizes[-1]} best: {best}; time to first audio alone {loads[best].ttfa_alone_s:.2f}s, "
          f"arriving while {waiting} speak {loads[best].ttfa_busy_s:.2f}s")  # fmt: skip
    top = sizes[-1]
    mid = 4 if 4 in loads[best].stream_ms else top
    result[f"batch{top}_speedup"] = loads[best].speedup(top)
    result[f"batch{mid}_stream_slowdown"] = loads[best].slowdown(mid)
    result[f"{base}_batch{top}_speedup"] = loads[base].speedup(top)
    if "int8" in figures:
        result["int8_frame_speedup"] = figures["fp32"]["frame_ms"] / figures["int8"]["frame_ms"]
        result["int8_kl"] = figures["int8"]["kl"]
    result["busy_ttfa_s"] = loads[best].ttfa_busy_s
    del result["frame_ms"]
    print(f"\nfull run: {(time.perf_counter() - started) / 60:.1f} min")
    print("RESULT " + " ".join(f"{key}={value:.4g}" for key, value in result.items()) + f" batch_mode={best}")


if __name__ == "__main__":
    main()
