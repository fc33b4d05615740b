"""Speech synthesizers, one module each, chosen by ALAN_TTS_BACKEND.

A new backend is one module with a class implementing `engine.speech_synthesizer.SpeechSynthesizer`, built as
`Class(model, device, options)`, plus one line here. Modules are imported only when chosen: CSM brings PyTorch and
transformers, the tone backend nothing heavy.
"""

from __future__ import annotations

import importlib

from engine.speech_synthesizer import SpeechSynthesizer, SynthesizerOptions

# backend name -> "module:class"
SYNTHESIZERS: dict[str, str] = {
    "csm": "engine.tts.csm_synthesizer:CsmSynthesizer",  # Sesame CSM-1B: cloned voices, conversation context
    "tone": "engine.tts.tone:ToneSynthesizer",  # deterministic tones: tests, and trying aLAN without a GPU
}


def make_synthesizer(
    backend: str, model: str, device: str = "auto", options: SynthesizerOptions | None = None
) -> SpeechSynthesizer:
    """The synthesizer `backend` names, for `model` on `device`; nothing loads until it is first used."""
    if backend not in SYNTHESIZERS:
        raise ValueError(f"unknown speech synthesizer {backend!r}; known: {', '.join(SYNTHESIZERS)}")
    module, _, name = SYNTHESIZERS[backend].partition(":")
    return getattr(importlib.import_module(module), name)(model, device, options or SynthesizerOptions())  # type: ignore[no-any-return]


__all__ = ["SYNTHESIZERS", "make_synthesizer"]
