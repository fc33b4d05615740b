"""Can aLAN write its database? Checked before anything else starts, and said in words, never a traceback.

SQLite needs to write the database file and, in WAL mode, to create `alan.db-wal` and `alan.db-shm` beside it,
so the folder must be writable too. `os.access` answers for ordinary users and for read-only mounts; root passes
every other permission check, and a corrupt file only shows when SQLite opens it: `open_database_or_explain`
turns those failures into the same kind of message.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import TYPE_CHECKING

from alan.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


class DatabaseUnusableError(Exception):
    """aLAN can't create, open or write its database; the message says where, why, and how to fix it."""


def _elsewhere(settings: Settings, verb: str = "Set") -> str:
    if settings.database_url:
        return f"{verb} ALAN_DATABASE_URL to another database"
    return f"{verb} ALAN_DATA_DIR to another folder"


def _unwritable(settings: Settings, what: str, path: Path) -> tuple[str, str]:
    user = getpass.getuser()
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"{what} {path} is on a read-only file system", f"{_elsewhere(settings)}, on a writable disk."
    return (
        f"{what} {path} isn't writable by this user ({user})",
        f"{_elsewhere(settings)} that {user} can write, or give {user} write access: `sudo chown -R {user} {path}`.",
    )


def database_problem(settings: Settings) -> tuple[str, str] | None:
    """Why the SQLite database can't be created or written, and the fix; None when it can (as far as
    permissions say: root passes them all, and SQLite's own error is the last word)."""
    from engine.store.database import sqlite_path, sqlite_read_only

    database = sqlite_path(settings.resolved_database_url)
    if database is None:
        return None
    if sqlite_read_only(settings.resolved_database_url):
        return (
            "ALAN_DATABASE_URL opens the database read-only (mode=ro or immutable=1), but aLAN stores every turn",
            "Remove mode=ro / immutable=1 from ALAN_DATABASE_URL.",
        )
    if database.is_dir():
        return f"The database path {database} is a folder, not a file", f"{_elsewhere(settings)}."
    existing = database.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return (
            f"aLAN can't create its data folder {database.parent}: {existing} is a file, not a folder",
            f"{_elsewhere(settings)}, or move {existing} out of the way.",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        return _unwritable(settings, "aLAN's data folder", existing)
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        return _unwritable(settings, "aLAN's database", database)
    return None


def open_failure(settings: Settings, error: BaseException) -> tuple[str, str]:
    """A database error (SQLAlchemy's or the file system's) in the person's words: what happened, and the fix."""
    from sqlalchemy.exc import DBAPIError

    from engine.store.database import sqlite_path

    cause = error.orig if isinstance(error, DBAPIError) else error  # the driver's words, without SQL and links
    database = sqlite_path(settings.resolved_database_url)
    if database is None:  # the URL may hold a password: name the variable, never the value
        return f"aLAN can't open the database of ALAN_DATABASE_URL: {cause}", "Check the URL and that the server is up."
    return (
        f"aLAN can't open its database {database}: {cause}",
        f"Check that it is aLAN's SQLite file and that {getpass.getuser()} can write {database.parent}, "
        f"or {_elsewhere(settings, 'set')}.",
    )


def _sentence(problem: tuple[str, str]) -> str:
    what, fix = problem
    return f"{what}. {fix}"


def check_database(settings: Settings) -> None:
    """Raise `DatabaseUnusableError` if the database can't be created or written."""
    problem = database_problem(settings)
    if problem is not None:
        raise DatabaseUnusableError(_sentence(problem))


def open_database_or_explain(settings: Settings) -> sessionmaker[Session]:
    """Check, then open and migrate the database; any failure becomes one `DatabaseUnusableError` message."""
    from sqlalchemy.exc import SQLAlchemyError

    from engine.store.database import open_database

    check_database(settings)
    try:
        return open_database(settings.resolved_database_url)
    except (SQLAlchemyError, OSError) as error:
        raise DatabaseUnusableError(_sentence(open_failure(settings, error))) from error
