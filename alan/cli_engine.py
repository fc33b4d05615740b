"""`alan talk`, `alan say` and `alan voice …`: the engine from the command line, as this machine's own user.

The local user's conversation is stored like anyone's (platform "local"), so a second `alan talk` continues
the first.
"""

from __future__ import annotations

import asyncio
import getpass
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import typer
from rich.console import Console

from alan.cli import app, settings_or_exit
from engine.audio import CSM_RATE, encode_ogg_opus, encode_wav
from engine.conversation import Conversation, Participant
from engine.events import (
    Heard,
    ReplySentence,
    ServiceUnavailable,
    SpeechChunk,
    SpeechUnavailable,
    TurnError,
    TurnFinished,
)
from engine.voices import CONSENT_STATEMENT

voice_app = typer.Typer(help="Clone, list and delete voices.", no_args_is_help=True)
app.add_typer(voice_app, name="voice")

console = Console()
errors = Console(stderr=True)
T = TypeVar("T")

OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Where to write the reply: .ogg or .wav.")]
VoiceOption = Annotated[str | None, typer.Option("--voice", help="Speak with this voice instead of the active one.")]


def local_participant() -> Participant:
    return Participant("local", getpass.getuser(), "cli", getpass.getuser())


def _conversation() -> Conversation:
    from alan.engine_factory import build_conversation

    return build_conversation(settings_or_exit())


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run an engine call, turning the engine's user-facing errors into a message and exit code 1."""
    try:
        return asyncio.run(coroutine)
    except ServiceUnavailable as error:
        errors.print(f"[red]{error}[/red]\n{error.detail}", highlight=False)
    except TurnError as error:
        errors.print(f"[red]{error}[/red]", highlight=False)
    raise typer.Exit(1)


def _check_output(path: Path) -> None:
    if path.suffix.lower() not in (".ogg", ".wav"):
        errors.print("The output file must end in .ogg or .wav.")
        raise typer.Exit(2)


def _write_audio(path: Path, chunks: list[np.ndarray]) -> float:
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    data = encode_wav(audio, CSM_RATE) if path.suffix.lower() == ".wav" else encode_ogg_opus(audio, CSM_RATE)
    path.write_bytes(data)
    return len(audio) / CSM_RATE


async def _load_models(conversation: Conversation, *, listen: bool) -> None:
    """Load the models up front, with a spinner, so timings measure the turn and not the loading."""
    with console.status("Loading the speech models (the first run downloads them)…"):
        if listen:
            await conversation.models.stt.load_async()  # type: ignore[attr-defined]
        await conversation.models.tts()


@app.command()
def talk(
    audio: Annotated[Path | None, typer.Argument(help="What you say: an audio file.")] = None,
    output: OutputOption = Path("reply.ogg"),
    text: Annotated[str | None, typer.Option("--text", help="Type instead of speaking.")] = None,
    voice: VoiceOption = None,
) -> None:
    """One conversation turn: your audio (or text) in, aLAN's spoken reply out."""
    _check_output(output)
    if (audio is None) == (text is None):
        errors.print("Give either an audio file or --text.")
        raise typer.Exit(2)
    clip = None
    if audio is not None:
        if not audio.is_file():
            errors.print(f"No such file: {audio}")
            raise typer.Exit(2)
        clip = audio.read_bytes()
    conversation = _conversation()

    async def run() -> None:
        await _load_models(conversation, listen=clip is not None)
        chunks: list[np.ndarray] = []
        events = conversation.turn(local_participant(), audio=clip, text=text, voice_name=voice)
        async for event in events:
            if isinstance(event, Heard):
                console.print(f"[bold]You said:[/bold] {event.text}  [dim]({event.language})[/dim]")
            elif isinstance(event, ReplySentence):
                console.print(f"[bold]aLAN:[/bold] {event.text}")
            elif isinstance(event, SpeechChunk):
                chunks.append(event.audio)
            elif isinstance(event, SpeechUnavailable):
                errors.print(f"[yellow]{event.message}[/yellow]")
            elif isinstance(event, TurnFinished):
                seconds = _write_audio(output, chunks) if chunks else 0.0
                if chunks:
                    console.print(f"Wrote {seconds:.1f} s of speech to {output}")
                timings = "  ".join(f"{name} {value:.2f}s" for name, value in event.timings.items())
                console.print(f"[dim]Timings: {timings}[/dim]")

    _run(run())


@app.command()
def say(
    text: Annotated[str, typer.Argument(help="What aLAN should say, word for word.")],
    output: OutputOption = Path("say.ogg"),
    voice: VoiceOption = None,
) -> None:
    """Speak a text as it is (no LLM) in your active voice, or --voice NAME."""
    _check_output(output)
    conversation = _conversation()

    async def run() -> None:
        await _load_models(conversation, listen=False)
        start = time.perf_counter()
        chunks = [chunk.audio async for chunk in conversation.say(local_participant(), text, voice_name=voice)]
        seconds = _write_audio(output, chunks)
        console.print(f"Wrote {seconds:.1f} s of speech to {output} in {time.perf_counter() - start:.1f} s")

    _run(run())


@voice_app.command("clone")
def voice_clone(
    clip: Annotated[Path, typer.Argument(help="A clip of the voice: 10–20 s of one person speaking clearly.")],
    name: Annotated[str, typer.Option("--name", help="A name for the voice.")],
    transcript: Annotated[
        str | None, typer.Option("--transcript", help="Exactly what is said in the clip (else Whisper's, checked)")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help=f"Confirm: {CONSENT_STATEMENT}")] = False,
) -> None:
    """Clone a voice from a clip and make it your active voice."""
    if not clip.is_file():
        errors.print(f"No such file: {clip}")
        raise typer.Exit(2)
    conversation = _conversation()

    async def run() -> None:
        await _load_models(conversation, listen=not transcript)
        draft = await conversation.voices.prepare(clip.read_bytes(), transcript)
        if transcript:
            final = draft.transcript
        else:
            console.print(f"Speech: {draft.seconds:.1f} s. Whisper heard:\n  [bold]{draft.transcript}[/bold]")
            final = typer.prompt("Exactly what is said (Enter keeps Whisper's)", default=draft.transcript)
        if not yes and not typer.confirm(CONSENT_STATEMENT):
            errors.print("Not cloned: consent is needed.")
            raise typer.Exit(1)
        user = await conversation.user(local_participant())
        voice = await conversation.voices.save(user.id, name, draft, final)
        console.print(f"Voice “{voice.name}” saved and active.")

    _run(run())


@voice_app.command("list")
def voice_list() -> None:
    """List your voices; * marks the active one."""
    conversation = _conversation()
    who = local_participant()

    async def run() -> list[tuple[str, bool]]:
        user = await conversation.user(who)
        return conversation.voices.listing(user.id, who.scope)

    voices = _run(run())
    if not voices:
        console.print("No voices yet: `alan voice clone FILE --name NAME`.")
    for name, active in voices:
        console.print(f"{'*' if active else ' '} {name}")


@voice_app.command("delete")
def voice_delete(name: Annotated[str, typer.Argument(help="The voice to delete.")]) -> None:
    """Delete one of your voices, its clip and its codes."""
    conversation = _conversation()

    async def run() -> None:
        user = await conversation.user(local_participant())
        conversation.voices.delete(user.id, name)

    _run(run())
    console.print(f"Deleted “{name}”.")
