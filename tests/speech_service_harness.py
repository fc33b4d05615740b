"""The speech service's real HTTP API (alan/speech_api.py) served by uvicorn on its own thread, for the client's
tests; the Ray Serve deployment serves the same API (tests/test_speech_ray.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from alan.speech_api import serve_synthesizer, speech_api
from engine.speech_synthesizer import SpeechSynthesizer
from tests.fakes.local_server import free_port


@contextmanager
def speech_service(synthesizer: SpeechSynthesizer) -> Iterator[str]:
    """Serve `synthesizer` over the speech API until the block ends (then it is closed); yields its URL."""
    port = free_port()
    serve_synthesizer(synthesizer)
    server = uvicorn.Server(uvicorn.Config(speech_api(), host="127.0.0.1", port=port, log_level="warning"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        else:
            raise RuntimeError("the speech API did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        # Closed on the loop it served on (its locks and threads were made there), then the server stops.
        asyncio.run_coroutine_threadsafe(synthesizer.aclose(), loop).result(60)
        server.should_exit = True
        thread.join(10)
        serve_synthesizer(None)
