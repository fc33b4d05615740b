"""The speech-synthesizer seam: what the conversation needs from any text-to-speech backend.

A backend is one module under `engine/tts/` and one line in `engine.tts.SYNTHESIZERS`: `csm_synthesizer.py`
(Sesame CSM-1B, which clones voices and listens to the conversation) and `tone.py` (deterministic tones, for
tests and for trying aLAN without a GPU). The conversation, the voice library and the bots see only this
protocol: Mimi codes, frames and position budgets stay behind the CSM backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# The speaker of aLAN's own turns in a conversation's context; anyone else is named by their own key.
ASSISTANT = "assistant"


@dataclass(frozen=True)
class SynthesizerCapabilities:
    """What a backend can do, so callers skip work it would ignore."""

    clones_voices: bool  # speaks in the voice of a reference clip
    uses_context: bool  # conditions on the conversation's real audio (then turns carry its payloads)
    sample_rate: int  # of the audio it makes


@dataclass(frozen=True)
class SynthesizerOptions:
    """How a backend that batches may run: what it doesn't use, it ignores."""

    max_batch: int | None = None  # sentences spoken together; None: the backend decides from the device
    prefill_chunk: int = 64  # prompt positions a newcomer prefills between two frames of the others
    weights: str = "auto"  # "auto" | "fp32" | "bf16" | "int8": the model's weights in memory
    cuda_graphs: bool = True  # replay the frame step as CUDA graphs where there is CUDA


@dataclass(frozen=True)
class SpeechPayload:
    """What a backend keeps about a piece of audio (CSM: its Mimi codes), opaque to everyone else.

    `tag` names the backend and model that made it: a payload is only ever given back to the same backend and
    model, so a changed model never reads another's codes (a voice is then made again from its clip).
    """

    tag: str  # "backend:model"
    data: bytes


@dataclass(frozen=True)
class VoicePrompt:
    """A voice as the synthesizer speaks with it: the reference clip's payload and its exact transcript."""

    key: str  # stable across turns and unique per voice: the backend may cache work done on the voice under it
    transcript: str
    payload: SpeechPayload


@dataclass(frozen=True)
class ContextTurn:
    """One earlier utterance of the conversation: who said it (`ASSISTANT` or a person's key), what, and how."""

    speaker: str
    text: str
    payload: SpeechPayload | None = None  # None: text only


@dataclass(frozen=True)
class AudioChunk:
    """Float32 mono samples; chunks of one stream play back to back."""

    samples: np.ndarray
    sample_rate: int


@runtime_checkable
class SynthesisStream(Protocol):
    """One text being spoken: audio chunks as they are made.

    Closing it early (`aclose()`, the listener interrupted) stops the backend working at the next chunk.
    Afterwards `spoken(samples)` is the payload of the first `samples` samples, exactly the audio the listener
    got, to go into the context of later turns (None when the backend keeps no payloads or nothing was heard).
    """

    def __aiter__(self) -> AsyncIterator[AudioChunk]: ...

    async def aclose(self) -> None: ...

    def spoken(self, samples: int) -> SpeechPayload | None: ...


@runtime_checkable
class SpeechSynthesizer(Protocol):
    """Speaks a text in a voice, with the conversation so far as context.

    Contract:
    - `tag` is "backend:model"; payloads with another tag are never passed in.
    - `load()` makes the backend ready; every failure to load or run (missing weights, a gated repository, no
      GPU memory) raises `engine.errors.TtsUnavailableError` whose message is the operator's fix. Any method may load
      on first use; a failed load is tried again on the next call (the operator may have fixed it meanwhile).
    - `encode(audio, rate)` turns audio (a reference clip, or what a person said) into the payload the backend
      keeps for it; None when it keeps nothing.
    - `fit_context(voice, context, text)` is the newest part of `context` that fits with the voice and the text
      (CSM: its 2048 positions); `stream()` applies the same rule. `max_reference_seconds(transcript)` is the
      longest reference clip that still leaves room for a reply. Text or a voice that can't fit at all raises
      `engine.errors.SpeechTooLongError` (a message for the person).
    - `stream(text, voice, context)` speaks `text` (voice None: the backend's own default voice).
    - `join(payloads)` is one payload for those pieces spoken back to back (a reply's sentences).
    - `forget(voice_key)` drops what memory holds of a deleted voice; `forget(None)` everything cached about
      anyone. `aclose()` releases the model and its threads.
    """

    tag: str
    capabilities: SynthesizerCapabilities

    async def load(self) -> None: ...

    async def encode(self, audio: np.ndarray, sample_rate: int) -> SpeechPayload | None: ...

    async def fit_context(
        self, voice: VoicePrompt | None, context: Sequence[ContextTurn], text: str
    ) -> list[ContextTurn]: ...

    async def max_reference_seconds(self, transcript: str) -> float: ...

    def stream(self, text: str, voice: VoicePrompt | None, context: Sequence[ContextTurn]) -> SynthesisStream: ...

    def join(self, payloads: Sequence[SpeechPayload]) -> SpeechPayload | None: ...

    def forget(self, voice_key: str | None = None) -> None: ...

    async def aclose(self) -> None: ...
