"""`alan forget`: /forget for this machine's own user, the one `alan talk` speaks as. `alan.cli` adds it to the app."""

from __future__ import annotations

from typing import Annotated

import typer

from alan.cli_common import console
from alan.cli_engine import closing, conversation_or_exit, local_participant, run_or_exit


def forget(
    yes: Annotated[bool, typer.Option("--yes", help="Don't ask for confirmation.")] = False,
) -> None:
    """Delete everything aLAN has stored about you: voices, conversations, memory, settings (a linked account's too)."""
    # Through the conversation like /forget on a platform; building it loads no model, so this stays quick.
    conversation = conversation_or_exit()
    who = local_participant()
    if not run_or_exit(conversation.knows(who)):
        console.print(f"Nothing is stored about you ({who.user_id}).")
        return
    if not yes and not typer.confirm(
        f"Delete everything stored about {who.user_id}: your voices, conversations, memory and settings "
        "(and a linked account's)?"
    ):
        console.print("Nothing was deleted.")
        raise typer.Exit(1)
    # Closed after: a speech service (ALAN_SPEECH_URL) must hear the forget request before this process ends.
    run_or_exit(closing(conversation, conversation.forget(who)))
    console.print("Done: your voices, our conversations, what I remembered and your settings are deleted.")
