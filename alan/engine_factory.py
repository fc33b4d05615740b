"""Builds the conversation engine from the settings: the one place that picks the backends."""

from __future__ import annotations

from alan.database_check import open_database_or_explain
from alan.settings import Settings
from engine.chat_model import ChatModel, LlmStatus
from engine.conversation import Conversation
from engine.llm import make_chat_model
from engine.speech_synthesizer import SpeechSynthesizer, SynthesizerOptions
from engine.store.repository import Store
from engine.stt import WhisperTranscriber
from engine.tts import make_synthesizer
from engine.tts.remote import RemoteSynthesizer


def build_chat_model(settings: Settings) -> ChatModel:
    """The chat model ALAN_LLM_BACKEND names (the backends are listed in engine.llm.CHAT_BACKENDS)."""
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key is not None else None
    return make_chat_model(settings.llm_backend, settings.llm_model, settings.llm_url, api_key=key)


async def chat_model_status(settings: Settings) -> LlmStatus:
    """Whether the chat backend is reachable and serves ALAN_LLM_MODEL (`alan doctor`, `alan models download`)."""
    chat = build_chat_model(settings)
    try:
        return await chat.check()
    finally:
        await chat.aclose()


def synthesizer_options(settings: Settings) -> SynthesizerOptions:
    """How the speech synthesizer batches and holds its model, from ALAN_TTS_*."""
    return SynthesizerOptions(
        max_batch=settings.tts_max_batch,
        prefill_chunk=settings.tts_prefill_chunk,
        weights=settings.tts_weights,
        cuda_graphs=settings.tts_cuda_graphs == "auto",
    )


def build_synthesizer(settings: Settings) -> SpeechSynthesizer:
    """The synthesizer ALAN_TTS_BACKEND names: in this process, or the speech service at ALAN_SPEECH_URL."""
    synthesizer = make_synthesizer(
        settings.tts_backend, settings.tts_model, settings.device, synthesizer_options(settings)
    )
    if settings.speech_url:
        return RemoteSynthesizer(settings.speech_url, local=synthesizer)  # the local one is never loaded
    return synthesizer


def build_conversation(settings: Settings) -> Conversation:
    """Open (and migrate) the database and set up the models; models load on first use, not here.

    Raises `DatabaseUnusableError` (a message for the person) when the database can't be created or written.
    """
    return Conversation(
        Store(open_database_or_explain(settings)),
        WhisperTranscriber(settings.stt_model, settings.device),
        build_synthesizer(settings),
        build_chat_model(settings),
        max_audio_seconds=settings.max_audio_seconds,
        max_audio_bytes=settings.max_audio_bytes,
        bot_name=settings.bot_name,
    )
