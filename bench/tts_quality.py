"""What a weight mode costs in quality, and how close a frame comes to the machine's memory ceiling.

Quality: the fp32 model speaks a few frames (temperature 0.9, top-50); then each other mode is teacher-forced on
the same prompt and the same codes, and its logits for every codebook of every frame are compared with fp32's:
KL(fp32 ‖ mode) of the temperature-0.9 distributions and the overlap of the top-50 sets (`compare_logits`).
Random weights make flatter distributions than trained ones, so these figures bound the arithmetic's error, not
a listener's judgement.

Ceiling: one frame must read every backbone weight once, every depth-decoder weight once per depth step (31
steps), each codebook head once, and the backbone's keys and values of the whole prompt. That many bytes over
the GB/s of a plain matrix-vector product (measured here, same dtype) is the fastest a frame can be.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from engine.tts.batch_loop import BatchedFrameLoop
from engine.tts.csm import CsmSpeech
from engine.tts.sampling import SamplingConfig, make_generator
from engine.tts.types import GenerationStats, Segment
from engine.tts.weights import compare_logits


class _Recorder:
    """A token picker for `CsmFrameLoop.sample_frame` that keeps every codebook's logits and picks either by
    sampling (`codes` None) or the given frame's code (teacher forcing): the production frame, observed."""

    def __init__(self, speech: CsmSpeech) -> None:
        self._sample = SamplingConfig(seed=0).depth_picker(make_generator(0, speech.device))
        self.logits: list[torch.Tensor] = []
        self.forced: torch.Tensor | None = None  # this frame's codes to pick, when teacher-forcing

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        codebook = len(self.logits)
        self.logits.append(logits.float().cpu())
        if self.forced is None:
            return self._sample(logits)
        return self.forced[codebook : codebook + 1].to(logits.device)


def frame_logits(speech: CsmSpeech, voice: Segment, history: list[Segment], text: str, frames: int,
                 codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Logits `[frames, num_codebooks, vocab]` (float32) and the codes `[frames, num_codebooks]` they were run
    on: sampled here (seed 0) when `codes` is None, else teacher-forced."""
    made, out = [], []
    with torch.inference_mode():
        last_hidden, cache = speech._prefill(voice, history, text, 0, None, GenerationStats())
        recorder = _Recorder(speech)  # one sampler for the whole run: its random stream goes on frame to frame
        for index in range(frames):
            recorder.logits = []
            recorder.forced = None if codes is None else codes[index]
            frame = speech.loop.sample_frame(last_hidden, recorder, recorder)
            made.append(frame.cpu())
            out.append(torch.cat(recorder.logits))
            last_hidden = speech.loop.step(frame, cache)
    return torch.stack(out), torch.stack(made)


def quality(reference: tuple[torch.Tensor, torch.Tensor], candidate: torch.Tensor) -> dict[str, float]:
    """KL and top-50 overlap against the reference logits: mean over everything, and the worst codebook."""
    ref = reference[0]
    per_codebook = [compare_logits(ref[:, k], candidate[:, k]) for k in range(ref.shape[1])]
    kl, overlap = compare_logits(ref, candidate)
    return {"kl": kl, "top50": overlap, "worst_kl": max(k for k, _ in per_codebook),
            "worst_top50": min(o for _, o in per_codebook)}  # fmt: skip


def matvec_gbps(dtype: torch.dtype, device: torch.device, reps: int = 7) -> float:
    """GB/s of a plain matrix-vector product over a 512 MiB (fp32) matrix, far larger than any cache."""
    weight = torch.randn(16384, 8192, device=device).to(dtype)
    vector = torch.randn(8192, 1, device=device).to(dtype)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(weight, vector)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return weight.numel() * weight.element_size() / statistics.median(times[1:]) / 1e9


def frame_bytes(speech: CsmSpeech, prompt_positions: int) -> int:
    """Bytes one frame must read (see the module docstring), with the model's own parameter sizes."""
    model = speech.model

    def linear_bytes(module: nn.Module) -> int:
        return sum(m.weight.numel() * m.weight.element_size() for m in module.modules() if isinstance(m, nn.Linear))

    depth_steps = speech.num_codebooks - 1
    heads = model.depth_decoder.codebooks_head.weight
    config = speech.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = speech.loop.dtype.itemsize
    kv = prompt_positions * config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * element
    return (linear_bytes(model.backbone_model) + linear_bytes(model.lm_head)
            + depth_steps * linear_bytes(model.depth_decoder) + heads.numel() * heads.element_size() + kv)  # fmt: skip


def lockstep_ms(speech: CsmSpeech, voice: Segment, history: list[Segment], text: str, rows: int,
                frames: int = 3) -> float:  # fmt: skip
    """Median ms of one `BatchedFrameLoop.frame` for `rows` copies of the prompt (after one warm-up frame)."""
    batch = BatchedFrameLoop(speech.loop, max_batch=rows)
    times = []
    with torch.inference_mode():
        last_hidden, cache = speech._prefill(voice, history, text, 0, None, GenerationStats())
        for row in range(rows):
            batch.join(cache, SamplingConfig(seed=row), last_hidden)
        batch.frame(rows)
        for _ in range(frames):
            start = time.perf_counter()
            batch.frame(rows)
            if speech.device.type == "cuda":
                torch.cuda.synchronize(speech.device)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
