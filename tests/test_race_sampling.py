"""The batch sampler: the exponential race draws tokens as their probabilities say, each row by its own seed."""

from __future__ import annotations

import torch

from engine.tts.race_sampling import race_pick, uniform_noise


def pick(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 50, seed: int = 7, counter: int = 0,
         max_top_k: int = 50) -> torch.Tensor:  # fmt: skip
    rows = logits.shape[0]
    return race_pick(
        logits,
        torch.full((rows,), temperature),
        torch.full((rows,), top_k),
        torch.full((rows,), seed, dtype=torch.int64),
        torch.full((rows,), counter, dtype=torch.int64),
        max_top_k,
    )


def test_the_noise_is_uniform_and_a_function_of_seed_counter_and_column_only() -> None:
    seeds = torch.tensor([1, 2, 1], dtype=torch.int64)
    counters = torch.tensor([5, 5, 6], dtype=torch.int64)
    noise = uniform_noise(seeds, counters, 20_000)
    assert float(noise.min()) > 0 and float(noise.max()) < 1
    assert abs(float(noise.mean()) - 0.5) < 0.01 and abs(float(noise.var()) - 1 / 12) < 0.003
    again = uniform_noise(torch.tensor([2], dtype=torch.int64), torch.tensor([5], dtype=torch.int64), 20_000)
    assert torch.equal(again[0], noise[1])  # the same row alone or beside others
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
    # Neighbouring seeds must not share shifted noise (seed + column aliasing).
    assert not torch.equal(noise[0, 1:100], uniform_noise(seeds[1:2], counters[1:2], 100)[0, :99])


def test_draws_follow_the_softmax_of_the_logits() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -9.0]])
    expected = torch.softmax(logits[0], dim=-1)
    draws = 6000
    counts = torch.zeros(5)
    for counter in range(draws):
        counts[int(pick(logits, counter=counter, seed=3))] += 1
    assert torch.allclose(counts / draws, expected, atol=0.02)


def test_temperature_top_k_and_greedy_per_row() -> None:
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    best = set(torch.topk(logits[1], 5).indices.tolist())
    rows = race_pick(
        logits,
        torch.tensor([0.0, 1.0, 1.0]),  # row 0 greedy
        torch.tensor([50, 5, 50]),  # row 1 among its five best only
        torch.tensor([1, 2, 3], dtype=torch.int64),
        torch.tensor([0, 0, 0], dtype=torch.int64),
        50,
    )
    assert int(rows[0]) == int(torch.argmax(logits[0]))
    for counter in range(200):
        row1 = race_pick(logits[1:2], torch.tensor([1.0]), torch.tensor([5]), torch.tensor([2]),
                         torch.tensor([counter]), 50)  # fmt: skip
        assert int(row1) in best
    # A row's draw is the same alone as in a batch.
    alone = race_pick(logits[2:3], torch.tensor([1.0]), torch.tensor([50]), torch.tensor([3]), torch.tensor([0]), 50)
    assert int(alone) == int(rows[2])
