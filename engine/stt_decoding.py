"""How Whisper decodes a turn: beam size, temperature fallback, the token cap and the language choice.

Kept apart from `engine.stt` (loading, VAD and filtering) because these numbers are tuned on measurements
(bench/stt.py) and change together.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # faster-whisper pulls in ctranslate2 and onnxruntime: import them only when needed
    import numpy as np
    from faster_whisper import WhisperModel
    from faster_whisper.vad import VadOptions

log = logging.getLogger(__name__)

# --- Decoding, chosen from bench/stt.py on the real Whisper base, int8, 2 shared CPU threads, espeak-ng ---
# beam 1: WER en 2.2 %, es 35.8 %, 2.17 s per sentence clip; beam 5: en 2.2 %, es 24.2 %, 2.35 s (+8 %).
# Beam search pays for itself on a CPU too (and is nearly free on a GPU).
DEFAULT_BEAM_SIZE = 5
# Temperature fallback re-decodes a clip whose text looks like a loop or is unsure, once per temperature.
# A 1.1 s Spanish laugh ("ja ja ja") cost 33.4 s with faster-whisper's six temperatures, uncapped (and
# was dropped anyway); two temperatures: 11.5 s; two plus the token cap below: 4.8 s. English "ha ha ha":
# 2.0 s → 2.0 s.
DEFAULT_TEMPERATURES: tuple[float, ...] = (0.0, 0.4)
# Tokens Whisper may write per second of speech, plus a fixed allowance. espeak-ng's English and Spanish
# need up to 8 text tokens/s; languages the byte-level vocabulary spells in more pieces (Greek, Hindi) need
# more, hence the margin. A loop ("ja ja ja" → "Shoshosho…") runs into this cap instead of on to 448 tokens.
TOKENS_PER_SPEECH_SECOND = 15.0
TOKEN_ALLOWANCE = 32
MAX_NEW_TOKENS = 440  # Whisper's decoder holds 448 positions, a few of them taken by the prompt
# Language detection below this probability is "unsure": a known language of the person's wins.
LANGUAGE_SURE = 0.9


def token_cap(speech_seconds: float, tokens_per_speech_second: float | None) -> int | None:
    """The most tokens Whisper may write for this much speech (None: only the model's own limit)."""
    if tokens_per_speech_second is None:
        return None
    # faster-whisper applies the cap per 30 s window; a longer turn is capped as if each window were full.
    window_seconds = min(speech_seconds, 30.0)
    return min(MAX_NEW_TOKENS, math.ceil(tokens_per_speech_second * window_seconds) + TOKEN_ALLOWANCE)


def choose_language(model: WhisperModel, samples: np.ndarray, vad: VadOptions, hint: str) -> tuple[str, float]:
    """The detected language if detection is sure, else the hint; with the chosen one's probability.

    This is the detection faster-whisper would run itself (on the speech parts), done here so its
    certainty can be weighed; the transcription that follows is then told the language.
    """
    detected, probability, all_probabilities = model.detect_language(samples, vad_filter=True, vad_parameters=vad)
    if probability >= LANGUAGE_SURE or detected == hint:
        return detected, probability
    probabilities = dict(all_probabilities)
    if hint not in probabilities:  # not a language this model knows: detection it is
        return detected, probability
    log.debug("language detection unsure (%s %.2f): using the person's %s", detected, probability, hint)
    return hint, probabilities[hint]
