"""`alan talk`, `alan say` and `alan voice …`: the engine from the command line, as this machine's own user.

The local user's conversation is stored like anyone's (platform "local"), so a second `alan talk` continues
the first. `alan.cli` adds `talk`, `say` and `voice_app` to the root app.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from alan.cli_common import console, errors, settings_or_exit
from engine.consent import CONSENT_STATEMENT

if TYPE_CHECKING:  # the engine brings PyTorch and transformers (seconds): imported when a command runs, not for --help
    from engine.conversation import Conversation, Participant
    from engine.events import SpeechChunk

voice_app = typer.Typer(help="Clone, list, choose, rename and delete voices.", no_args_is_help=True)

T = TypeVar("T")

OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Where to write the reply: .ogg or .wav.")]
VoiceOption = Annotated[str | None, typer.Option("--voice", help="Speak with this voice instead of the active one.")]


def local_participant() -> Participant:
    from engine.conversation import Participant

    return Participant("local", getpass.getuser(), "cli", getpass.getuser())


def conversation_or_exit() -> Conversation:
    """The conversation the settings describe (no model loads yet); a bad setting or database ends the command."""
    from alan.database_check import DatabaseUnusableError
    from alan.engine_factory import build_conversation

    settings = settings_or_exit()
    try:
        return build_conversation(settings)
    except DatabaseUnusableError as error:
        errors.print(f"[red]{error}[/red]", highlight=False)
        raise typer.Exit(1) from None


def run_or_exit(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run an engine call, turning the engine's user-facing errors into a message and exit code 1."""
    from engine.errors import ServiceUnavailableError, TurnError

    try:
        return asyncio.run(coroutine)
    except ServiceUnavailableError as error:
        errors.print(f"[red]{error}[/red]\n{error.detail}", highlight=False)
    except TurnError as error:
        errors.print(f"[red]{error}[/red]", highlight=False)
    raise typer.Exit(1)


async def closing(conversation: Conversation, coroutine: Coroutine[Any, Any, T]) -> T:
    """Await `coroutine`, then release the conversation: its memory worker, the LLM client, the speech threads."""
    try:
        return await coroutine
    finally:
        await conversation.aclose()


AUDIO_SUFFIXES = (".ogg", ".wav")
EMPTY_AUDIO_RATE = 48_000  # of a reply with no audio at all: any rate will do, this is Opus's own


def output_problem(path: Path) -> str | None:
    """Why the reply can't be written to `path`, or None: checked before any model runs, not after the turn."""
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        return f"The output file must end in .ogg or .wav, not “{path.name}”."
    if path.is_dir():
        return f"{path} is a folder: give a file name, such as {path / 'reply.ogg'}."
    folder = path.parent
    if not folder.exists():
        return f"The folder {folder} doesn't exist: create it first (`mkdir -p {folder}`) or write the reply elsewhere."
    if not folder.is_dir():
        return f"{folder} is a file, not a folder: the reply can't be written inside it."
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{path} isn't writable by this user: choose another place with -o."
    try:  # root passes every permission check: only a real write shows a read-only disk
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"Can't write to {folder} ({error.strerror or error}): choose another place with -o."
    return None


def _check_output(path: Path) -> None:
    problem = output_problem(path)
    if problem is not None:
        errors.print(problem, highlight=False)
        raise typer.Exit(2)


def _write_audio(path: Path, chunks: list[SpeechChunk]) -> float:
    """Write the chunks back to back at the synthesizer's rate; returns the seconds written."""
    import numpy as np

    from engine.audio import encode_ogg_opus, encode_wav, resample

    rate = chunks[0].sample_rate if chunks else EMPTY_AUDIO_RATE
    parts = [resample(chunk.audio, chunk.sample_rate, rate) for chunk in chunks]  # one backend: one rate, as a rule
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    data = encode_wav(audio, rate) if path.suffix.lower() == ".wav" else encode_ogg_opus(audio, rate)
    try:
        path.write_bytes(data)
    except OSError as error:  # the disk filled up, or the folder went away, during the turn
        errors.print(f"[red]Couldn't write the reply to {path}: {error.strerror or error}.[/red]", highlight=False)
        raise typer.Exit(1) from None
    return len(audio) / rate


async def _load_models(conversation: Conversation, *, listen: bool) -> None:
    """Load the models up front, with a spinner, so timings measure the turn and not the loading."""
    with console.status("Loading the speech models (the first run downloads them)…"):
        await conversation.load_models(hearing_too=listen)


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
    conversation = conversation_or_exit()

    from engine.events import Heard, ReplySentence, SpeechChunk, SpeechUnavailable, TurnFinished

    async def run() -> None:
        await _load_models(conversation, listen=clip is not None)
        chunks: list[SpeechChunk] = []
        events = conversation.turn(local_participant(), audio=clip, text=text, voice_name=voice)
        async for event in events:
            if isinstance(event, Heard):
                console.print(f"[bold]You said:[/bold] {event.text}  [dim]({event.language})[/dim]")
            elif isinstance(event, ReplySentence):
                console.print(f"[bold]aLAN:[/bold] {event.text}")
            elif isinstance(event, SpeechChunk):
                chunks.append(event)
            elif isinstance(event, SpeechUnavailable):
                errors.print(f"[yellow]{event.message}[/yellow]")
            elif isinstance(event, TurnFinished):
                seconds = _write_audio(output, chunks) if chunks else 0.0
                if chunks:
                    console.print(f"Wrote {seconds:.1f} s of speech to {output}")
                timings = "  ".join(f"{name} {value:.2f}s" for name, value in event.timings.items())
                console.print(f"[dim]Timings: {timings}[/dim]")
        # What you told aLAN is remembered in the background, after the answer: the process must not end before
        # that is done, or the next `alan talk` wouldn't know it.
        with console.status("Remembering…"):
            await conversation.memory_settled()

    run_or_exit(closing(conversation, run()))


def say(
    text: Annotated[str, typer.Argument(help="What aLAN should say, word for word.")],
    output: OutputOption = Path("say.ogg"),
    voice: VoiceOption = None,
) -> None:
    """Speak a text as it is (no LLM) in your active voice, or --voice NAME."""
    _check_output(output)
    conversation = conversation_or_exit()

    async def run() -> None:
        await _load_models(conversation, listen=False)
        start = time.perf_counter()
        chunks = [chunk async for chunk in conversation.say(local_participant(), text, voice_name=voice)]
        seconds = _write_audio(output, chunks)
        console.print(f"Wrote {seconds:.1f} s of speech to {output} in {time.perf_counter() - start:.1f} s")

    run_or_exit(run())


@voice_app.command("clone")
def voice_clone(
    clip: Annotated[Path, typer.Argument(help="A clip of the voice: 10–30 s of one person speaking clearly.")],
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
    conversation = conversation_or_exit()

    async def run() -> None:
        # The name is checked before minutes of Whisper and CSM work, not after them.
        voice_name = await _new_voice_name(conversation, name)
        await _load_models(conversation, listen=not transcript)
        draft = await conversation.prepare_clone(clip.read_bytes(), transcript)
        if transcript:
            final = draft.transcript
        else:
            console.print(f"Speech: {draft.seconds:.1f} s. Whisper heard:\n  [bold]{draft.transcript}[/bold]")
            final = typer.prompt("Exactly what is said (Enter keeps Whisper's)", default=draft.transcript)
        if not yes and not typer.confirm(CONSENT_STATEMENT):
            errors.print("Not cloned: consent is needed.")
            raise typer.Exit(1)
        voice = await conversation.save_clone(local_participant(), voice_name, draft, final)
        console.print(f"Voice “{voice.name}” saved and active.")

    run_or_exit(run())


async def _new_voice_name(conversation: Conversation, name: str) -> str:
    """The name, tidied, if it is well-formed and not one of this user's voices yet; else a `BadInputError`."""
    from engine.errors import VoiceNameTakenError
    from engine.voices import check_voice_name

    tidy = check_voice_name(name)
    if await conversation.voice_name_taken(local_participant(), tidy):
        raise VoiceNameTakenError(tidy)
    return tidy


@voice_app.command("list")
def voice_list() -> None:
    """List your voices; * marks the active one."""
    conversation = conversation_or_exit()
    who = local_participant()

    voices = run_or_exit(conversation.voices(who))
    if not voices:
        console.print("No voices yet: `alan voice clone FILE --name NAME`.")
    for voice in voices:
        console.print(f"{'*' if voice.active else ' '} {voice.name}  [dim]({voice.seconds:.0f} s)[/dim]")


@voice_app.command("delete")
def voice_delete(name: Annotated[str, typer.Argument(help="The voice to delete.")]) -> None:
    """Delete one of your voices, its clip and its codes."""
    conversation = conversation_or_exit()

    run_or_exit(conversation.delete_voice(local_participant(), name))
    console.print(f"Deleted “{name}”.")


@voice_app.command("use")
def voice_use(name: Annotated[str, typer.Argument(help="The voice aLAN should answer you in.")]) -> None:
    """Make one of your voices the active one."""
    conversation = conversation_or_exit()
    voice = run_or_exit(conversation.use_voice(local_participant(), name))
    console.print(f"aLAN now answers you in “{voice.name}”.")


@voice_app.command("rename")
def voice_rename(
    name: Annotated[str, typer.Argument(help="The voice's name now.")],
    new_name: Annotated[str, typer.Argument(help="Its new name.")],
) -> None:
    """Rename one of your voices."""
    conversation = conversation_or_exit()
    voice = run_or_exit(conversation.rename_voice(local_participant(), name, new_name))
    console.print(f"Renamed “{name}” to “{voice.name}”.")
