from __future__ import annotations

from pathlib import Path

import pytest

from alan.settings import DEFAULT_TELEGRAM_API_URL, SettingsError, load_settings
from engine.llm import CHAT_BACKENDS
from engine.tts import SYNTHESIZERS


def test_defaults_point_at_local_services(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.data_dir == Path("data")
    assert settings.resolved_database_url == f"sqlite:///{(clean_env / 'data' / 'alan.db').resolve()}"
    assert settings.tts_model == "sesame/csm-1b"
    assert settings.ollama_host == "http://127.0.0.1:11434"
    assert settings.device == "auto"
    assert settings.telegram_api_url == DEFAULT_TELEGRAM_API_URL
    assert settings.configured_platforms == []


def test_reads_dotenv_and_environment_overrides_it(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("ALAN_LLM_MODEL=qwen3:4b\nALAN_DEVICE=cpu\nTELEGRAM_TOKEN=123:abc\n")
    monkeypatch.setenv("ALAN_DEVICE", "cuda")
    settings = load_settings()
    assert settings.llm_model == "qwen3:4b"
    assert settings.device == "cuda"
    assert settings.configured_platforms == ["telegram"]


def test_bad_values_are_reported_by_variable_name(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALAN_DEVICE", "gpu")
    monkeypatch.setenv("OLLAMA_HOST", "localhost:11434")
    monkeypatch.setenv("ALAN_MAX_AUDIO_SECONDS", "-3")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "ALAN_DEVICE" in message
    assert "OLLAMA_HOST" in message
    assert "ALAN_MAX_AUDIO_SECONDS" in message


def test_an_unknown_speech_synthesizer_is_refused_with_the_choices(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALAN_TTS_BACKEND", "espeak")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "ALAN_TTS_BACKEND: Input should be 'csm' or 'tone'" in str(raised.value)


def test_the_backend_settings_accept_what_the_registries_hold(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new backend is its module plus one registry line: the settings need no change."""
    monkeypatch.setitem(SYNTHESIZERS, "espeak", "engine.tts.espeak:EspeakSynthesizer")
    monkeypatch.setitem(CHAT_BACKENDS, "llamacpp", CHAT_BACKENDS["openai"])
    monkeypatch.setenv("ALAN_TTS_BACKEND", "eSpeak")
    monkeypatch.setenv("ALAN_LLM_BACKEND", "llamacpp")
    settings = load_settings()
    assert (settings.tts_backend, settings.llm_backend) == ("espeak", "llamacpp")


def test_tokens_never_show_in_reprs_or_errors(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_TOKEN", "123456:very-secret-token")
    monkeypatch.setenv("DISCORD_TOKEN", "discord-secret-token")
    settings = load_settings()
    assert "very-secret-token" not in repr(settings) and "discord-secret-token" not in str(settings)
    assert settings.telegram_token is not None
    assert settings.telegram_token.get_secret_value() == "123456:very-secret-token"
    monkeypatch.setenv("TELEGRAM_API_URL", "ftp://example")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "very-secret-token" not in str(raised.value)
    assert "TELEGRAM_API_URL" in str(raised.value)


def test_blank_tokens_mean_unconfigured(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "  ")
    monkeypatch.setenv("TELEGRAM_TOKEN", "")
    assert load_settings().configured_platforms == []


def test_env_example_documents_every_setting() -> None:
    from alan.settings import Settings, _variable_name

    example = (Path(__file__).parents[1] / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"\n{_variable_name(name)}=" in example, f"{_variable_name(name)} missing from .env.example"


def test_every_secret_is_listed_for_scrubbing_from_logs(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_TOKEN", "123:tg-secret")
    monkeypatch.setenv("DISCORD_TOKEN", "dc-secret")
    monkeypatch.setenv("ALAN_TELEGRAM_WEBHOOK_SECRET", "hook-secret")
    monkeypatch.setenv("OLLAMA_HOST", "https://alan:ollama-pass@llm.example:443")
    assert set(load_settings().secret_values()) == {"123:tg-secret", "dc-secret", "hook-secret", "ollama-pass"}


def test_each_platform_entry_reads_its_own_token_setting(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alan.platforms import PLATFORMS
    from alan.settings import Settings, _variable_name

    assert [platform.name for platform in PLATFORMS] == ["telegram", "discord"]
    for platform in PLATFORMS:
        assert platform.token_setting in Settings.model_fields, platform.name
        assert _variable_name(platform.token_setting) == platform.token_variable, platform.name
    for platform in PLATFORMS:  # one token set: that platform alone is configured
        monkeypatch.setenv(platform.token_variable, f"{platform.name}-token")
        settings = load_settings()
        assert settings.configured_platforms == [platform.name]
        assert platform.token(settings).get_secret_value() == f"{platform.name}-token"  # type: ignore[union-attr]
        monkeypatch.delenv(platform.token_variable)


def test_the_speech_service_settings_are_checked_and_blank_is_unset(clean_env: Path) -> None:
    (clean_env / ".env").write_text("ALAN_TTS_MAX_BATCH=\nALAN_TTS_PREFILL_CHUNK=32\n")
    settings = load_settings()
    assert settings.tts_max_batch is None and settings.tts_prefill_chunk == 32
    (clean_env / ".env").write_text("ALAN_TTS_MAX_BATCH=0\n")
    with pytest.raises(SettingsError, match="ALAN_TTS_MAX_BATCH"):
        load_settings()


def test_the_speech_weight_and_graph_settings_reach_the_synthesizer(clean_env: Path) -> None:
    from alan.engine_factory import synthesizer_options

    settings = load_settings()
    assert (settings.tts_weights, settings.tts_cuda_graphs) == ("auto", "auto")
    (clean_env / ".env").write_text("ALAN_TTS_WEIGHTS=int8\nALAN_TTS_CUDA_GRAPHS=off\n")
    settings = load_settings()
    options = synthesizer_options(settings)
    assert (options.weights, options.cuda_graphs) == ("int8", False)
    (clean_env / ".env").write_text("ALAN_TTS_WEIGHTS=int4\n")
    with pytest.raises(SettingsError, match="ALAN_TTS_WEIGHTS"):
        load_settings()


def test_the_bot_name_needs_letters_and_is_kept_on_one_line(clean_env: Path) -> None:
    assert load_settings().bot_name == "Alan"
    assert load_settings(ALAN_BOT_NAME="  Mister\n Robot ").bot_name == "Mister Robot"
    with pytest.raises(SettingsError, match="ALAN_BOT_NAME"):
        load_settings(ALAN_BOT_NAME="42")
