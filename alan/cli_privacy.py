"""`alan forget`: /forget for this machine's own user, the one `alan talk` speaks as. `alan.cli` adds it to the app."""

from __future__ import annotations

from typing import Annotated

import typer

from alan.cli_common import console, errors, settings_or_exit
from alan.cli_engine import local_participant
from engine.errors import TurnError


def forget(
    yes: Annotated[bool, typer.Option("--yes", help="Don't ask for confirmation.")] = False,
) -> None:
    """Delete everything aLAN has stored about you: your voices, conversations and settings."""
    settings = settings_or_exit()
    # The store alone: forgetting needs no speech model.
    from alan.database_check import DatabaseUnusableError, open_database_or_explain
    from engine.store.repository import Store

    who = local_participant()
    try:
        store = Store(open_database_or_explain(settings))
        user = store.find_user(who.platform, who.user_id)
        if user is None:
            console.print(f"Nothing is stored about you ({who.user_id}).")
            return
        if not yes and not typer.confirm(
            f"Delete everything stored about {who.user_id}: your voices, conversations and settings?"
        ):
            console.print("Nothing was deleted.")
            raise typer.Exit(1)
        store.forget_user(user.id)
    except DatabaseUnusableError as error:
        errors.print(f"[red]{error}[/red]", highlight=False)
        raise typer.Exit(1) from None
    except TurnError as error:
        errors.print(f"[red]{error}[/red]\n{getattr(error, 'detail', '')}".rstrip(), highlight=False)
        raise typer.Exit(1) from None
    console.print("Done: your voices, our conversations and your settings are deleted.")
