"""One speech service: every sentence in flight, from every chat, in one CSM frame loop.

A single thread owns the model's frame loop. Between frames it takes in new requests (prefilling each, the voice
from the prefix cache, then copying its cache into a slot) and lets go of the ones that stopped (end frame,
length cap, repeat or silence guard) or were cancelled (barge-in). Every frame it steps all active requests
together (`BatchedFrameLoop.frame`: one backbone step, one depth-decoder pass, the stopping rules, all on the
device; on CUDA replayed as a captured graph, `FrameGraphs`) without reading anything back. Only when some
request has a chunk due does it read the slots' state (frames kept, stopped or not: one small read) and decode
the due windows (on CUDA in one Mimi call, on a CPU one by one, which is faster there), handing each listener its
chunk. Each request keeps its own sampling settings and seed, budget plan and stopping rules (`ReplyFrames`, the
same as the solo loop's).

A newcomer's prompt is prefilled `prefill_chunk` positions at a time, one chunk between two frames, so a long
prompt never holds up audio that is already playing by more than one chunk.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from .batch_decode import decode_due
from .batch_loop import BatchedFrameLoop
from .csm import CsmSpeech, SpeechRequest
from .frame_graphs import FrameGraphs
from .reply_frames import ReplyFrames
from .slot_stops import STOP_REASONS
from .types import GenerationStats

log = logging.getLogger(__name__)

_DONE = object()


@dataclass(eq=False)
class _InFlight:
    """A request as the service thread sees it, and the way back to its listener."""

    request: SpeechRequest
    deliver: Callable[[object], None]  # thread-safe: a chunk, an exception, or _DONE
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    reply: ReplyFrames | None = None
    stats: GenerationStats = field(default_factory=GenerationStats)
    codes: torch.Tensor | None = None  # what the listener got, once finished
    stop_reason: str | None = None
    unread: int = 0  # frames made since the slot's state was last read

    def finish(self, reason: str, error: BaseException | None = None) -> None:
        """Tell the listener it has ended; whatever fails here (a broken device, a closed event loop), the
        request counts as finished, so nobody waits for it forever."""
        if self.finished.is_set():
            return
        try:
            if self.reply is not None:
                self.codes = self.reply.kept_codes()
            self.stop_reason = reason
            self.stats.total_s = time.perf_counter() - self.request.t0
        finally:
            try:
                # Each listener its own exception (one object raised in several tasks would pile up tracebacks).
                told: object = _DONE
                if error is not None:
                    told = RuntimeError(f"speech failed: {error}")
                    told.__cause__ = error
                self.deliver(told)
            except Exception:  # the listener's event loop has closed: nobody is listening any more
                log.debug("a finished request's listener was gone")
            self.finished.set()


@dataclass
class ServiceStats:
    """What the service has done: frame steps, how many requests each served, and how long they took."""

    steps: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # requests in a step -> steps with that many
    step_seconds: dict[int, list[float]] = field(default_factory=dict)  # requests in a step -> its durations

    @property
    def largest_batch(self) -> int:
        return max(self.batch_sizes, default=0)


class SpeechService:
    """Runs every request in one frame loop on its own thread; `stream()` is the asyncio side."""

    def __init__(
        self, speech: CsmSpeech, *, max_batch: int = 8, prefill_chunk: int = 64, cuda_graphs: bool = False
    ) -> None:
        self.speech = speech
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        graphs = cuda_graphs and speech.device.type == "cuda"
        self.batch = BatchedFrameLoop(
            speech.loop, max_batch=max_batch, max_positions=speech.max_positions, static=graphs
        )
        self.graphs = FrameGraphs(self.batch) if graphs else None
        # Mimi decodes every due window in one call on CUDA; on a CPU one by one measured faster (see `_decode`).
        self._decode_together = speech.device.type == "cuda"
        self.stats = ServiceStats()
        self._incoming: queue.SimpleQueue[_InFlight | None] = queue.SimpleQueue()
        self._active: list[_InFlight] = []  # in row order
        self._waiting: list[_InFlight] = []  # taken in, no free slot yet
        # Holding a slot, prompt still going through the backbone a chunk at a time.
        self._prefilling: list[tuple[_InFlight, Generator[None, None, tuple[torch.Tensor, object]]]] = []
        self._closed = False
        self._lock = threading.Lock()  # a request is either queued before close() or refused
        self._thread = threading.Thread(target=self._run, name="alan-speech-service", daemon=True)
        self._thread.start()

    # The asyncio side ----------------------------------------------------------------------------------

    async def stream(
        self, request: SpeechRequest, on_finish: Callable[[torch.Tensor, str], None]
    ) -> AsyncIterator[np.ndarray]:
        """The request's audio chunks as they are made. Closing this early (barge-in) cancels the request at the
        next frame without disturbing the others; `on_finish(codes, reason)` gets the codes of what was
        delivered before this returns, however it ends."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[object] = asyncio.Queue()
        flight = _InFlight(request, lambda item: loop.call_soon_threadsafe(chunks.put_nowait, item))
        with self._lock:
            if self._closed or not self._thread.is_alive():
                raise RuntimeError("the speech service has stopped")
            self._incoming.put(flight)
        ended = False
        try:
            while True:
                item = await self._next(chunks, flight)
                if item is _DONE:
                    ended = True
                    break
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                yield item  # type: ignore[misc]
        finally:
            flight.cancelled.set()
            # The thread lets go of the request at its next frame, and says so; the caller reads what was
            # delivered right after this.
            cancelled = False
            while not ended:
                try:
                    item = await self._next(chunks, flight)
                    ended = item is _DONE or isinstance(item, BaseException)
                except asyncio.CancelledError:
                    cancelled = True  # passed on once the thread is done, not swallowed
            if flight.codes is not None:
                on_finish(flight.codes, flight.stop_reason or "cancelled")
            if cancelled:
                raise asyncio.CancelledError

    async def _next(self, chunks: asyncio.Queue[object], flight: _InFlight) -> object:
        """The next thing for this listener; an error if the service's thread died without a word."""
        while True:
            try:
                return await asyncio.wait_for(chunks.get(), timeout=1.0)
            except TimeoutError:
                if not self._thread.is_alive() and chunks.empty():
                    flight.finished.set()
                    return RuntimeError("the speech service stopped")

    def close(self) -> None:
        """Stop taking requests; those in flight or queued end (cancelled) and the thread exits."""
        with self._lock:
            self._closed = True
            self._incoming.put(None)

    def join(self, timeout: float) -> bool:
        """Wait for the thread to finish its frame and exit (after `close`); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # The frame loop ------------------------------------------------------------------------------------

    def _capture(self) -> None:
        """Record the frame step as CUDA graphs before any request holds a slot; eager frames if that fails."""
        if self.graphs is None:
            return
        try:
            with torch.inference_mode():
                self.graphs.capture()
        except Exception as error:  # an old driver, memory: slower, not broken
            log.warning("CUDA graphs could not be captured (%s); frames run eagerly", error)
            self.graphs = None
            self.batch.static = False  # eager frames read only as far as the longest slot

    def _run(self) -> None:
        try:
            self._capture()
            while not self._closed:
                try:
                    self._take_in(block=not self._active and not self._prefilling)
                    with torch.inference_mode():
                        if self._prefilling:
                            self._prefill_chunk()
                        if self._active:
                            self._frame()
                except Exception as error:  # a model failure: every request in flight hears of it, and the loop
                    log.exception("speech service frame failed")  # goes on for the next ones
                    while self._active:
                        self._drop_last(error)
        finally:
            # However the loop ends, nobody is left waiting: in flight, waiting for a slot, or still queued.
            leftovers = [*self._active, *(flight for flight, _ in self._prefilling), *self._waiting]
            while True:
                try:
                    queued = self._incoming.get_nowait()
                except queue.Empty:
                    break
                if queued is not None:
                    leftovers.append(queued)
            for flight in leftovers:
                flight.finish("cancelled")

    def _drop_last(self, error: BaseException) -> None:
        """Let the last active request go after a failure, whatever state the batch is in."""
        flight = self._active.pop()
        try:
            flight.finish("failed", error)
        finally:
            self.batch.leave(len(self._active))  # the last row: nothing moves

    def _take_in(self, *, block: bool) -> None:
        """New requests join between frames, as many as there are free slots."""
        while True:
            try:
                flight = self._incoming.get(block=block and not self._waiting, timeout=0.5 if block else None)
            except queue.Empty:
                break
            if flight is None:  # close()
                return
            self._waiting.append(flight)
            block = False
        for flight in [flight for flight in self._waiting if flight.cancelled.is_set()]:
            self._waiting.remove(flight)  # gave up while waiting for a slot: told at once, not when one frees
            flight.finish("cancelled")
        for entry in [entry for entry in self._prefilling[1:] if entry[0].cancelled.is_set()]:
            self._prefilling.remove(entry)  # gave up behind another's prefill: told now, not after it
            entry[1].close()
            entry[0].finish("cancelled")
        while self._waiting and len(self._active) + len(self._prefilling) < self.max_batch:
            flight = self._waiting.pop(0)
            steps = self.speech.prefill_request_steps(flight.request, flight.stats, self.prefill_chunk)
            self._prefilling.append((flight, steps))

    def _prefill_chunk(self) -> None:
        """One chunk of the oldest newcomer's prompt (all of it when nobody is listening yet); in it goes, once
        its prompt is through."""
        flight, steps = self._prefilling[0]
        while True:
            if flight.cancelled.is_set():
                self._prefilling.pop(0)
                steps.close()
                flight.finish("cancelled")
                return
            try:
                next(steps)
            except StopIteration as done:
                last_hidden, cache = done.value
                break
            except Exception as error:  # this request's prompt failed: it alone hears of it
                log.exception("speech service could not take a request in")
                self._prefilling.pop(0)
                flight.finish("failed", error)
                return
            if self._active:
                return  # the others' next frame first
        self._prefilling.pop(0)
        request = flight.request
        row = None
        try:
            row = self.batch.join(cache, request.sampling, last_hidden, max_frames=request.max_frames,  # type: ignore[arg-type]
                                  repeat_frames=request.streaming.repeat_frames)  # fmt: skip
            flight.reply = self.speech.new_reply(request.streaming, request.max_frames, self.batch.stops.codes[row])
        except Exception as error:
            log.exception("speech service could not take a request in")
            if row is not None:
                self.batch.leave(row)  # the last row: nothing moves, no slot is left held by nobody
            flight.finish("failed", error)
            return
        self._active.append(flight)

    def _frame(self) -> None:
        for row in reversed(range(len(self._active))):
            if self._active[row].cancelled.is_set():
                self._leave(row, "cancelled")
        if not self._active:
            return
        started = time.perf_counter()
        count = len(self._active)
        if self.graphs is not None:
            self.graphs.frame(count)
        else:
            self.batch.frame(count)
        for flight in self._active:
            flight.unread += 1
        if any(flight.reply.due(flight.unread) for flight in self._active if flight.reply is not None):
            self._chunk_boundary()
        # On CUDA this is the host's time (the device catches up at chunk boundaries), on a CPU the frame's.
        elapsed = time.perf_counter() - started
        for flight in self._active:
            flight.stats.frame_s.append(elapsed)
        self.stats.steps += 1
        self.stats.batch_sizes[count] = self.stats.batch_sizes.get(count, 0) + 1
        durations = self.stats.step_seconds.setdefault(count, [])
        if len(durations) < 4096:  # enough for any benchmark; a long-running service must not grow it forever
            durations.append(elapsed)

    def _chunk_boundary(self) -> None:
        """Read every slot's state (the one read back), decode the due windows of all requests, hand out the
        chunks, and let go of the requests that stopped."""
        states = self.batch.stops.read(len(self._active))
        due: list[int] = []
        for row, (flight, (generated, stop, run)) in enumerate(zip(self._active, states, strict=True)):
            assert flight.reply is not None
            flight.reply.sync(generated, STOP_REASONS.get(stop), run)
            flight.unread = 0
            if not flight.reply.needs_frames():  # a chunk's worth is there, or it stopped
                due.append(row)
        failed = self._decode(due)
        stopped = [row for row in due if row in failed or self._active[row].reply.stop is not None]  # type: ignore[union-attr]
        for row in reversed(stopped):
            self._leave(row, "failed" if row in failed else None, failed.get(row))

    def _decode(self, rows: list[int]) -> dict[int, BaseException]:
        """Decode and deliver the chunks of `rows`; returns the rows whose decode or delivery failed (each alone).

        On CUDA all windows go through Mimi in one call (one launch sequence instead of one per reply); on a CPU
        each alone, which measured faster there (the codec's convolutions are large per row already, and a batch
        padded to its longest window decodes the padding too)."""
        windows = [self._active[row].reply.window() for row in rows]  # type: ignore[union-attr]
        started = time.perf_counter()
        audio, failures = decode_due(self.speech.model.codec_model, [w[0] if w else None for w in windows],
                                     together=self._decode_together)  # fmt: skip
        spent = time.perf_counter() - started
        failed: dict[int, BaseException] = {rows[index]: error for index, error in failures.items()}
        for index, row in enumerate(rows):
            flight = self._active[row]
            if row in failed or flight.reply is None:
                continue
            flight.stats.decode_s += spent
            try:
                chunk = flight.reply.take(audio.get(index))
                if chunk is not None:
                    if flight.stats.first_audio_s is None:
                        flight.stats.first_audio_s = time.perf_counter() - flight.request.t0
                    flight.deliver(chunk)  # raises if this listener's event loop has closed: it alone ends
            except Exception as error:
                log.exception("a reply failed in the speech service")
                failed[row] = error
        return failed

    def _leave(self, row: int, reason: str | None, error: BaseException | None = None) -> None:
        """Free `row` (the last row moves into it, as in the batch); the request hears it has ended, with the
        codes of what it delivered, read before its slot is reused."""
        flight = self._active[row]
        assert flight.reply is not None or reason is not None
        if flight.reply is not None:  # a stop is seen at the next chunk boundary: the idle steps since aren't its
            reply = flight.reply
            made = reply.produced + (reply.stop == "eos") if reply.stop is not None else reply.produced + flight.unread
            del flight.stats.frame_s[max(made, 1) :]
        try:
            flight.finish(reason or (flight.reply.stop if flight.reply else None) or "max_frames", error)
        finally:
            moved = self.batch.leave(row)
            if moved is not None:
                self._active[row] = self._active[moved]
                mover = self._active[row].reply
                if mover is not None:
                    mover.codes = self.batch.stops.codes[row]
            self._active.pop()
