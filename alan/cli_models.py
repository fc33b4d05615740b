"""`alan models download`: fetch the speech models and have the LLM server pull its model, ahead of time.

The work is `alan.model_download`'s; here is what the person sees: a heading per part, the hub's own progress bars
(huggingface_hub's, on stderr), a bar per layer of an Ollama pull, and one line per outcome. It exits 0 only when
everything this machine needs is there. `alan.cli` adds `models_app` to the root app.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from alan.cli_common import console, errors, settings_or_exit

if TYPE_CHECKING:  # huggingface_hub and the engine load when the command runs, not for `alan --help`
    from alan.model_download import Outcome
    from alan.settings import Settings
    from engine.model_files import HubModel

models_app = typer.Typer(help="Fetch the models aLAN needs, ahead of time.", no_args_is_help=True)


class Part(enum.StrEnum):
    stt = "stt"
    tts = "tts"
    llm = "llm"


@models_app.command("download")
def download(
    only: Annotated[
        list[Part] | None, typer.Option("--only", help="Only this part: stt, tts or llm (repeatable).")
    ] = None,
    speech_node: Annotated[
        bool,
        typer.Option(
            "--speech-node",
            help="Fetch the speech synthesis model even though ALAN_SPEECH_URL is set: run this on the speech nodes.",
        ),
    ] = False,
) -> None:
    """Fetch the speech recognition and synthesis models, and have the LLM server pull its model."""
    settings = settings_or_exit()
    from alan.model_download import stt_target, tts_target

    # The token goes to huggingface_hub as an argument: values from .env are not in the environment it reads.
    token = settings.hf_token.get_secret_value() if settings.hf_token is not None else None
    parts = set(only or Part)
    outcomes = []
    if Part.stt in parts:
        outcomes.append(_speech_part("Speech recognition", stt_target(settings), token))
    if Part.tts in parts:
        outcomes.append(_speech_part("Speech synthesis", tts_target(settings, speech_node=speech_node), token))
    if Part.llm in parts:
        outcomes.append(_llm_part(settings))
    if not all(outcome.ok for outcome in outcomes):
        raise typer.Exit(1)


def _speech_part(title: str, target: HubModel | Outcome, token: str | None) -> Outcome:
    from alan.model_download import Outcome, fetch

    if isinstance(target, Outcome):
        console.print(f"[bold]{title}[/bold]")
        return _report(target)
    console.print(f"[bold]{title}:[/bold] {escape(target.label)}", highlight=False)
    return _report(fetch(target, token, say=lambda text: console.print(f"  {escape(text)}…", highlight=False)))


def _llm_part(settings: Settings) -> Outcome:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from alan.llm_pull import PullProgress, prepare_llm

    console.print(
        f"[bold]Language model:[/bold] {escape(settings.llm_model)} ({settings.llm_backend})", highlight=False
    )
    columns = (TextColumn("  {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    # Started on the first line of a pull: a model the server already has draws nothing.
    progress = Progress(*columns, TimeRemainingColumn(), console=console)
    layers: dict[str, TaskID] = {}
    said: set[str] = set()

    def show(step: PullProgress) -> None:
        if not progress.live.is_started:
            progress.start()
        if step.digest:  # a layer downloading: one bar each, as `ollama pull` draws them
            if step.digest not in layers:
                layers[step.digest] = progress.add_task(escape(step.status), total=step.total)
            progress.update(layers[step.digest], total=step.total, completed=step.completed or 0)
        elif step.status not in said and step.status != "success":  # "pulling manifest", "writing manifest"…
            said.add(step.status)
            progress.console.print(f"  {escape(step.status)}", highlight=False)

    try:
        outcome = prepare_llm(settings, show)
    finally:
        if progress.live.is_started:
            progress.stop()
    return _report(outcome)


def _report(outcome: Outcome) -> Outcome:
    if outcome.ok:
        console.print(f"  [green]✓[/green] {escape(outcome.message)}", highlight=False)
    else:
        errors.print(f"  [red]✗ {escape(outcome.message)}[/red]", highlight=False)
    return outcome
