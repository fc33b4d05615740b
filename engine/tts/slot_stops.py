"""Each slot's reply as it grows, and when it stops, decided on the device.

The batched frame loop must not wait for the device inside a frame (a CUDA graph can't, and every wait drains the
GPU's queue), so the stopping rules the solo loop applies on the host (`ReplyFrames.accept`: the end frame, a
stuck run of identical frames, the length cap) are applied here as tensor arithmetic on every slot at once, and
each frame a slot keeps is written into its own row of a codes buffer on the device. The service reads the
outcome (`read`: frames kept, why it stopped, the repeat run) only at chunk boundaries, when it decodes audio
anyway; a slot that stopped in between just idles: it keeps nothing more and its backbone position stays put.

A free slot is marked `FREE`: it idles the same way, so a batch padded to a fixed size (a CUDA graph's bucket)
can include it harmlessly.
"""

from __future__ import annotations

import torch

RUNNING, EOS, REPEAT, MAX_FRAMES, FREE = 0, 1, 2, 3, 4
STOP_REASONS = {EOS: "eos", REPEAT: "repeat", MAX_FRAMES: "max_frames"}


class SlotStops:
    """Per slot: the codes kept so far, how many, the current run of identical frames, and the stop code."""

    def __init__(self, slots: int, max_frames: int, num_codebooks: int, eos_code: int, device: torch.device) -> None:
        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.long, device=device)

        self.codes = zeros(slots, max_frames, num_codebooks)  # [slot, frame, codebook]: what each slot kept
        self.generated, self.run, self.limit, self.repeat_limit = zeros(slots), zeros(slots), zeros(slots), zeros(slots)
        self.stop = torch.full((slots,), FREE, dtype=torch.long, device=device)
        self.last = torch.full((slots, num_codebooks), -1, dtype=torch.long, device=device)  # no code is -1
        self.eos_code = eos_code
        self.max_frames = max_frames
        self._rows = torch.arange(slots, device=device)
        self._fields = (self.generated, self.run, self.limit, self.repeat_limit, self.stop, self.last)

    def start(self, slot: int, max_frames: int, repeat_frames: int | None) -> None:
        """A new reply of at most `max_frames` frames in `slot` (`repeat_frames` None: no repeat guard)."""
        if not 1 <= max_frames <= self.max_frames:
            raise ValueError(f"a reply of {max_frames} frames does not fit a slot of {self.max_frames}")
        self.generated[slot] = 0
        self.run[slot] = 0
        self.limit[slot] = max_frames
        self.repeat_limit[slot] = repeat_frames or 0
        self.last[slot] = -1
        self.stop[slot] = RUNNING

    def free(self, slot: int) -> None:
        self.stop[slot] = FREE

    def move(self, source: int, target: int) -> None:
        """Slot `source`'s reply into `target` (only the frames it kept are copied)."""
        kept = int(self.generated[source])
        self.codes[target, :kept] = self.codes[source, :kept]
        for field in self._fields:
            field[target] = field[source]

    def record(self, frames: torch.Tensor) -> torch.Tensor:
        """Apply the stopping rules to this frame step's frames (`[rows, num_codebooks]`, rows `[0, rows)`);
        returns which rows are still running after it (`[rows]` bool), all on the device.

        The same rules as `ReplyFrames.accept`: an end frame (all codes but the last equal `eos_code`) stops the
        reply and is not kept; otherwise the frame is kept, then a run of `repeat_limit` identical frames stops
        it ("repeat": the host drops the run when it reads it), then the length cap ("max_frames").
        """
        rows = frames.shape[0]
        stop = self.stop[:rows]
        running = stop == RUNNING
        end = (frames[:, :-1] == self.eos_code).all(dim=-1)
        keep = running & ~end
        generated = self.generated[:rows]
        index = generated.clamp(max=self.max_frames - 1)  # a stopped slot at its cap writes nothing out of bounds
        slot_rows = self._rows[:rows]
        current = self.codes[slot_rows, index]
        self.codes[slot_rows, index] = torch.where(keep.unsqueeze(1), frames, current)
        same = (frames == self.last[:rows]).all(dim=-1)
        run = torch.where(keep, torch.where(same, self.run[:rows] + 1, 1), self.run[:rows])
        self.run[:rows] = run
        self.last[:rows] = torch.where(keep.unsqueeze(1), frames, self.last[:rows])
        generated = generated + keep.long()
        self.generated[:rows] = generated
        repeat_limit = self.repeat_limit[:rows]
        decided = torch.where(
            end,
            EOS,
            torch.where(
                (repeat_limit > 0) & (run >= repeat_limit),
                REPEAT,
                torch.where(generated >= self.limit[:rows], MAX_FRAMES, RUNNING),
            ),
        )
        stop = torch.where(running, decided, stop)
        self.stop[:rows] = stop
        return stop == RUNNING

    def read(self, rows: int) -> list[tuple[int, int, int]]:
        """(frames kept, stop code, repeat run) of rows `[0, rows)`: the one read back, at a chunk boundary."""
        return [tuple(values) for values in torch.stack([self.generated[:rows], self.stop[:rows],
                                                         self.run[:rows]], dim=1).tolist()]  # fmt: skip
