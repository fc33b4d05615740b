"""The full CSM-1B architecture with random weights, and the prompts the TTS benchmarks speak.

Nothing is downloaded: the default `CsmConfig()` (1B backbone, 100M depth decoder, full Mimi; only the codebook
heads trimmed from 2051 to Mimi's 2048 codes) gets random weights and a small local word-level tokenizer.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from transformers import CsmConfig, CsmForConditionalGeneration

from engine.tts.csm import CsmSpeech
from engine.tts.types import Segment
from engine.tts.weights import apply_weight_mode
from tests.tiny_models.csm import build_processor, randomize_codebooks, special_token_ids

VOICE_TEXT = (
    "hello there, this is the voice you will hear today. i like to talk about music, games and the weather, "
    "and i will tell you what i think about your day, your work and your budget. thank you for listening to "
    "me for a while now, it is really nice to speak with you this morning."
)
HISTORY = [
    (1, "hey, how are you doing today?", 3.0),
    (0, "i am fine, thanks. what are you working on?", 4.0),
    (1, "i am figuring out my budget for the week.", 3.5),
]
TARGET = "that sounds like a good plan, tell me more about it."
# What the simultaneous requests say: different texts, so different prompt lengths.
TEXTS = [
    TARGET,
    "sure, i can help with that.",
    "music is a great way to relax after a long day at work with your friends.",
    "the weather looks fine tomorrow.",
    "i think you should talk to her about it, she will understand what you mean and why it matters to you.",
    "good morning!",
    "that is a lot of money for a week, maybe we can find a cheaper plan together.",
    "tell me more about your day.",
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(device: torch.device) -> CsmSpeech:
    processor = build_processor()
    # vocab_size 2048 instead of 2051: random heads would otherwise sample codes 2048-2050, which Mimi cannot
    # decode and generate() crashes on (our engine never picks them); the compute is the same to 0.1 %
    config = CsmConfig(
        vocab_size=2048,
        codebook_pad_token_id=2047,
        depth_decoder_config={"vocab_size": 2048},
        **special_token_ids(processor),
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = CsmForConditionalGeneration(config)
    randomize_codebooks(model)
    model.to(dtype).eval()
    model.codec_model.float()  # as CsmSpeech.load does
    return CsmSpeech(model, processor)


def with_weights(speech: CsmSpeech, mode: str) -> CsmSpeech:
    """A copy of the engine with its weights in `mode` (fp32 | bf16 | int8), as `CsmSpeech.load` would make it."""
    model = copy.deepcopy(speech.model)
    apply_weight_mode(model, mode)  # type: ignore[arg-type]
    return CsmSpeech(model, speech.processor)


def conversation(speech: CsmSpeech, voice_seconds: float) -> tuple[Segment, list[Segment], list[np.ndarray]]:
    """The voice segment (a `voice_seconds` clip) and three history turns, with their (noise) audio."""
    rng = np.random.default_rng(0)
    voice_audio = (0.1 * rng.standard_normal(int(voice_seconds * 24_000))).astype(np.float32)
    turn_audio = [(0.1 * rng.standard_normal(int(s * 24_000))).astype(np.float32) for _, _, s in HISTORY]
    voice = Segment(0, VOICE_TEXT, speech.encode_audio(voice_audio))
    history = [
        Segment(spk, text, speech.encode_audio(a)) for (spk, text, _), a in zip(HISTORY, turn_audio, strict=True)
    ]
    return voice, history, [voice_audio, *turn_audio]
