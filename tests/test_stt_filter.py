"""The hallucination filter on real faster-whisper `Segment` objects: which segments are dropped and why.

Stock phrases Whisper invents over silence (in many languages), sound annotations, unsure or repetitive text are
dropped; real speech, even near a stock phrase, is kept, and a short answer is kept when Silero heard clear speech.
"""

from __future__ import annotations

import pytest

from engine.stt_filter import rejection_reason
from tests.stt_helpers import REAL_SHORT_ANSWER, make_segment

# --- hallucination filter ---

UNSURE = {"avg_logprob": -0.8, "no_speech_prob": 0.4}


@pytest.mark.parametrize(
    ("text", "numbers", "reason"),
    [
        (" Thanks for watching!", {}, "stock hallucination"),
        (" Thank you for watching.", {}, "stock hallucination"),
        (" you", {}, "stock hallucination"),
        (" Subtitles by the Amara.org community", {}, "stock hallucination"),
        (" Please subscribe to my channel.", {}, "stock hallucination"),
        (" Untertitel im Auftrag des ZDF, 2017", {}, "stock hallucination"),
        (" www.mooji.org", {}, "stock hallucination"),
        (" Thank you.", UNSURE, "unsure stock phrase"),
        (" Bye.", UNSURE, "unsure stock phrase"),
        (" [Music]", {}, "sound annotation"),
        (" (upbeat music)", {}, "sound annotation"),
        (" ♪♪", {}, "empty"),
        (" ...", {}, "empty"),
        (" Hello there.", {"no_speech_prob": 0.9, "avg_logprob": -1.2}, "silence"),
        (" The the cat sat there.", {"avg_logprob": -2.3}, "low confidence"),
        (" I I I I I I I I I I I", {"compression_ratio": 3.1}, "repetition"),
    ],
)
def test_rejected_segments(text: str, numbers: dict[str, float], reason: str) -> None:
    assert rejection_reason(make_segment(text, **numbers)) == reason


@pytest.mark.parametrize(
    "text",
    [" Thank you.", " Okay.", " What's the weather like tomorrow?", " I watched a video about subtitles."],
)
def test_confident_real_speech_is_kept(text: str) -> None:
    assert rejection_reason(make_segment(text, avg_logprob=-0.25, no_speech_prob=0.02)) is None


@pytest.mark.parametrize(
    "text",
    [
        " Gracias por ver el video.",
        " ¡Gracias por ver el vídeo!",
        " GRACIAS POR VER EL VÍDEO",
        " Suscríbete al canal.",
        " Suscribete al canal y dale like",
        " Subtítulos realizados por la comunidad de Amara.org",
        " Untertitel im Auftrag des ZDF für funk, 2017",
        " Vielen Dank fürs Zuschauen!",
        " Sous-titres réalisés par la communauté d'Amara.org",
        " Sous-titrage ST' 501",
        " Merci d'avoir regardé cette vidéo !",
        " Obrigado por assistir!",
        " Legendas pela comunidade Amara.org",
        " Grazie per la visione!",
        " Sottotitoli creati dalla comunità Amara.org",
        " Bedankt voor het kijken!",
        " Спасибо за просмотр!",
        " ご視聴ありがとうございました",
    ],
)
def test_stock_hallucinations_in_other_languages(text: str) -> None:
    # Confident numbers: these phrases are dropped however sure Whisper is of them.
    assert rejection_reason(make_segment(text, avg_logprob=-0.2, no_speech_prob=0.01)) == "stock hallucination"


@pytest.mark.parametrize(
    "text",
    [
        " Gracias por venir a verme.",
        " Me suscribí al periódico.",
        " Danke für deine Hilfe.",
        " Merci pour le dîner.",
        " You know what I mean?",
        " Obrigado pela ajuda.",
    ],
)
def test_real_speech_near_a_stock_phrase_is_kept(text: str) -> None:
    assert rejection_reason(make_segment(text, avg_logprob=-0.3, no_speech_prob=0.02)) is None


@pytest.mark.parametrize("text", [" Thank you.", " Okay.", " Bye!", " Thanks.", " Yeah.", " Gracias."])
def test_a_short_answer_is_kept_when_silero_heard_clear_speech(text: str) -> None:
    def clear_speech(start: float, end: float) -> float:
        assert (start, end) == (0.0, 2.0)  # asked about the segment's own time span
        return 0.3

    assert rejection_reason(make_segment(text, **REAL_SHORT_ANSWER), clear_speech) is None


@pytest.mark.parametrize(
    ("numbers", "clear_seconds"),
    [
        (REAL_SHORT_ANSWER, 0.0),  # Silero heard no clear speech there: a breath, a click
        (REAL_SHORT_ANSWER, 0.03),  # one 32 ms window is not speech
        ({"avg_logprob": -1.3, "no_speech_prob": 0.3}, 0.5),  # Whisper barely heard words at all
        ({"avg_logprob": -0.7, "no_speech_prob": 0.65}, 0.5),  # Whisper leans to silence
    ],
)
def test_a_stock_phrase_still_needs_evidence_of_speech(numbers: dict[str, float], clear_seconds: float) -> None:
    segment = make_segment(" Thank you.", **numbers)
    assert rejection_reason(segment, lambda start, end: clear_seconds) == "unsure stock phrase"
    assert rejection_reason(segment) == "unsure stock phrase"  # no evidence given: Whisper's confidence alone
