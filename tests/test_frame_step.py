"""The batched frame step as the speech service runs it: whole on the device, in fixed shapes.

- Each row's codes from `frame()` (sampling, the stopping rules on the device, the backbone step) equal the solo
  loop's, with the static (full-budget, CUDA-graph-ready) attention and the trimmed one alike.
- The device's stopping rules (`SlotStops`) decide exactly as the host's (`ReplyFrames.accept`).
- The step compiles as one graph (no graph break) and is not recompiled as positions advance and requests join
  and leave: what capturing it as a CUDA graph per batch size needs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.tts.batch_loop import BatchedFrameLoop
from engine.tts.csm import CsmSpeech
from engine.tts.reply_frames import ReplyFrames
from engine.tts.sampling import SamplingConfig
from engine.tts.slot_stops import FREE, RUNNING, STOP_REASONS, SlotStops
from engine.tts.streaming_decode import StreamConfig
from tests.test_tts_batch import prefill, solo

GREEDY_CONFIG = SamplingConfig.greedy()


def run_frames(speech: CsmSpeech, *, static: bool, frames: int) -> list[torch.Tensor]:
    """Three prompts of mixed lengths through `frame()`; each row's kept codes."""
    batch = BatchedFrameLoop(speech.loop, max_batch=4, static=static)
    with torch.inference_mode():
        for prompt in range(3):
            last_hidden, cache = prefill(speech, prompt)
            batch.join(cache, GREEDY_CONFIG, last_hidden, max_frames=frames + 5)  # type: ignore[arg-type]
        for _ in range(frames):
            batch.frame(3)
        return [batch.stops.codes[row, :frames].clone() for row in range(3)]


@pytest.mark.parametrize("static", [False, True])
def test_frame_makes_each_rows_solo_codes(tiny_speech: CsmSpeech, static: bool) -> None:
    made = run_frames(tiny_speech, static=static, frames=6)
    for prompt in range(3):
        assert torch.equal(made[prompt], torch.stack(solo(tiny_speech, prompt, 6))), prompt


def host_outcome(frames: list[list[int]], max_frames: int, repeat: int | None) -> tuple[int, int, str | None]:
    reply = ReplyFrames(lambda codes: torch.zeros(0), StreamConfig(repeat_frames=repeat), max_frames, len(frames[0]),
                        torch.device("cpu"), eos_code=0)  # fmt: skip
    for values in frames:
        if not reply.accept(torch.tensor(values), values):
            break
    return reply.produced, reply.repeats.run, reply.stop


@pytest.mark.parametrize(
    ("sequence", "max_frames", "repeat"),
    [
        ([[1, 2, 3], [4, 5, 6], [0, 0, 9], [7, 7, 7]], 10, 4),  # an end frame (its last code is not checked)
        ([[1, 2, 3], [4, 5, 6], [4, 5, 6], [4, 5, 6], [1, 1, 1]], 10, 3),  # a stuck run
        ([[1, 2, 3], [4, 5, 6], [4, 5, 6], [4, 5, 6], [1, 1, 1]], 10, None),  # no guard: runs on
        ([[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 1, 1]], 3, 3),  # the length cap
        ([[5, 5, 5], [5, 5, 5], [5, 5, 5]], 3, 3),  # a repeat and the cap on the same frame: repeat first
    ],
)
def test_device_stopping_rules_decide_as_the_host_does(
    sequence: list[list[int]], max_frames: int, repeat: int | None
) -> None:
    stops = SlotStops(slots=3, max_frames=16, num_codebooks=3, eos_code=0, device=torch.device("cpu"))
    stops.start(1, max_frames, repeat)  # row 0 stays free; row 2 runs beside it on other frames
    stops.start(2, 16, 2)
    for values in sequence:
        frames = torch.tensor([[9, 9, 9], values, [3, 2, 1]])
        stops.record(frames)
    generated, stop, run = stops.read(3)[1]
    produced, host_run, host_stop = host_outcome(sequence, max_frames, repeat)
    assert (generated, STOP_REASONS.get(stop)) == (produced, host_stop)
    if host_stop == "repeat":
        assert run == host_run
    kept = [values for values in sequence[:generated]]
    assert stops.codes[1, :generated].tolist() == kept
    assert stops.read(3)[0][1] == FREE and stops.generated[0] == 0  # a free slot keeps nothing
    assert stops.read(3)[2][1] != RUNNING  # its own repeat guard (2 identical frames) stopped the neighbour


def test_the_frame_step_compiles_whole_and_never_recompiles(tiny_speech: CsmSpeech) -> None:
    graphs: list[torch.fx.GraphModule] = []

    def count(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    batch = BatchedFrameLoop(tiny_speech.loop, max_batch=4, static=True)
    frame = torch.compile(batch.frame, backend=count, fullgraph=True)  # a graph break raises

    def join(prompt: int) -> None:
        last_hidden, cache = prefill(tiny_speech, prompt)
        batch.join(cache, GREEDY_CONFIG, last_hidden)  # type: ignore[arg-type]

    try:
        with torch._dynamo.config.patch(error_on_recompile=True), torch.inference_mode():  # a recompile raises
            for prompt in range(3):
                join(prompt)
            for _ in range(6):
                frame(3)
            made = [batch.stops.codes[row, :6].clone() for row in range(3)]
            # Requests leave and join a batch compiled for (a bucket of) 3 rows; positions go on.
            batch.leave(1)  # prompt 2's slot moves into row 1
            join(1)  # prompt 1 again, from the start, in row 2
            for _ in range(3):
                frame(3)
            batch.leave(0)  # the newcomer moves into row 0
            for _ in range(3):
                frame(3)  # the third row is a free slot, padding the batch
            moved, rejoined = batch.stops.codes[1, :12].clone(), batch.stops.codes[0, :6].clone()
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1
    for prompt in range(3):
        assert torch.equal(made[prompt], torch.stack(solo(tiny_speech, prompt, 6))), prompt
    assert torch.equal(moved, torch.stack(solo(tiny_speech, 2, 12)))
    assert torch.equal(rejoined, torch.stack(solo(tiny_speech, 1, 6)))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.fixture(scope="module")
def cuda_speech(tiny_csm_dir):  # type: ignore[no-untyped-def]
    return CsmSpeech.load(str(tiny_csm_dir), device="cuda", weights="fp32")


@cuda
def test_cuda_graphs_replay_the_eager_frame_step(cuda_speech: CsmSpeech) -> None:
    """Replayed graphs make the codes the same step makes eagerly in the same shapes (a bucket of 4 rows)."""
    from engine.tts.frame_graphs import FrameGraphs

    def three_prompts(batch: BatchedFrameLoop, step) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
        with torch.inference_mode():
            for prompt in range(3):
                last_hidden, cache = prefill(cuda_speech, prompt)
                batch.join(cache, GREEDY_CONFIG, last_hidden, max_frames=11)  # type: ignore[arg-type]
            for _ in range(6):
                step(3)
            batch.leave(0)  # a slot moves under the captured graph
            for _ in range(3):
                step(2)
            return [batch.stops.codes[row, :9].clone() for row in range(2)]

    eager_batch = BatchedFrameLoop(cuda_speech.loop, max_batch=4, static=True)
    eager = three_prompts(eager_batch, lambda rows: eager_batch.frame(4 if rows > 2 else 2))
    batch = BatchedFrameLoop(cuda_speech.loop, max_batch=4, static=True)
    graphs = FrameGraphs(batch)
    with torch.inference_mode():
        graphs.capture()
    assert graphs.buckets == [1, 2, 4]
    replayed = three_prompts(batch, graphs.frame)
    for row in range(2):
        assert torch.equal(replayed[row], eager[row]), row


@cuda
async def test_the_service_with_cuda_graphs_speaks_each_request(cuda_speech: CsmSpeech) -> None:
    """Through the service, on replayed graphs. Not compared bit for bit with the solo loop: on a GPU the batch's
    matrix kernels differ from a single row's in the last bits, which can flip a near-tie greedy pick of the tiny
    random model; most frames must still agree."""
    import asyncio

    from engine.tts.speech_service import SpeechService
    from tests.test_speech_service import alone, listen, request

    service = SpeechService(cuda_speech, max_batch=4, cuda_graphs=True)
    try:
        results = await asyncio.gather(*(listen(service, request(cuda_speech, prompt, 20)) for prompt in range(3)))
        assert service.graphs is not None  # captured, not fallen back to eager
        assert service.stats.largest_batch >= 2
    finally:
        service.close()
    for prompt, (codes, audio) in enumerate(results):
        solo_codes = alone(cuda_speech, prompt, 20)[0]
        assert codes.shape == solo_codes.shape and np.isfinite(audio).all()
        agree = (codes == solo_codes).all(dim=1).float().mean()
        assert agree >= 0.9, (prompt, float(agree))
