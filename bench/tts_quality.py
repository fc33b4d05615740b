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


def frame_logits(speech: CsmSpeech, voice: Segment, history: list[Segment], text: str, frames: int,
                 codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Logits `[frames, num_codebooks, vocab]` (float32) and the codes `[frames, num_codebooks]` they were run
    on: sampled here (seed 0) when `codes` is None, else teacher-forced."""
    loop = speech.loop
    picker = SamplingConfig(seed=0).depth_picker(make_generator(0, speech.device))
    made, out = [], []
    with torch.inference_mode():
        last_hidden, cache = speech._prefill(voice, history, text, 0, None, GenerationStats())
        depth_cache = loop._depth_cache
        for index in range(frames):
            logits = [speech.model.lm_head(last_hidden)[:, -1, : loop.valid_codes]]
            code = picker(logits[0]) if codes is None else codes[index, :1].to(speech.device)
            frame = [code]
            depth_cache.reset(1)
            hidden = torch.cat([last_hidden, loop.depth.embed_tokens(code.view(1, 1))], dim=1)
            hidden = loop._depth_forward(hidden, depth_cache, start=0, mask=loop._first_mask(hidden))
            for k in range(1, loop.num_codebooks):
                logits.append(loop.depth_logits(k, hidden[:, -1, :]))
                code = picker(logits[-1]) if codes is None else codes[index, k : k + 1].to(speech.device)
                frame.append(code)
                if k < loop.num_codebooks - 1:
                    embeds = loop.depth.embed_tokens((code + k * loop.depth_vocab_size).view(1, 1))
                    hidden = loop._depth_forward(embeds, depth_cache, start=k + 1, mask=None)
            codes_now = torch.cat(frame)
            made.append(codes_now.cpu())
            out.append(torch.cat(logits).float().cpu())
            last_hidden = loop.step(codes_now, cache)
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
