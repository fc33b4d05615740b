"""Builds the conversation engine from the settings: the one place that picks the backends."""

from __future__ import annotations

from alan.database_check import open_database_or_explain
from alan.settings import Settings
from engine.conversation import Conversation
from engine.llm import OllamaChat
from engine.speech_models import SpeechModels
from engine.store.repository import Store
from engine.stt import WhisperTranscriber
from engine.tts import CsmSpeech
from engine.voices import VoiceLibrary


def build_conversation(settings: Settings) -> Conversation:
    """Open (and migrate) the database and set up the models; models load on first use, not here.

    Raises `DatabaseUnusable` (a message for the person) when the database can't be created or written.
    """
    store = Store(open_database_or_explain(settings))
    models = SpeechModels(
        stt=WhisperTranscriber(settings.stt_model, settings.device),
        load_tts=lambda: CsmSpeech.load(settings.tts_model, settings.device),
        tts_model_name=settings.tts_model,
    )
    return Conversation(
        store,
        models,
        OllamaChat(settings.llm_model, settings.ollama_host),
        VoiceLibrary(store, models, max_upload_bytes=settings.max_audio_bytes),
        max_audio_seconds=settings.max_audio_seconds,
        max_audio_bytes=settings.max_audio_bytes,
    )
