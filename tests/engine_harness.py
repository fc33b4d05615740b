"""Building a real conversation engine on the tiny test models, for tests of everything that sits on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.chat_model import ChatModel
from engine.conversation import Conversation
from engine.llm import OllamaChat
from engine.store.repository import Store
from engine.stt import WhisperTranscriber
from engine.tts.csm import CsmSpeech
from engine.tts.csm_synthesizer import CsmSynthesizer

LLM_MODEL = "llama3.2:3b"


def accept_any_text(segment: Any) -> str | None:
    # A random Whisper is never confident; keep whatever it decodes so the turn goes on.
    return None if segment.text.strip() else "empty"


def make_whisper(model_dir: Path) -> WhisperTranscriber:
    transcriber = WhisperTranscriber(
        str(model_dir), "cpu", cpu_threads=2, temperatures=(0.0,), segment_filter=accept_any_text
    )
    transcriber.load()
    return transcriber


def make_conversation(
    store: Store,
    whisper: WhisperTranscriber,
    speech: CsmSpeech,
    csm_dir: Path,
    host: str,
    *,
    load_tts: Callable[[], CsmSpeech] | None = None,
    llm: ChatModel | None = None,  # another chat backend; by default Ollama's client at `host`
    max_bytes: int = 20 * 1024 * 1024,  # the real default cap
) -> Conversation:
    return Conversation(
        store,
        whisper,
        CsmSynthesizer(str(csm_dir), load=load_tts or (lambda: speech)),
        # Generous timeouts: some tests hold the LLM's second sentence back on purpose.
        llm or OllamaChat(LLM_MODEL, host, first_token_timeout=30, token_timeout=30),
        max_audio_seconds=60,
        max_audio_bytes=max_bytes,
    )
