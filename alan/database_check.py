"""Can aLAN write its database? Checked before anything else starts, and said in words, never a traceback.

SQLite needs to write the database file and, in WAL mode, to create `alan.db-wal` and `alan.db-shm` beside it,
so the folder must be writable too. `os.access` answers for ordinary users and for read-only mounts; root passes
every other permission check, and a corrupt file only shows when SQLite opens it: `open_database_or_explain`
turns those failures into the same kind of message. A PostgreSQL server shows what is wrong only when aLAN
connects: the message names the server (host, port, database, user), never the password.
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
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from engine.store.database import sqlite_path

    cause = error.orig if isinstance(error, DBAPIError) else error  # the driver's words, without SQL and links
    url = settings.resolved_database_url
    database = sqlite_path(url)
    if database is None:
        try:
            parsed = make_url(url)
        except Exception:  # not even a URL: SQLAlchemy's own words say so
            parsed = None
        if parsed is not None and parsed.get_backend_name() == "postgresql":
            return postgres_failure(url, error)
        # The URL may hold a password: name the variable, never the value.
        return f"aLAN can't open the database of ALAN_DATABASE_URL: {cause}", "Check the URL and that the server is up."
    return (
        f"aLAN can't open its database {database}: {cause}",
        f"Check that it is aLAN's SQLite file and that {getpass.getuser()} can write {database.parent}, "
        f"or {_elsewhere(settings, 'set')}.",
    )


def postgres_failure(url: str, error: BaseException) -> tuple[str, str]:
    """Why aLAN can't use a PostgreSQL database, naming the server and the user (never the password), and the fix."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError, OperationalError

    from engine.store.postgres import server_of, sqlstate

    parsed = make_url(url)
    original = error.orig if isinstance(error, DBAPIError) else error
    # The driver's first line: the rest repeats it, or is SQL. psycopg never quotes the password; it is taken
    # out anyway, in case a driver ever does.
    cause = (str(original).strip().splitlines() or [""])[0]
    if parsed.password:
        cause = cause.replace(str(parsed.password), "***")
    where, user, name = server_of(parsed), parsed.username or getpass.getuser(), parsed.database or ""
    host = where.split("/", 1)[0]
    state = sqlstate(original)
    if isinstance(error, ImportError):
        return (
            f"ALAN_DATABASE_URL needs a driver that isn't installed ({error})",
            "Use postgresql+psycopg://… (psycopg comes with aLAN), or install the driver the URL names.",
        )
    if state in ("28P01", "28000"):
        return (
            f"The PostgreSQL server at {host} refused user {user}: {cause}",
            "Check the user name and password in ALAN_DATABASE_URL (and the server's pg_hba.conf).",
        )
    if state == "3D000":
        return (
            f"The database {name} doesn't exist on the PostgreSQL server at {host}",
            f"Create it, owned by {user}: `createdb -h {parsed.host or 'localhost'} -O {user} {name}` (as a role "
            "that may), or point ALAN_DATABASE_URL at a database that exists.",
        )
    if state == "42501":
        return (
            f"PostgreSQL user {user} may not create aLAN's tables in database {name} on {host}: {cause}",
            f"Make {user} the database's owner (`ALTER DATABASE {name} OWNER TO {user}`), or grant it CREATE on "
            "its schema.",
        )
    if state == "25006":
        return (
            f"The PostgreSQL server at {host} accepts no writes (a standby?): {cause}",
            "Point ALAN_DATABASE_URL at the primary server.",
        )
    if state in (None, "57P03") and isinstance(error, OperationalError):
        return (
            f"aLAN can't reach the PostgreSQL server at {host} (database {name}, user {user}): {cause}",
            "Start the server (Debian: `sudo service postgresql start`), or correct the host and port in "
            "ALAN_DATABASE_URL.",
        )
    return (
        f"aLAN can't use the PostgreSQL database {where} as user {user}: {cause}",
        "Check ALAN_DATABASE_URL and the server; `alan doctor` shows what it sees.",
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
    except (SQLAlchemyError, OSError, ImportError) as error:  # ImportError: a URL naming a driver not installed
        raise DatabaseUnusableError(_sentence(open_failure(settings, error))) from error
