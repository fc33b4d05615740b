"""The batched frame step captured as CUDA graphs, one per batch-size bucket, and replayed.

In eager mode a CSM frame launches thousands of small kernels (a backbone step and 31 depth-decoder steps, each
a dozen layers), and on a GPU the launches, not the arithmetic, set the pace. The step of `BatchedFrameLoop`
(`static=True`) has shapes fixed by its row count alone and never waits for the device, so it can be recorded
once and replayed as one launch. Batches are padded up to a bucket (1, 2, 4, 8, …): the padding rows are free
slots, which idle harmlessly (see `SlotStops`), so a handful of graphs serve every batch size.

Capture runs frames on every slot, so it happens once, before any request holds a slot; every later `join`
resets the state a slot's reply depends on. All graphs share one memory pool: only one replays at a time.
"""

from __future__ import annotations

import logging

import torch

from .batch_loop import BatchedFrameLoop

log = logging.getLogger(__name__)


def buckets_for(slots: int) -> list[int]:
    """Powers of two up to `slots`, and `slots` itself."""
    sizes = [1 << power for power in range(slots.bit_length()) if 1 << power < slots]
    return [*sizes, slots]


class FrameGraphs:
    """`frame(rows)` replays the smallest captured bucket that holds `rows` rows."""

    def __init__(self, batch: BatchedFrameLoop, buckets: list[int] | None = None) -> None:
        if batch.loop.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        if not batch.static:
            raise ValueError("CUDA graphs need the batch's static (fixed-shape) frame step")
        self.batch = batch
        self.buckets = sorted(buckets or buckets_for(batch.slots))
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def capture(self) -> None:
        """Record every bucket's frame step; only while no slot is in use."""
        if self.batch.active:
            raise RuntimeError("capture needs every slot free: it runs frames on all of them")
        device = self.batch.loop.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture needs (kernels chosen, handles made)
            for bucket in self.buckets:
                for _ in range(2):
                    self.batch.frame(bucket)
        torch.cuda.current_stream(device).wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        for bucket in reversed(self.buckets):  # the largest first: the shared pool grows to its size once
            graph = torch.cuda.CUDAGraph()
            # thread_local: the speech worker (clip encodes) and Whisper may use the GPU from other threads
            # meanwhile; "global" would make their work invalidate this capture.
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                self.batch.frame(bucket)
            self._graphs[bucket] = graph
        torch.cuda.synchronize(device)
        log.info("speech frame step captured as CUDA graphs for batches of %s", self.buckets)

    def bucket(self, rows: int) -> int:
        for size in self.buckets:
            if size >= rows:
                return size
        raise ValueError(f"{rows} rows exceed the largest bucket ({self.buckets[-1]})")

    def frame(self, rows: int) -> None:
        """One frame for the first `rows` rows (and the free slots padding them to a bucket)."""
        self._graphs[self.bucket(rows)].replay()
