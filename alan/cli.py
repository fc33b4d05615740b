"""The `alan` command line: the root app, built from the command modules.

Imports go one way: `alan.cli` imports the command modules (`alan.cli_engine`, `alan.cli_privacy`, `alan.cli_memory`)
and adds their commands here; they import `alan.cli_common` (`alan.cli_privacy` and `alan.cli_memory` also the
engine helpers of `alan.cli_engine`), never `alan.cli`. Every module keeps its heavy imports (PyTorch, transformers,
the chat libraries) inside the command functions, so `alan --help` starts at once.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from alan.cli_common import console, errors, settings_or_exit
from alan.cli_engine import say, talk, voice_app
from alan.cli_memory import memory_app, reset
from alan.cli_models import models_app
from alan.cli_privacy import forget
from alan.cli_speech import speech_app
from alan.platforms import token_instructions

app = typer.Typer(
    help="aLAN, your everyday companion: a self-hosted voice companion for Discord and Telegram.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Manage aLAN's database.", no_args_is_help=True)


@app.command()
def run() -> None:
    """Start aLAN on every configured chat platform."""
    settings = settings_or_exit()
    if not settings.configured_platforms:
        errors.print(
            f"No chat platform is configured. Set {token_instructions()} in the environment or in .env, "
            "then run `alan run` again.",
            highlight=False,
        )
        raise typer.Exit(1)
    from alan.app import AllPlatformsFailedError, PlatformUnavailableError, run_platforms
    from alan.database_check import DatabaseUnusableError, check_database

    try:
        check_database(settings)  # before the platforms and models load: a read-only data dir fails at once
        run_platforms(settings)
    except (DatabaseUnusableError, PlatformUnavailableError, AllPlatformsFailedError) as error:
        errors.print(f"[red]{error}[/red]", highlight=False)
        raise typer.Exit(1) from None


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (aLAN also does this on start)."""
    settings = settings_or_exit()
    from alan.database_check import DatabaseUnusableError, open_database_or_explain
    from engine.store.database import create_db_engine, current_revision

    try:
        open_database_or_explain(settings)  # migrates to the newest revision
    except DatabaseUnusableError as error:
        errors.print(f"[red]{error}[/red]", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"Database at revision {current_revision(create_db_engine(settings.resolved_database_url))}.")


@app.command()
def doctor(
    skip: Annotated[list[str] | None, typer.Option(help="Skip a check by name (e.g. --skip llm); repeatable.")] = None,
) -> None:
    """Show what is ready and what is missing, with the fix for each."""
    from alan.doctor import Status, run_checks

    settings = settings_or_exit()
    checks = run_checks(settings, skip=set(skip or ()))
    table = Table(title="aLAN doctor")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")  # a long path wraps, never ends in "…"
    colours = {Status.OK: "green", Status.MISSING: "yellow", Status.FAILED: "red"}
    for check in checks:
        colour = colours[check.status]
        table.add_row(check.name, f"[{colour}]{check.status.value}[/{colour}]", check.detail, check.fix)
    # Piped or logged, the output has no width to fit: print the table as wide as its content, so paths and
    # fixes stay whole on one line (rich would otherwise assume 80 columns).
    out = console
    if not console.is_terminal:
        out = Console(width=Measurement.get(console, console.options.update_width(10_000), table).maximum)
    out.print(table)
    if any(check.status is Status.FAILED for check in checks):
        raise typer.Exit(1)


@app.command()
def health(
    max_age: Annotated[float, typer.Option(min=1, help="Seconds a heartbeat stays fresh.")] = 60.0,
) -> None:
    """Exit 0 if the running `alan run` beat lately, else 1 with the reason (the container's health check)."""
    from alan.health import check_heartbeat
    from alan.settings import SettingsError, load_settings

    # Plain one-line output, no rich wrapping; and only 0 or 1: Docker reserves a health check's exit code 2.
    try:
        settings = load_settings()
    except SettingsError as error:
        typer.echo(f"unhealthy: {' '.join(str(error).split())}", err=True)
        raise typer.Exit(1) from None
    result = check_heartbeat(settings.data_dir, max_age_s=max_age)
    if not result.healthy:
        typer.echo(f"unhealthy: {result.reason}", err=True)
        raise typer.Exit(1)
    typer.echo(f"healthy: {result.reason}")


# The commands of the other modules, in the order `alan --help` lists them (commands first, then the groups).
app.command()(talk)
app.command()(say)
app.command()(reset)
app.command()(forget)
app.add_typer(db_app, name="db")
app.add_typer(voice_app, name="voice")
app.add_typer(memory_app, name="memory")
app.add_typer(models_app, name="models")
app.add_typer(speech_app, name="speech")


if __name__ == "__main__":  # `python -m alan.cli`
    app()
