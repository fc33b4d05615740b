"""What every `alan` command module shares: the consoles and loading the settings.

The command modules (`alan.cli_engine`, `alan.cli_privacy`) import this, never `alan.cli`: `alan.cli` builds the
root app from them, so imports go one way.
"""

from __future__ import annotations

import os

import typer
from rich.console import Console

from alan.settings import Settings, SettingsError, load_settings

console = Console()
errors = Console(stderr=True)


def settings_or_exit() -> Settings:
    """Load the settings; a bad value ends the command with its variable named, never a traceback."""
    try:
        settings = load_settings()
    except SettingsError as error:
        errors.print(f"[red]{error}[/red]\nSee .env.example for every setting.", highlight=False)
        raise typer.Exit(2) from None
    from alan.logs import configure_logging

    configure_logging(settings.log_level, settings.secret_values())
    if settings.hf_token is not None:
        # The model loaders (faster-whisper, transformers) read the hub token from the environment only: one set in
        # `.env` reaches them this way, for a gated model fetched on first use.
        os.environ.setdefault("HF_TOKEN", settings.hf_token.get_secret_value())
    return settings
