"""Streaming voice activity detection: finds where each utterance of one speaker starts and ends, as audio arrives.

Uses the Silero VAD model that faster-whisper already ships (ONNX, ~2 MB, ~0.15 ms per 32 ms window on one CPU
core), so there is nothing extra to download. Platform-free: feed it 16 kHz mono float32 in pieces of any size;
it answers with events:

    vad = StreamingVad()
    for event in vad.feed(pcm):          # SpeechStarted, Utterance, SpeechEnded
        ...
    vad.advance_silence(samples)         # the sender stopped sending (Discord sends nothing while you're quiet)

`SpeechStarted` comes early (after `start_ms` of speech), so a bot can stop talking when someone barges in;
`Utterance` comes once they have been quiet for `min_silence_ms` (or talked for `max_speech_s`), with the audio;
utterances shorter than `min_speech_ms` (a cough, a click) are dropped, reported only by `SpeechEnded`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16_000
WINDOW = 512  # Silero's window at 16 kHz: 32 ms
CONTEXT = 64  # samples of the previous window Silero sees in front of each window


class SileroModel:
    """The ONNX Silero VAD, shared (onnxruntime sessions are thread-safe); each stream keeps its own state."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self.session = get_vad_model().session  # cached by faster-whisper: loaded once per process

    def new_state(self) -> SileroState:
        return SileroState()

    def probability(self, state: SileroState, window: np.ndarray) -> float:
        """Speech probability of one 512-sample window, continuing `state` (LSTM memory and context)."""
        frame = np.concatenate([state.context, window])[None, :]
        prob, state.h, state.c = self.session.run(None, {"input": frame, "h": state.h, "c": state.c})
        state.context = window[-CONTEXT:].copy()
        return float(np.asarray(prob).reshape(-1)[0])


def _zeros(*shape: int) -> Callable[[], np.ndarray]:
    return lambda: np.zeros(shape, dtype=np.float32)


@dataclass
class SileroState:
    """One stream's memory: the LSTM state and the tail of the previous window."""

    h: np.ndarray = field(default_factory=_zeros(1, 1, 128))
    c: np.ndarray = field(default_factory=_zeros(1, 1, 128))
    context: np.ndarray = field(default_factory=_zeros(CONTEXT))


_shared_model: SileroModel | None = None


def shared_model() -> SileroModel:
    global _shared_model
    if _shared_model is None:
        _shared_model = SileroModel()
    return _shared_model


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5  # a window at or above this is speech
    # Hysteresis: once talking, a window only counts as quiet below this, so soft syllables don't end a turn.
    neg_threshold: float = 0.35
    # Speech this long before `SpeechStarted` is reported: short enough for a quick barge-in (≈100 ms), long
    # enough that a single click doesn't interrupt anyone.
    start_ms: int = 96
    min_silence_ms: int = 700  # the hang-over: quiet this long ends the utterance
    min_speech_ms: int = 300  # shorter utterances are noise
    max_speech_s: float = 30.0  # longer ones are cut (at the last short pause if there was one)
    pad_ms: int = 200  # audio kept before the detected start and after the last speech window


@dataclass(frozen=True)
class SpeechStarted:
    at: float  # seconds on the stream's clock (samples fed / 16 kHz) where the speech began


@dataclass(frozen=True)
class Utterance:
    audio: np.ndarray  # 16 kHz mono float32, padded by `pad_ms` on each side where available
    start: float  # seconds on the stream's clock
    end: float
    cut: bool = False  # cut at `max_speech_s`: the speaker is still talking

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True)
class SpeechEnded:
    at: float
    kept: bool  # False: it was too short and no `Utterance` came of it (nor of its max-length pieces)


VadEvent = SpeechStarted | Utterance | SpeechEnded


class StreamingVad:
    """One speaker's stream. Not thread-safe: feed it from one place."""

    def __init__(self, config: VadConfig | None = None, model: SileroModel | None = None) -> None:
        self.config = config or VadConfig()
        self._model = model or shared_model()
        self._state = self._model.new_state()
        cfg = self.config

        def windows(ms: float) -> int:
            return max(1, round(ms * SAMPLE_RATE / 1000 / WINDOW))

        self._start_windows = windows(cfg.start_ms)
        self._silence_windows = windows(cfg.min_silence_ms)
        self._min_speech_windows = windows(cfg.min_speech_ms)
        self._pad_windows = windows(cfg.pad_ms)
        self._max_windows = max(self._min_speech_windows + 1, int(cfg.max_speech_s * SAMPLE_RATE / WINDOW))
        self._pending = np.zeros(0, dtype=np.float32)
        self._windows_seen = 0
        # Before speech: the last few windows, so the utterance can start a little before it was detected.
        self._preroll: collections.deque[np.ndarray] = collections.deque(maxlen=self._pad_windows + self._start_windows)
        self._run = 0  # consecutive speech windows while not yet triggered
        self._triggered = False
        self._speech: list[np.ndarray] = []  # windows of the current utterance, pre-roll included
        self._speech_start = 0  # window index (stream clock) of the utterance's first window
        self._first_voiced = 0  # offset in `_speech` of the first speech window
        self._last_voiced = 0  # offset in `_speech` just past the last speech window
        self._quiet = 0  # consecutive quiet windows while triggered
        self._last_pause = 0  # offset in `_speech` of the latest pause (a quiet window), for max-length cuts
        self._after_cut = False  # the tail of a cut utterance is kept however short: it ends a real sentence

    @property
    def in_speech(self) -> bool:
        return self._triggered

    @property
    def position(self) -> float:
        """Seconds of audio this stream has seen (silence advanced included)."""
        return (self._windows_seen * WINDOW + len(self._pending)) / SAMPLE_RATE

    def feed(self, pcm: np.ndarray) -> list[VadEvent]:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        data = np.concatenate([self._pending, pcm])  # a copy: windows are kept, the caller's buffer may not be
        full = len(data) - len(data) % WINDOW
        self._pending = data[full:].copy()
        events: list[VadEvent] = []
        for offset in range(0, full, WINDOW):
            window = data[offset : offset + WINDOW]
            events.extend(self._step(window, self._model.probability(self._state, window)))
        return events

    def advance_silence(self, samples: int) -> list[VadEvent]:
        """Account for `samples` of silence that never arrived as audio, without running the model on zeros.

        Only what the hang-over needs is simulated; the model's memory is reset, as after any real pause.
        """
        windows, remainder = divmod(len(self._pending) + max(0, samples), WINDOW)
        # The stream clock stays exact: what doesn't fill a window waits, as zeros, for the next audio.
        self._pending = np.zeros(remainder, dtype=np.float32)
        events: list[VadEvent] = []
        if windows <= 0:
            return events
        silence = np.zeros(WINDOW, dtype=np.float32)
        simulated = min(windows, self._silence_windows + 1) if self._triggered else 0
        for _ in range(simulated):
            events.extend(self._step(silence, 0.0))
        self._windows_seen += windows - simulated
        if windows - simulated:
            self._preroll.clear()
            self._run = 0
        self._state = self._model.new_state()
        return events

    def flush(self) -> list[VadEvent]:
        """End of stream: finish the current utterance as if the speaker had gone quiet."""
        events: list[VadEvent] = []
        if self._triggered:
            events.extend(self._finish(self._windows_seen * WINDOW / SAMPLE_RATE))
        self._pending = np.zeros(0, dtype=np.float32)
        self._preroll.clear()
        self._run = 0
        return events

    # -- the state machine ------------------------------------------------------------------------------

    def _step(self, window: np.ndarray, prob: float) -> list[VadEvent]:
        cfg = self.config
        index = self._windows_seen
        self._windows_seen += 1
        if not self._triggered:
            self._preroll.append(window)
            self._run = self._run + 1 if prob >= cfg.threshold else 0
            if self._run < self._start_windows:
                return []
            # Confirmed: the utterance starts `pad` before the first speech window of this run.
            self._triggered = True
            self._speech = list(self._preroll)
            self._speech_start = index + 1 - len(self._speech)
            self._first_voiced = len(self._speech) - self._run
            self._last_voiced = len(self._speech)
            self._quiet = 0
            self._last_pause = 0
            self._after_cut = False
            self._preroll.clear()
            self._run = 0
            return [SpeechStarted((index + 1 - self._start_windows) * WINDOW / SAMPLE_RATE)]

        self._speech.append(window)
        if prob >= cfg.threshold:
            self._quiet = 0
            self._last_voiced = len(self._speech)
        elif prob < cfg.neg_threshold:
            self._quiet += 1
            self._last_pause = len(self._speech) - 1
        if self._quiet >= self._silence_windows:
            return self._finish((self._speech_start + self._last_voiced) * WINDOW / SAMPLE_RATE)
        if len(self._speech) >= self._max_windows:
            if self._quiet:  # already pausing: end here, as the hang-over would have a moment later
                return self._finish((self._speech_start + self._last_voiced) * WINDOW / SAMPLE_RATE)
            return self._cut()
        return []

    def _finish(self, at: float) -> list[VadEvent]:
        voiced = self._last_voiced - self._first_voiced
        events: list[VadEvent] = []
        if voiced >= (1 if self._after_cut else self._min_speech_windows):
            end = min(len(self._speech), self._last_voiced + self._pad_windows)
            events.append(self._utterance(0, end, cut=False))
        events.append(SpeechEnded(at, kept=bool(events) or self._after_cut))
        self._triggered = False
        self._after_cut = False
        self._speech = []
        self._quiet = 0
        return events

    def _cut(self) -> list[VadEvent]:
        # Cut at the latest short pause if a real utterance comes before it, so no word is split; else here.
        pause = self._last_pause
        cut = pause if pause - self._first_voiced >= self._min_speech_windows else len(self._speech)
        utterance = self._utterance(0, cut, cut=True)
        rest = self._speech[cut:]
        self._speech_start += cut
        self._speech = rest
        self._first_voiced = 0
        self._last_voiced = max(0, self._last_voiced - cut)
        self._last_pause = 0
        self._after_cut = True
        return [utterance]

    def _utterance(self, start: int, end: int, *, cut: bool) -> Utterance:
        audio = np.concatenate(self._speech[start:end]) if end > start else np.zeros(0, dtype=np.float32)
        begin = (self._speech_start + start) * WINDOW / SAMPLE_RATE
        return Utterance(audio, begin, begin + len(audio) / SAMPLE_RATE, cut=cut)
