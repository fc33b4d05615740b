"""Which of Whisper's decoded segments are speech, and which are its hallucinations.

Whisper always writes *something*: given a breath, a click or room noise it tends to produce its stock
phrases ("Thank you.", "Thanks for watching!", "Untertitel im Auftrag des ZDF"). Silero VAD keeps almost all
non-speech away from the model (see `engine.stt`); this filter is the second line, on the numbers
faster-whisper reports for each segment and on the text:

- segments Whisper itself calls silence, or is hopelessly unsure of;
- repetition loops, within one segment (gzip ratio) or across segments (the same phrase again and again);
- sound annotations ("[Music]") and the stock phrases of Whisper's training subtitles, in several languages;
- short phrases that are both real answers and hallucinations ("thank you", "okay", "bye"): kept when Whisper
  is confident, or when Silero heard clear speech where the segment lies.

Thresholds were tuned on the real Whisper base with espeak-ng speech (tests/test_stt_real.py).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from faster_whisper.transcribe import Segment

# --- Thresholds (Whisper's own defaults where it has one) ---
NO_SPEECH_PROB = 0.6  # Whisper: a segment is silence if no_speech_prob > 0.6 ...
LOW_LOGPROB = -1.0  # ... and its average log-probability < -1.0
GARBAGE_LOGPROB = -1.5  # still this unsure after temperature fallback: noise decoded as words
MAX_COMPRESSION_RATIO = 2.4  # gzip ratio above this = a repetition loop ("the the the …")
# A stock phrase Whisper is confident of on its own. Real short answers rarely reach this (the real base
# model scores "okay", "thank you", "thanks" at avg_logprob -0.5 to -0.85), hence the VAD evidence below.
CONFIDENT_NO_SPEECH_PROB = 0.2
CONFIDENT_LOGPROB = -0.5
# ... or one Silero heard as clear speech: at least this long with a speech probability of at least
# CLEAR_SPEECH_PROB inside the segment's time span. espeak-ng's "sure" (the weakest short answer measured)
# has 0.16 s above 0.85; breath and loud noise peak at 0.52 and 0.41.
CLEAR_SPEECH_PROB = 0.85
CLEAR_SPEECH_SECONDS = 0.08
# ... and that Whisper did not all but call silence (the real "yeah" scores -1.01 / 0.58 and is real).
STOCK_PHRASE_LOGPROB = -1.2

# (start, end) in seconds → seconds of clear speech Silero heard in that span.
SpeechEvidence = Callable[[float, float], float]


def fold(text: str) -> str:
    """Lowercase without accents ("Suscríbete" → "suscribete"), so a phrase matches however it is spelt."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return unicodedata.normalize("NFC", "".join(char for char in decomposed if not unicodedata.combining(char)))


def normalise(text: str) -> str:
    """Folded, punctuation to spaces, single-spaced: "¡Gracias por ver el vídeo!" → "gracias por ver el video"."""
    text = fold(text).replace("’", "'").replace("'", " ")
    text = re.sub(r"[^\w\s.]", " ", text)
    text = re.sub(r"(?<!\w)\.|\.(?!\w)", " ", text)  # keep dots inside words (amara.org), drop the rest
    return " ".join(text.split())


def _phrases(phrases: Iterable[str]) -> str:
    return "|".join(re.escape(normalise(phrase)) for phrase in phrases)


# Phrases no one says to a voice companion: YouTube outros and subtitle credits from Whisper's training data.
# A segment that is one of these, or starts with one, is dropped whatever the scores.
_OUTROS = (
    # English
    "please subscribe", "please like and subscribe", "like and subscribe", "don't forget to like and subscribe",
    "see you in the next video", "see you next time", "see you in the next one",
    # Spanish
    "gracias por ver el video", "gracias por ver", "gracias por ver este video", "muchas gracias por ver el video",
    "suscríbete al canal", "suscríbete", "no olvides suscribirte", "nos vemos en el próximo video",
    "dale like y suscríbete", "subtítulos realizados por la comunidad de amara.org",
    "subtítulos por la comunidad de amara.org",
    # German
    "untertitel im auftrag des zdf", "untertitel der amara.org-community", "untertitelung des zdf",
    "vielen dank fürs zuschauen", "danke fürs zuschauen", "abonniert den kanal",
    # French
    "sous-titres réalisés par la communauté d'amara.org", "sous-titres réalisés par", "sous-titrage st' 501",
    "sous-titrage société radio-canada", "merci d'avoir regardé cette vidéo", "merci d'avoir regardé",
    "abonnez-vous", "n'oubliez pas de vous abonner",
    # Portuguese
    "obrigado por assistir", "obrigada por assistir", "legendas pela comunidade amara.org", "inscreva-se no canal",
    # Italian
    "grazie per la visione", "grazie per aver guardato", "sottotitoli creati dalla comunità amara.org",
    "sottotitoli a cura di qtss", "iscriviti al canale",
    # Dutch, Russian, Korean, Japanese
    "bedankt voor het kijken", "ondertiteld door de amara.org gemeenschap", "спасибо за просмотр",
    "субтитры сделал dimatorzok", "시청해주셔서 감사합니다", "ご視聴ありがとうございました",
)  # fmt: skip
_ALWAYS_HALLUCINATION = re.compile(
    rf"^(you|({_phrases(_OUTROS)})( .*)?"
    r"|thanks? (you )?(so much |very much )?for watching.*"
    r"|(subtitles?|captions?|captioning|transcri(bed|ption)|translat(ed|ion)|sub(bed|titled)) by.*"
    r"|(www )?\S+\.(com|org|net|tv))$"
)
# Subtitle credits, matched anywhere in a segment (they come with names, years and channels around them).
_CREDITS = re.compile(
    _phrases(("amara.org", "untertitel", "sous-titres", "sous-titrage", "subtítulos realizados", "sottotitoli creati",
              "sottotitoli a cura",
              "ご視聴", "字幕", "продолжение следует", "субтитры", "napisy"))
)  # fmt: skip
# Short phrases Whisper produces for breaths, clicks and room noise, but that are also real answers.
_AMBIGUOUS_HALLUCINATION = frozenset(
    normalise(phrase)
    for phrase in (
        "thank you", "thank you so much", "thank you very much", "thanks", "thanks a lot", "bye", "bye bye",
        "goodbye", "okay", "ok", "so", "oh", "uh", "um", "hmm", "mm", "ah", "yeah", "the end", "i'm sorry",
        "gracias", "muchas gracias", "adiós", "danke", "danke schön", "tschüss", "merci", "merci beaucoup",
        "obrigado", "obrigada", "grazie", "ciao",
    )
)  # fmt: skip
# Bracketed sound descriptions and music symbols: "[Music]", "(upbeat music)", "♪♪".
_ANNOTATION = re.compile(r"^(\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|[♪♫♬\s])+$")


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure, faster-whisper's own: a loop across segments is judged as within one."""
    from faster_whisper.transcribe import get_compression_ratio  # heavy; loaded by then, as Whisper has run

    return get_compression_ratio(text) if text else 0.0


def rejection_reason(segment: Segment, speech: SpeechEvidence | None = None) -> str | None:
    """Why a decoded segment must not count as speech, or None if it is fine.

    `speech` says how much clear speech Silero heard in a time span; without it, a stock phrase needs
    Whisper's own confidence.
    """
    text = segment.text.strip()
    if not text or not re.search(r"\w", text):
        return "empty"
    if _ANNOTATION.match(text):
        return "sound annotation"
    if segment.no_speech_prob > NO_SPEECH_PROB and segment.avg_logprob < LOW_LOGPROB:
        return "silence"
    if segment.avg_logprob < GARBAGE_LOGPROB:
        return "low confidence"
    if segment.compression_ratio > MAX_COMPRESSION_RATIO:
        return "repetition"
    normalised = normalise(text)
    if _ALWAYS_HALLUCINATION.match(normalised) or _CREDITS.search(normalised):
        return "stock hallucination"
    if normalised in _AMBIGUOUS_HALLUCINATION and not _heard_clearly(segment, speech):
        return "unsure stock phrase"
    return None


def _heard_clearly(segment: Segment, speech: SpeechEvidence | None) -> bool:
    if segment.no_speech_prob < CONFIDENT_NO_SPEECH_PROB and segment.avg_logprob > CONFIDENT_LOGPROB:
        return True
    if speech is None or segment.no_speech_prob > NO_SPEECH_PROB or segment.avg_logprob < STOCK_PHRASE_LOGPROB:
        return False
    return speech(segment.start, segment.end) >= CLEAR_SPEECH_SECONDS


_VAD_WINDOW = 512  # samples Silero scores at a time (32 ms at 16 kHz)


def silero_evidence(samples: np.ndarray, sample_rate: int) -> SpeechEvidence:
    """How much clear speech Silero hears in a time span of `samples`; scored once, on the first question.

    Most transcripts hold no stock phrase, so most turns never pay for this second Silero pass.
    """
    probabilities: np.ndarray | None = None
    window_s = _VAD_WINDOW / sample_rate

    def clear_speech_seconds(start: float, end: float) -> float:
        nonlocal probabilities
        if probabilities is None:
            from faster_whisper.vad import get_vad_model

            padded = np.pad(samples, (0, -len(samples) % _VAD_WINDOW))
            probabilities = np.asarray(get_vad_model()(padded)).reshape(-1)
        first, last = int(start / window_s), math.ceil(end / window_s)
        return float(np.count_nonzero(probabilities[first:last] >= CLEAR_SPEECH_PROB)) * window_s

    return clear_speech_seconds


class RepetitionGuard:
    """Catches a loop spread over segments, each of which looks fine alone.

    Whisper sometimes decodes one phrase as several segments ("Mañana tengo que ir al médico…" three times):
    a segment whose text is one already kept is dropped, and a transcript that is still a loop as a whole
    (gzip ratio over the joined text) is dropped entirely.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def repeated(self, text: str) -> bool:
        """True if this segment repeats an earlier kept one; else remember it."""
        key = normalise(text)
        if key in self._seen:
            return True
        self._seen.add(key)
        return False

    @staticmethod
    def is_loop(kept: list[str]) -> bool:
        return len(kept) > 1 and compression_ratio(" ".join(kept)) > MAX_COMPRESSION_RATIO
