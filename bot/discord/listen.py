"""Hearing each person in a voice channel separately: their PCM in, "they started talking" and "here is what they
said" out.

`VoiceListener.on_audio` has the receive layer's callback signature (`user_id, pcm, timestamp`) and runs one
streaming Silero VAD (`engine.vad`) per speaker. Discord sends nothing while someone is quiet, so silence has
to be inferred: from jumps in the speaker's media timestamp when they talk again, and, while they stay quiet,
from the clock (`tick()`, run every 100 ms by `run()`). The clock is injectable so tests control time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.vad import (
    SAMPLE_RATE,
    SpeechEnded,
    SpeechStarted,
    StreamingVad,
    Utterance,
    VadConfig,
    VadEvent,
    shared_model,
)

log = logging.getLogger(__name__)

# Audio that is late by more than this (jitter buffer and network included) is taken for silence.
IDLE_AFTER = 0.25
# A jump in the media timestamp smaller than this is jitter, not a pause.
GAP_TOLERANCE = 0.045

Clock = Callable[[], float]


@dataclass
class _Speaker:
    vad: StreamingVad
    expected: float | None = None  # media timestamp where their next audio should start
    last_arrival: float = 0.0  # clock time their last audio arrived
    silence_fed: float = 0.0  # seconds of inferred silence given to the VAD since then


class VoiceListener:
    """Per-speaker voice activity for one voice connection; everything runs on the event loop."""

    def __init__(
        self,
        *,
        on_speech_start: Callable[[int], None],
        on_utterance: Callable[[int, Utterance], None],
        accept: Callable[[int], bool] = lambda user_id: True,
        clock: Clock = time.monotonic,
        vad_config: VadConfig | None = None,
        idle_after: float = IDLE_AFTER,
    ) -> None:
        self.on_speech_start = on_speech_start
        self.on_utterance = on_utterance
        self.accept = accept
        self.clock = clock
        self.vad_config = vad_config
        self.idle_after = idle_after
        self._speakers: dict[int, _Speaker] = {}
        shared_model()  # load Silero now (on join), not when the first person starts talking

    def speaking(self) -> set[int]:
        """Who is talking right now (their speech has started and not yet ended)."""
        return {user_id for user_id, speaker in self._speakers.items() if speaker.vad.in_speech}

    def is_speaking(self, user_id: int) -> bool:
        speaker = self._speakers.get(user_id)
        return speaker is not None and speaker.vad.in_speech

    def forget(self, user_id: int) -> None:
        """They left the channel: drop their state (a half-finished sentence has nobody left to answer)."""
        self._speakers.pop(user_id, None)

    def on_audio(self, user_id: int, pcm: np.ndarray, timestamp: float) -> None:
        """The receive layer's callback: `pcm` is float32 mono at 16 kHz, `timestamp` on the speaker's media clock."""
        if not self.accept(user_id):
            return  # other bots (music bots…) are not people talking to aLAN
        speaker = self._speakers.get(user_id)
        if speaker is None:
            speaker = self._speakers[user_id] = _Speaker(StreamingVad(self.vad_config))
        events: list[VadEvent] = []
        if speaker.expected is not None:
            gap = timestamp - speaker.expected
            if gap > GAP_TOLERANCE:
                # They paused: Discord sent nothing meanwhile. Whatever tick() already assumed is not counted twice.
                owed = gap - speaker.silence_fed
                if owed > 0:
                    events += speaker.vad.advance_silence(int(owed * SAMPLE_RATE))
        events += speaker.vad.feed(pcm)
        speaker.expected = timestamp + len(pcm) / SAMPLE_RATE
        speaker.last_arrival = self.clock()
        speaker.silence_fed = 0.0
        self._dispatch(user_id, events)

    def tick(self) -> None:
        """Let the VAD of everyone whose audio stopped coming hear the silence, so their utterance can end."""
        now = self.clock()
        for user_id, speaker in list(self._speakers.items()):
            quiet_for = now - speaker.last_arrival
            if quiet_for < self.idle_after:
                continue
            owed = quiet_for - speaker.silence_fed
            if owed <= 0:
                continue
            speaker.silence_fed = quiet_for
            self._dispatch(user_id, speaker.vad.advance_silence(int(owed * SAMPLE_RATE)))

    async def run(self, interval: float = 0.1) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick()
            except Exception:  # one bad tick must not deafen the channel
                log.exception("voice activity tick failed")

    def _dispatch(self, user_id: int, events: list[VadEvent]) -> None:
        for event in events:
            try:
                if isinstance(event, SpeechStarted):
                    log.debug("user %d started speaking at %.2f s", user_id, event.at)
                    self.on_speech_start(user_id)
                elif isinstance(event, Utterance):
                    log.debug("user %d said %.2f s (cut: %s)", user_id, event.seconds, event.cut)
                    self.on_utterance(user_id, event)
                elif isinstance(event, SpeechEnded) and not event.kept:
                    log.debug("ignored a short noise from user %d", user_id)
            except Exception:  # a failing handler costs this event, never the other speakers
                log.exception("voice event handler failed for user %d", user_id)
