"""Several CSM requests stepped together (the groundwork of the batched speech service) on the tiny model.

fp32 greedy: each request's frames in a batch of mixed prompt lengths equal the frames it gets alone, with
requests joining and leaving mid-stream (a leaving request's slot is taken by the last active one). Sampled: a
request keeps its own settings and seed, so it makes the same frames in any batch.
"""

from __future__ import annotations

import pytest
import torch

from engine.tts.batch_loop import BatchedFrameLoop
from engine.tts.csm import CsmSpeech
from engine.tts.sampling import SamplingConfig, TokenPicker
from engine.tts.types import GenerationStats, Segment

GREEDY = TokenPicker(False, 0.9, 50, None)
GREEDY_CONFIG = SamplingConfig.greedy()

PROMPTS = [
    ([], "Hello."),
    ([Segment(1, "How are you doing today, my friend?")], "I am fine, thank you for asking."),
    ([Segment(1, "Hi."), Segment(0, "Hello there."), Segment(1, "What is the weather like?")], "Sunny."),
]


def prefill(speech: CsmSpeech, prompt: int) -> tuple[torch.Tensor, object]:
    history, text = PROMPTS[prompt]
    return speech._prefill(None, history, text, 0, None, GenerationStats())


def solo(speech: CsmSpeech, prompt: int, frames: int) -> list[torch.Tensor]:
    """The production solo loop's frames for a prompt, without stopping rules."""
    with torch.inference_mode():
        last_hidden, cache = prefill(speech, prompt)
        made = []
        for _ in range(frames):
            frame = speech.loop.sample_frame(last_hidden, GREEDY, GREEDY)
            made.append(frame)
            last_hidden = speech.loop.step(frame, cache)
    return made


def test_a_batch_of_mixed_prompts_makes_each_requests_own_frames(tiny_speech: CsmSpeech) -> None:
    batch = BatchedFrameLoop(tiny_speech.loop, max_batch=4)
    with torch.inference_mode():
        hidden = []
        for prompt in range(3):
            last_hidden, cache = prefill(tiny_speech, prompt)
            assert batch.join(cache, GREEDY_CONFIG) == prompt  # type: ignore[arg-type]
            hidden.append(last_hidden)
        assert len({int(length) for length in batch.cache.lengths[:3]}) == 3  # mixed prompt lengths
        last = torch.cat(hidden)
        made: list[list[torch.Tensor]] = [[], [], []]
        for _ in range(6):
            frames = batch.sample_frames(last)
            for row in range(3):
                made[row].append(frames[row])
            last = batch.step(frames)
    for prompt in range(3):
        expected = solo(tiny_speech, prompt, 6)
        assert all(torch.equal(a, b) for a, b in zip(made[prompt], expected, strict=True)), prompt


def test_requests_join_and_leave_mid_stream_without_disturbing_the_others(tiny_speech: CsmSpeech) -> None:
    batch = BatchedFrameLoop(tiny_speech.loop, max_batch=3)
    owner: list[int] = []  # prompt of each active row
    hidden: list[torch.Tensor] = []
    made: dict[int, list[torch.Tensor]] = {0: [], 1: [], 2: []}

    def join(prompt: int) -> None:
        last_hidden, cache = prefill(tiny_speech, prompt)
        assert batch.join(cache, GREEDY_CONFIG) == len(owner)  # type: ignore[arg-type]
        owner.append(prompt)
        hidden.append(last_hidden)

    def leave(prompt: int) -> None:
        row = owner.index(prompt)
        moved = batch.leave(row)  # a cancelled request (barge-in) or one that finished
        if moved is not None:
            owner[row], hidden[row] = owner[moved], hidden[moved]
        owner.pop()
        hidden.pop()

    def frames(count: int) -> None:
        for _ in range(count):
            last = torch.cat(hidden)
            picked = batch.sample_frames(last)
            for row, prompt in enumerate(owner):
                made[prompt].append(picked[row])
            stepped = batch.step(picked)
            hidden[:] = list(stepped.split(1))

    with torch.inference_mode():
        join(0)
        join(1)
        frames(3)
        join(2)  # arrives while the others speak
        frames(2)
        leave(0)  # the first row leaves: the last one moves into its slot
        frames(3)
        leave(2)
        frames(1)
    assert batch.active == 1
    for prompt, count in ((0, 5), (1, 9), (2, 5)):
        expected = solo(tiny_speech, prompt, count)
        assert all(torch.equal(a, b) for a, b in zip(made[prompt], expected, strict=True)), prompt


def test_a_full_batch_and_a_prompt_too_long_for_a_slot_are_refused(tiny_speech: CsmSpeech) -> None:
    batch = BatchedFrameLoop(tiny_speech.loop, max_batch=1, max_positions=8)
    with torch.inference_mode():
        _, cache = prefill(tiny_speech, 2)
        with pytest.raises(ValueError, match="does not fit a slot of 8"):
            batch.join(cache, GREEDY_CONFIG)  # type: ignore[arg-type]
        small = BatchedFrameLoop(tiny_speech.loop, max_batch=1)
        small.join(prefill(tiny_speech, 0)[1], GREEDY_CONFIG)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="every slot is in use"):
            small.join(prefill(tiny_speech, 1)[1], GREEDY_CONFIG)  # type: ignore[arg-type]


def test_a_sampled_request_makes_the_same_frames_alone_and_beside_others(tiny_speech: CsmSpeech) -> None:
    def run(mine: SamplingConfig, neighbours: list[tuple[int, SamplingConfig]], frames: int) -> list[torch.Tensor]:
        batch = BatchedFrameLoop(tiny_speech.loop, max_batch=4)
        hidden = []
        for prompt, config in [(1, mine), *neighbours]:
            last_hidden, cache = prefill(tiny_speech, prompt)
            batch.join(cache, config)  # type: ignore[arg-type]
            hidden.append(last_hidden)
        last = torch.cat(hidden)
        made = []
        for _ in range(frames):
            picked = batch.sample_frames(last)
            made.append(picked[0])
            last = batch.step(picked)
        return made

    warm = SamplingConfig(temperature=0.9, top_k=50, seed=1234)
    with torch.inference_mode():
        alone = run(warm, [], 6)
        beside = run(warm, [(0, SamplingConfig(seed=5)), (2, SamplingConfig(temperature=0.5, top_k=10, seed=9))], 6)
        reseeded = run(SamplingConfig(temperature=0.9, top_k=50, seed=4321), [], 6)
    assert all(torch.equal(a, b) for a, b in zip(alone, beside, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(alone, reseeded, strict=True))  # the seed matters
