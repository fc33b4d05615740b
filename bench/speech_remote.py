"""What speaking through the speech service costs over speaking in-process: the seam itself, not the model.

The tone synthesizer makes audio at no cost, so every difference is transport: the HTTP API (alan/speech_api.py,
uvicorn on this machine), and the same API behind Ray Serve's proxy on a local Ray cluster (`alan speech serve`).
For each route: time to first audio and whole-sentence time of one sentence (5 s of audio, 25 chunks), and eight
sentences at once. Medians of `--repeat` runs, all in one run, side by side.

    python bench/speech_remote.py [--repeat 20] [--no-ray]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alan.speech_api import serve_synthesizer, speech_api  # noqa: E402
from engine.speech_synthesizer import SpeechSynthesizer  # noqa: E402
from engine.tts.remote import RemoteSynthesizer  # noqa: E402
from engine.tts.tone import ToneSynthesizer  # noqa: E402

SENTENCE = "A sentence of about five seconds of audio, spoken by the tone backend at no cost at all, chunk by chunk!"
AT_ONCE = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def one(synthesizer: SpeechSynthesizer) -> tuple[float, float]:
    """Time to first audio and to the end of one sentence."""
    start, first = time.perf_counter(), float("nan")
    async for _ in synthesizer.stream(SENTENCE, None, []):
        if first != first:
            first = time.perf_counter() - start
    return first, time.perf_counter() - start


async def several(synthesizer: SpeechSynthesizer) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(one(synthesizer) for _ in range(AT_ONCE)))
    return time.perf_counter() - start


async def measure(make: Callable[[], SpeechSynthesizer], repeat: int) -> dict[str, float]:
    synthesizer = make()
    try:
        await one(synthesizer)  # warm: connections, first load
        singles = [await one(synthesizer) for _ in range(repeat)]
        batches = [await several(synthesizer) for _ in range(max(3, repeat // 4))]
    finally:
        await synthesizer.aclose()
    return {
        "ttfa_ms": 1000 * statistics.median(first for first, _ in singles),
        "sentence_ms": 1000 * statistics.median(total for _, total in singles),
        "eight_ms": 1000 * statistics.median(batches),
    }


def uvicorn_service() -> tuple[str, Callable[[], None]]:
    port = free_port()
    serve_synthesizer(ToneSynthesizer())
    server = uvicorn.Server(uvicorn.Config(speech_api(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    return f"http://127.0.0.1:{port}", stop


def ray_service() -> tuple[str, Callable[[], None]]:
    port = free_port()
    environment = {**os.environ, "ALAN_TTS_BACKEND": "tone", "ALAN_TTS_MODEL": "tone", "ALAN_DEVICE": "cpu"}
    command = [sys.executable, "-m", "alan.cli", "speech", "serve", "--host", "127.0.0.1", "--port", str(port)]
    workdir = tempfile.mkdtemp(prefix="alan-bench-")
    process = subprocess.Popen(command, cwd=workdir, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if "Speech service ready" in line:
            break
    else:
        raise RuntimeError("`alan speech serve` did not start")
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # type: ignore[union-attr]

    def stop() -> None:
        process.terminate()
        process.wait(60)

    return f"http://127.0.0.1:{port}/speech", stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Serve route")
    args = parser.parse_args()

    routes: dict[str, Callable[[], Awaitable[dict[str, float]]]] = {}
    routes["in-process"] = lambda: measure(lambda: ToneSynthesizer("tone"), args.repeat)
    url, stop_uvicorn = uvicorn_service()
    routes["HTTP (uvicorn)"] = lambda: measure(lambda: RemoteSynthesizer(url, ToneSynthesizer("tone")), args.repeat)
    stop_ray: Callable[[], None] | None = None
    if not args.no_ray:
        ray_url, stop_ray = ray_service()
        routes["Ray Serve"] = lambda: measure(
            lambda: RemoteSynthesizer(ray_url, ToneSynthesizer("tone")), args.repeat
        )
    try:
        results = {name: asyncio.run(run()) for name, run in routes.items()}
    finally:
        stop_uvicorn()
        if stop_ray is not None:
            stop_ray()

    print(f"{'route':<16} {'first audio':>12} {'one sentence':>13} {f'{AT_ONCE} at once':>11}")
    for name, figures in results.items():
        print(f"{name:<16} {figures['ttfa_ms']:>9.1f} ms {figures['sentence_ms']:>10.1f} ms "
              f"{figures['eight_ms']:>8.1f} ms")  # fmt: skip
    base = results["in-process"]
    line = [f"http_ttfa_ms={results['HTTP (uvicorn)']['ttfa_ms']:.1f}",
            f"http_sentence_extra_ms={results['HTTP (uvicorn)']['sentence_ms'] - base['sentence_ms']:.1f}"]  # fmt: skip
    if "Ray Serve" in results:
        ray = results["Ray Serve"]
        line += [f"ray_ttfa_ms={ray['ttfa_ms']:.1f}",
                 f"ray_sentence_extra_ms={ray['sentence_ms'] - base['sentence_ms']:.1f}",
                 f"ray_eight_ms={ray['eight_ms']:.1f}"]  # fmt: skip
    print("RESULT " + " ".join(line))


if __name__ == "__main__":
    main()
