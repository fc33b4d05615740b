"""Token selection for the backbone (codebook 0) and the depth decoder (codebooks 1..N-1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling options. Defaults follow the CSM reference: temperature 0.9, top-k 50 for every codebook.

    `depth_*` override the depth decoder's values (None: same as the backbone). `do_sample=False` is greedy
    decoding everywhere (used for parity with `generate(do_sample=False, depth_decoder_do_sample=False)`).
    `seed` makes sampling reproducible (a private generator; the global RNG is left alone).
    """

    temperature: float = 0.9
    top_k: int = 50
    depth_temperature: float | None = None
    depth_top_k: int | None = None
    do_sample: bool = True
    seed: int | None = None

    @classmethod
    def greedy(cls) -> SamplingConfig:
        return cls(do_sample=False)

    def backbone_picker(self, generator: torch.Generator | None) -> TokenPicker:
        return TokenPicker(self.do_sample, self.temperature, self.top_k, generator)

    def depth_picker(self, generator: torch.Generator | None) -> TokenPicker:
        temperature = self.temperature if self.depth_temperature is None else self.depth_temperature
        top_k = self.top_k if self.depth_top_k is None else self.depth_top_k
        return TokenPicker(self.do_sample, temperature, top_k, generator)


class TokenPicker:
    """Picks one token id per row of `[batch, vocab]` logits; returns `[batch]` int64 on the logits' device.

    Stays on the device (no host sync), so frames can be produced without waiting for the GPU.
    """

    def __init__(self, do_sample: bool, temperature: float, top_k: int, generator: torch.Generator | None):
        # temperature 0 means greedy, as in most sampling APIs
        self.greedy = not do_sample or temperature <= 0.0
        self.temperature = temperature
        self.top_k = top_k
        self.generator = generator

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.greedy:
            return torch.argmax(logits, dim=-1)
        logits = logits / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            # sample among the k best only: softmax over k values instead of masking the whole vocabulary
            values, indices = torch.topk(logits, self.top_k, dim=-1)
            probs = torch.softmax(values, dim=-1)
            choice = torch.multinomial(probs, 1, generator=self.generator)
            return indices.gather(-1, choice).squeeze(-1)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
