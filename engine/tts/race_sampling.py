"""Sampling for a batch of requests, each with its own settings and seed, with no host sync and no RNG state.

A token is drawn by the exponential race: `argmax(p / E)` with `E ~ Exponential(1)` independent per token picks
token i with probability p_i (gpt-fast samples this way). The exponentials come from a counter-based hash of
(the request's seed, its own draw counter, the token index) instead of a random generator, so that:
- a request's tokens depend only on its own seed and how far it has got: the same codes whether it runs alone or
  beside others, joins late or outlives its neighbours (as far as the logits are the same: exactly so in fp32 on
  the CPU; in bf16 on a GPU, kernels chosen by batch size can move the last bits and so, rarely, a pick);
- everything is plain tensor arithmetic on the device: nothing to read back, nothing a CUDA graph can't replay.
Per row: temperature (0 = greedy) and top-k (the top `max(top_k)` logits are ranked once; each row keeps its own
first k).
"""

from __future__ import annotations

import torch

# splitmix64's constants as signed 64-bit integers (torch has no unsigned 64-bit arithmetic; products wrap).
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB
_COUNTER = 0x632BE59BD9B4E019


def _shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's `>>` is arithmetic: it would copy the sign bit in)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer: every input bit reaches every output bit."""
    x = (x ^ _shift(x, 30)) * _MIX1
    x = (x ^ _shift(x, 27)) * _MIX2
    return x ^ _shift(x, 31)


def uniform_noise(seeds: torch.Tensor, counters: torch.Tensor, width: int) -> torch.Tensor:
    """`[rows, width]` float32 in (0, 1), a pure function of each row's seed, its counter and the column."""
    columns = torch.arange(width, device=seeds.device, dtype=torch.int64)
    # Hashed in stages, so no (seed, column) pair aliases another; offset first, as splitmix does (mix(0) is 0).
    row = _mix(_mix(seeds * _GOLDEN + _GOLDEN) + counters * _COUNTER)
    x = _mix(row.unsqueeze(1) + columns.unsqueeze(0) * _GOLDEN)
    return (_shift(x, 40).to(torch.float32) + 0.5) / float(1 << 24)


def race_pick(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    top_k: torch.Tensor,
    seeds: torch.Tensor,
    counters: torch.Tensor,
    max_top_k: int,
) -> torch.Tensor:
    """One token per row of `[rows, vocab]` logits; `[rows]` int64.

    `temperatures` `[rows]` (0: greedy), `top_k` `[rows]` (each ≤ `max_top_k`, a Python int so shapes stay fixed),
    `seeds` and `counters` `[rows]` int64 (advance a row's counter after every draw it makes).
    """
    logits = logits.float()
    greedy = torch.argmax(logits, dim=-1)
    k = min(max_top_k, logits.shape[-1])
    values, indices = torch.topk(logits, k, dim=-1)  # [rows, k], best first
    scaled = values / temperatures.clamp_min(1e-6).unsqueeze(1)
    ranks = torch.arange(k, device=logits.device).unsqueeze(0)
    scaled = scaled.masked_fill(ranks >= top_k.unsqueeze(1), float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    exponentials = -torch.log(uniform_noise(seeds, counters, k))
    choice = torch.argmax(probs / exponentials, dim=-1, keepdim=True)
    sampled = indices.gather(-1, choice).squeeze(-1)
    return torch.where(temperatures > 0, sampled, greedy)
