"""aLAN's settings, read from the environment and a `.env` file.

Every setting has one environment variable (listed in `.env.example`). A wrong value is reported by its
variable name at start-up (see `load_settings`), never as a traceback, and tokens are held as `SecretStr` so
they never show up in logs, reprs or error messages.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from alan.platforms import PLATFORMS

DEFAULT_TELEGRAM_API_URL = "https://api.telegram.org"


class SettingsError(Exception):
    """A setting is missing or wrong; the message names the variable and says what is expected."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    data_dir: Path = Field(Path("./data"), validation_alias="ALAN_DATA_DIR")
    database_url: str | None = Field(None, validation_alias="ALAN_DATABASE_URL")

    stt_model: str = Field("small", validation_alias="ALAN_STT_MODEL")
    tts_model: str = Field("sesame/csm-1b", validation_alias="ALAN_TTS_MODEL")
    # Which speech synthesizer speaks, a key of engine.tts.SYNTHESIZERS: CSM, or "tone" to try aLAN without a model.
    tts_backend: str = Field("csm", validation_alias="ALAN_TTS_BACKEND")
    # How many sentences the speech service speaks in one frame loop; unset: from the device (its free memory on a
    # GPU, 8 on a CPU). And how many prompt positions a newcomer prefills between two frames of the others.
    tts_max_batch: int | None = Field(None, ge=1, le=64, validation_alias="ALAN_TTS_MAX_BATCH")
    tts_prefill_chunk: int = Field(64, ge=8, le=2048, validation_alias="ALAN_TTS_PREFILL_CHUNK")
    # CSM's weights in memory: bf16 on a GPU and on CPUs with native bf16 (`auto`), fp32, or int8 (CPU only).
    tts_weights: Literal["auto", "fp32", "bf16", "int8"] = Field("auto", validation_alias="ALAN_TTS_WEIGHTS")
    # Replay the speech frame step as CUDA graphs (auto: wherever CUDA is); `off` runs it eagerly.
    tts_cuda_graphs: Literal["auto", "off"] = Field("auto", validation_alias="ALAN_TTS_CUDA_GRAPHS")
    # Which chat-model backend writes the replies, a key of engine.llm.CHAT_BACKENDS.
    llm_backend: str = Field("ollama", validation_alias="ALAN_LLM_BACKEND")
    llm_model: str = Field("llama3.2:3b", validation_alias="ALAN_LLM_MODEL")
    ollama_host: str = Field("http://127.0.0.1:11434", validation_alias=AliasChoices("OLLAMA_HOST", "ALAN_OLLAMA_HOST"))
    # The OpenAI-compatible API's root for the `openai` backend, e.g. http://127.0.0.1:8000/v1.
    llm_base_url: str = Field("", validation_alias="ALAN_LLM_BASE_URL")
    llm_api_key: SecretStr | None = Field(None, validation_alias="ALAN_LLM_API_KEY")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", validation_alias="ALAN_DEVICE")
    # Where speech is made: empty, in this process; or the URL of the speech deployment (`alan speech serve`, Ray
    # Serve on GPU nodes), e.g. http://speech-head:8000/speech, shared by every aLAN process.
    speech_url: str = Field("", validation_alias="ALAN_SPEECH_URL")
    # Hugging Face token for gated models (sesame/csm-1b); huggingface_hub's own login works too.
    hf_token: SecretStr | None = Field(None, validation_alias=AliasChoices("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"))

    # What people call aLAN: in a voice channel with several people it answers when this name starts or ends what
    # someone says (in any spelling Whisper writes for it: Alan, Allen, Allan…).
    bot_name: str = Field("Alan", min_length=1, max_length=40, validation_alias="ALAN_BOT_NAME")

    max_audio_seconds: float = Field(120.0, gt=0, validation_alias="ALAN_MAX_AUDIO_SECONDS")
    max_audio_bytes: int = Field(20 * 1024 * 1024, gt=0, validation_alias="ALAN_MAX_AUDIO_BYTES")

    # Each platform's token (its entry in alan.platforms.PLATFORMS names the field); unset means "not configured".
    discord_token: SecretStr | None = Field(None, validation_alias="DISCORD_TOKEN")
    telegram_token: SecretStr | None = Field(None, validation_alias="TELEGRAM_TOKEN")
    telegram_api_url: str = Field(DEFAULT_TELEGRAM_API_URL, validation_alias="TELEGRAM_API_URL")
    # Comma-separated Telegram user ids allowed to talk to the bot; empty means everyone.
    telegram_allowed_users: str = Field("", validation_alias="ALAN_TELEGRAM_ALLOWED_USERS")
    # Public HTTPS URL Telegram should post updates to; empty means long polling.
    telegram_webhook_url: str = Field("", validation_alias="ALAN_TELEGRAM_WEBHOOK_URL")
    telegram_webhook_port: int = Field(8443, gt=0, lt=65536, validation_alias="ALAN_TELEGRAM_WEBHOOK_PORT")
    telegram_webhook_secret: SecretStr | None = Field(None, validation_alias="ALAN_TELEGRAM_WEBHOOK_SECRET")
    # Comma-separated Discord server ids to sync slash commands to at once (global sync takes up to an hour).
    discord_guild_ids: str = Field("", validation_alias="ALAN_DISCORD_GUILD_IDS")
    # A bot in many servers runs as several processes, each with some of Discord's shards: the ids this process
    # runs (comma-separated) out of ALAN_DISCORD_SHARD_COUNT in all. Empty: this process runs them all.
    discord_shards: str = Field("", validation_alias="ALAN_DISCORD_SHARDS")
    discord_shard_count: int | None = Field(None, ge=1, le=10_000, validation_alias="ALAN_DISCORD_SHARD_COUNT")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", validation_alias="ALAN_LOG_LEVEL")

    @field_validator("ollama_host", "telegram_api_url")
    @classmethod
    def _must_be_http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("llm_base_url", "speech_url")
    @classmethod
    def _http_url_or_empty(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)")
        return value

    @field_validator("llm_backend", "tts_backend", mode="before")
    @classmethod
    def _lower_backend(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    # The registries are read when the settings load, not on import: `alan --help` needs neither.
    @field_validator("tts_backend")
    @classmethod
    def _known_synthesizer(cls, value: str) -> str:
        from engine.tts import SYNTHESIZERS

        return _one_of(value, SYNTHESIZERS)

    @field_validator("llm_backend")
    @classmethod
    def _known_chat_backend(cls, value: str) -> str:
        from engine.llm import CHAT_BACKENDS

        return _one_of(value, CHAT_BACKENDS)

    @model_validator(mode="after")
    def _openai_needs_a_base_url(self) -> Settings:
        if self.llm_backend == "openai" and not self.llm_base_url:
            raise ValueError(
                "ALAN_LLM_BASE_URL: required with ALAN_LLM_BACKEND=openai; set it to the server's API root, "
                "e.g. http://127.0.0.1:8000/v1"
            )
        return self

    @model_validator(mode="after")
    def _shards_within_count(self) -> Settings:
        if self.discord_shards and self.discord_shard_count is None:
            raise ValueError(
                "ALAN_DISCORD_SHARDS: needs ALAN_DISCORD_SHARD_COUNT, the number of shards across every process"
            )
        if self.discord_shard_count is not None and any(
            shard >= self.discord_shard_count for shard in self.discord_shard_id_list
        ):
            raise ValueError(
                f"ALAN_DISCORD_SHARDS: shard ids run from 0 to ALAN_DISCORD_SHARD_COUNT - 1 "
                f"({self.discord_shard_count - 1})"
            )
        return self

    @field_validator("telegram_allowed_users", "discord_guild_ids", "discord_shards")
    @classmethod
    def _comma_separated_ids(cls, value: str) -> str:
        ids = [part.strip() for part in value.split(",") if part.strip()]
        if not all(part.isdigit() for part in ids):
            raise ValueError("must be a comma-separated list of numeric ids")
        return ",".join(ids)

    @field_validator("telegram_webhook_url")
    @classmethod
    def _https_or_empty(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith("https://"):
            raise ValueError("must be an https:// URL (Telegram only posts to HTTPS), or empty for polling")
        return value

    @field_validator(
        *(platform.token_setting for platform in PLATFORMS),
        "telegram_webhook_secret",
        "llm_api_key",
        "hf_token",
        "tts_max_batch",
        "discord_shard_count",
        mode="before",
    )
    @classmethod
    def _blank_token_is_unset(cls, value: object) -> object:
        # `.env.example` ships `DISCORD_TOKEN=` and `ALAN_TTS_MAX_BATCH=`: an empty value means "not set".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("bot_name")
    @classmethod
    def _a_name_to_call(cls, value: str) -> str:
        name = " ".join(value.split())
        if not re.search(r"[^\W\d_]", name):
            raise ValueError("needs letters: it is the name people say to address the bot, e.g. Alan")
        return name

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'alan.db').resolve()}"

    @property
    def llm_url(self) -> str:
        """Where the chosen chat backend is: Ollama's host, or the OpenAI-compatible API root."""
        return self.llm_base_url if self.llm_backend == "openai" else self.ollama_host

    @property
    def telegram_allowed_user_ids(self) -> frozenset[int]:
        return frozenset(int(part) for part in self.telegram_allowed_users.split(",") if part)

    @property
    def discord_guild_id_list(self) -> list[int]:
        return [int(part) for part in self.discord_guild_ids.split(",") if part]

    @property
    def discord_shard_id_list(self) -> list[int]:
        """The Discord shards this process runs; empty: all of them (discord.py decides how many)."""
        return sorted({int(part) for part in self.discord_shards.split(",") if part})

    def secret_values(self) -> list[str]:
        """Every secret in the settings, for scrubbing from logs: tokens, the webhook secret, the LLM's API key,
        the Hugging Face token, a password in a URL (the database's included)."""
        tokens = [platform.token(self) for platform in PLATFORMS]
        secrets = [
            secret.get_secret_value()
            for secret in (*tokens, self.telegram_webhook_secret, self.llm_api_key, self.hf_token)
            if secret is not None
        ]
        urls = (self.ollama_host, self.llm_base_url, self.speech_url, self.database_url or "")
        passwords = [_url_password(url) for url in urls]
        return [*secrets, *(password for password in passwords if password)]

    @property
    def configured_platforms(self) -> list[str]:
        """The names of the platforms whose token is set, in `PLATFORMS` order."""
        return [platform.name for platform in PLATFORMS if platform.is_configured(self)]


def _url_password(url: str) -> str | None:
    """The password in `url`, if any; None for a URL too broken to read (it is reported elsewhere)."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _one_of(value: str, choices: Collection[str]) -> str:
    """`value` if it is one of `choices` (a backend registry's names); else pydantic's own wording for a Literal."""
    names = [repr(choice) for choice in choices]
    if value not in choices:
        either = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
        raise PydanticCustomError("unknown_choice", "Input should be {either}", {"either": either})
    return value


def _variable_name(field_name: str) -> str:
    field = Settings.model_fields.get(field_name)
    alias = field.validation_alias if field else None
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return field_name.upper()


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's validation report into one readable `SettingsError`.

    The message names each bad variable and what was expected, never the value (it could be a token).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = []
        for item in error.errors():
            if not item["loc"]:  # a check across settings: its message names the variables itself
                problems.append(str(item["msg"]).removeprefix("Value error, "))
                continue
            problems.append(f"{_variable_name(str(item['loc'][0]))}: {item['msg']}")
        raise SettingsError("Invalid settings:\n  " + "\n  ".join(problems)) from None
