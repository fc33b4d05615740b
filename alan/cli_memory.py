"""`alan memory …` and `alan reset`: /memory and /reset for this machine's own user, the one `alan talk` speaks as.

`alan.cli` adds `memory_app` and `reset` to the app. The words are the platforms' (`bot.memory_text`), with the
commands spelt for a terminal. Building the conversation loads no model, so these stay quick.
"""

from __future__ import annotations

from typing import Annotated

import typer

from alan.cli_common import console
from alan.cli_engine import closing, conversation_or_exit, local_participant, run_or_exit

memory_app = typer.Typer(
    help="See and manage what aLAN remembers about you between conversations.", no_args_is_help=True
)


def _say(text: str) -> None:
    # Facts are the person's own words: a "[" in one is text, not rich markup.
    console.print(text, markup=False, highlight=False)


@memory_app.command("list")
def memory_list() -> None:
    """List what aLAN remembers about you, numbered, with where and when you told it."""
    from bot.memory_text import CLI, listing_text

    conversation = conversation_or_exit()
    listing = run_or_exit(closing(conversation, conversation.memory(local_participant())))
    _say(listing_text(listing, CLI))


@memory_app.command("forget")
def memory_forget(number: Annotated[int, typer.Argument(help="The fact's number in `alan memory list`.")]) -> None:
    """Forget one fact."""
    from bot.memory_text import forgotten

    conversation = conversation_or_exit()
    who = local_participant()
    if not run_or_exit(conversation.knows(who)):  # asking must not store someone who was never here
        _say("I don't remember anything about you yet.")
        raise typer.Exit(1)
    text = run_or_exit(closing(conversation, conversation.forget_fact(who, number)))
    _say(forgotten(text))


@memory_app.command("clear")
def memory_clear(yes: Annotated[bool, typer.Option("--yes", help="Don't ask for confirmation.")] = False) -> None:
    """Forget everything aLAN remembers about you (your conversations and voices stay)."""
    from bot.memory_text import clear_question, cleared

    conversation = conversation_or_exit()
    who = local_participant()
    if not run_or_exit(conversation.knows(who)):
        _say("I don't remember anything about you yet.")
        return
    count = len(run_or_exit(conversation.memory(who)).facts)
    if count and not yes and not typer.confirm(clear_question(count)):
        _say("Nothing was forgotten.")
        raise typer.Exit(1)
    # With no fact listed there is nothing to lose: no question (a summary of older talks, if any, goes too).
    _say(cleared(run_or_exit(closing(conversation, conversation.clear_memory(who)))))


def _switch(enabled: bool) -> None:
    from bot.memory_text import CLI, switched

    conversation = conversation_or_exit()
    run_or_exit(closing(conversation, conversation.set_memory_enabled(local_participant(), enabled)))
    _say(switched(enabled, CLI))


@memory_app.command("off")
def memory_off() -> None:
    """Stop aLAN noting new things about you (what it remembers stays until cleared)."""
    _switch(False)


@memory_app.command("on")
def memory_on() -> None:
    """Let aLAN note things you tell it about yourself again."""
    _switch(True)


def reset() -> None:
    """Forget your conversation with aLAN (as `alan talk`'s user); your voices and what it remembers stay."""
    conversation = conversation_or_exit()
    who = local_participant()
    if not run_or_exit(conversation.knows(who)):
        console.print("Nothing to reset: we haven't talked yet.")
        return
    count = run_or_exit(closing(conversation, conversation.reset(who)))
    kept = "Your voices, and what I remember about you, are kept."
    console.print(f"Done: I've forgotten our conversation ({count} messages). {kept}")
