"""Each person's language, carried between turns: derived from their stored turns, handed to Whisper as a hint
for clips too short to detect, and to the LLM as the language to answer in. On the tiny models (the real
Whisper's version of this is in test_stt_real.py)."""

from __future__ import annotations

from pathlib import Path

from engine.conversation import Conversation, Participant
from engine.events import Heard
from engine.llm import SYSTEM_PROMPT, OllamaChat, language_instruction
from engine.store.repository import Store
from tests.conftest import espeak_ogg
from tests.fakes.ollama_server import FakeOllama

LUCIA = Participant("telegram", "4004", "chat-4", "Lucía")


def test_no_turns_no_language(store: Store) -> None:
    user = store.user("telegram", "1")
    assert store.user_language(user.id) is None
    store.add_turn(user.id, "chat", "user", "typed, so no language", language=None)
    store.add_turn(user.id, "chat", "assistant", "hola", language="es")  # aLAN's turns are not the person's
    assert store.user_language(user.id) is None


def test_the_most_frequent_recent_language_wins(store: Store) -> None:
    user = store.user("telegram", "1")
    for language in ("es", "es", "en", "es"):
        store.add_turn(user.id, "chat", "user", "…", language=language)
    assert store.user_language(user.id) == "es"  # one misdetected clip does not flip it


def test_only_recent_turns_count_and_a_tie_goes_to_the_newest(store: Store) -> None:
    user = store.user("telegram", "1")
    for language in ("en", "en", "en", "de", "de"):
        store.add_turn(user.id, "chat", "user", "…", language=language)
    assert store.user_language(user.id) == "en"
    assert store.user_language(user.id, recent=4) == "de"  # de, de, en, en: a tie, de is newer
    assert store.user_language(user.id, recent=2) == "de"


def test_the_language_is_per_person_and_forgotten_with_them(store: Store) -> None:
    ann, lucia = store.user("telegram", "1"), store.user("telegram", "2")
    store.add_turn(ann.id, "chat", "user", "…", language="en")
    store.add_turn(lucia.id, "chat", "user", "…", language="es")
    assert (store.user_language(ann.id), store.user_language(lucia.id)) == ("en", "es")
    store.forget_user(lucia.id)
    again = store.user("telegram", "2")
    assert store.user_language(again.id) is None
    assert store.user_language(ann.id) == "en"


def test_the_system_prompt_names_the_language_to_answer_in() -> None:
    chat = OllamaChat("m")
    spanish = chat.build_messages([], "hola", language="es")[0]
    assert spanish == {"role": "system", "content": f"{SYSTEM_PROMPT}\n\nThe person speaks Spanish; answer in Spanish."}
    # English is what the prompt is written in: nothing added; nor when the language is unknown.
    assert chat.build_messages([], "hi", language="en")[0]["content"] == SYSTEM_PROMPT
    assert chat.build_messages([], "hi")[0]["content"] == SYSTEM_PROMPT
    assert language_instruction("sw") == (
        "The person speaks the language with ISO 639-1 code 'sw'; answer in that language."
    )


async def test_a_known_language_reaches_whisper_and_the_llm(
    conversation: Conversation, store: Store, ollama: FakeOllama, tmp_path: Path
) -> None:
    user = store.user(LUCIA.platform, LUCIA.user_id, LUCIA.display_name)
    store.add_turn(user.id, LUCIA.scope, "user", "Me gusta mucho pasear.", language="es")
    ollama.script("Vale.")
    events = [event async for event in conversation.turn(LUCIA, audio=espeak_ogg("si", tmp_path), speak=False)]
    # The tiny Whisper is never sure of a language, so the person's own is used...
    assert [event.language for event in events if isinstance(event, Heard)] == ["es"]
    # ... stored with the turn (so it keeps being known) ...
    assert store.recent_turns(user.id, LUCIA.scope)[-2].language == "es"
    # ... and the LLM is told to answer in it.
    (request,) = ollama.chat_requests
    assert request["messages"][0]["content"].endswith("The person speaks Spanish; answer in Spanish.")


async def test_a_text_turn_adds_no_language(conversation: Conversation, ollama: FakeOllama) -> None:
    ollama.script("Hello.")
    _ = [event async for event in conversation.turn(LUCIA, text="hello there", speak=False)]
    (request,) = ollama.chat_requests
    assert request["messages"][0]["content"] == SYSTEM_PROMPT
