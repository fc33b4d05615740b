"""Opening the database: SQLite in WAL mode with foreign keys enforced (the embedded default), or PostgreSQL for
several processes (`postgres.py`), and schema upgrades via Alembic.

The database holds people's words and voices, so a SQLite database's folder is the owner's alone (0700) and its
files too (0600): SQLite gives the `-wal` and `-shm` files the main file's permission bits, so it is enough to
create the main file owner-only before SQLite opens it, and to tighten what an older version left readable.
(A PostgreSQL server's files are the server's: its data directory is 0700 to the postgres user already.)
"""

from __future__ import annotations

import logging
import os
import stat
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from engine.store.postgres import create_postgres_engine

log = logging.getLogger(__name__)

# The `migrations` package (env.py, script.py.mako, versions/), wherever it is installed: beside the source in a
# checkout or an editable install, in site-packages from a wheel. Alembic needs it as a folder on disk.
MIGRATIONS_DIR = Path(str(files("migrations")))


# How long SQLite itself waits for another connection's lock before a write fails as "database is locked".
BUSY_TIMEOUT_S = 5.0
# How long one try to empty the write-ahead log waits for readers (the store makes several tries).
CHECKPOINT_BUSY_TIMEOUT_MS = 200
OWNER_ONLY_DIR = 0o700
OWNER_ONLY_FILE = 0o600
# What SQLite keeps beside the database: the write-ahead log, its index, and a rollback journal.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def _set_sqlite_pragmas(dbapi_connection, _record, *, foreign_keys: bool, busy_timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # Set first: even switching to WAL can meet another process's lock.
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    # WAL lets the bots read history while a turn is being written; foreign keys make /forget cascade.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
    # Deleted rows (a forgotten user's voice and words) are overwritten on disk, not merely unlinked.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def create_db_engine(url: str, *, foreign_keys: bool = True, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Engine:
    """An engine for `url`; for SQLite, creates the file owner-only and sets WAL mode and foreign keys; for
    PostgreSQL, serializable transactions and a pool fit for several processes, waiting `busy_timeout_s` for a
    lock as SQLite does (foreign keys are always enforced there)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            # No driver named: psycopg, which aLAN installs, rather than SQLAlchemy's default (psycopg2).
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return create_postgres_engine(url, lock_timeout_s=busy_timeout_s)
    # Parameters stay out of error messages and logs: they are what people said.
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, hide_parameters=True)
    database = sqlite_path(url)
    if database is not None:
        # A read-only open must find the real file, not an empty one made here for it.
        protect_sqlite_file(database, create=not sqlite_read_only(url))
    engine = create_engine(url, connect_args={"check_same_thread": False}, hide_parameters=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        _set_sqlite_pragmas(dbapi_connection, record, foreign_keys=foreign_keys, busy_timeout_s=busy_timeout_s)

    return engine


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, plain or `file:` URI form; None for another database or in-memory."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    # `sqlite:///file:/data/alan.db?mode=rwc&uri=true`: SQLite gets a URI; the file is its path, without a query.
    path = parsed.database.removeprefix("file:").split("?", 1)[0]
    if path in ("", ":memory:") or parsed.query.get("mode") == "memory":
        return None
    return Path(path)


def sqlite_read_only(url: str) -> bool:
    """A SQLite URI that asks for read-only access (mode=ro or immutable=1)."""
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and (
        parsed.query.get("mode") == "ro" or parsed.query.get("immutable") in ("1", "true")
    )


def protect_sqlite_file(database: Path, *, create: bool = True) -> None:
    """Make the database's folder and files owner-only, creating the folder and an empty database if missing.

    An empty file is a valid empty SQLite database; creating it ourselves is what lets us choose its mode.
    """
    folder = database.parent
    if not folder.exists():
        folder.mkdir(parents=True, mode=OWNER_ONLY_DIR)
        folder.chmod(OWNER_ONLY_DIR)  # mkdir's mode passes through the umask
    elif _may_tighten(folder):
        _tighten(folder, OWNER_ONLY_DIR)
    if create and not database.exists():
        try:
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT, OWNER_ONLY_FILE))
        except OSError as error:  # a read-only folder: SQLite's own error, on connecting, says it best
            log.debug("could not create %s ahead of SQLite: %s", database, error)
    for path in (database, *(database.with_name(database.name + suffix) for suffix in SQLITE_COMPANIONS)):
        if path.exists():
            _tighten(path, OWNER_ONLY_FILE)


def _may_tighten(folder: Path) -> bool:
    """Only a folder that is ours to decide for: owned by us, not a shared one like /tmp, not our home or the
    folder we were started in (a database URL of `sqlite:///alan.db`)."""
    info = folder.stat()
    return (
        info.st_uid == os.getuid()
        and not info.st_mode & stat.S_ISVTX
        and folder.resolve() not in (Path.home().resolve(), Path.cwd().resolve())
    )


def _tighten(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        try:
            path.chmod(current & mode)
        except OSError as error:
            log.warning("%s can be read by other users (mode %o) and can't be changed: %s", path, current, error)
            return
        log.warning("%s could be read by other users (mode %o): made it owner-only (%o)", path, current, current & mode)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # `%` is Alembic's interpolation character; a password may contain one.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def truncate_wal(session: Session) -> bool:
    """Copy the write-ahead log into the database and cut it to zero bytes; False if a reader kept it.

    After a delete this is what takes the deleted rows' old pages off the disk: `secure_delete` zeroes them in
    the database, but the log still holds their earlier versions until it is checkpointed and reset.
    """
    if session.get_bind().dialect.name != "sqlite":
        return True
    # The checkpoint waits in the busy handler for readers to leave: briefly, as the caller tries again.
    previous_ms = int(session.execute(text("PRAGMA busy_timeout")).scalar_one())
    session.execute(text(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_TIMEOUT_MS}"))
    try:
        busy, _log_frames, _copied = session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)")).one()
    finally:
        session.execute(text(f"PRAGMA busy_timeout={previous_ms}"))
    return not busy


def open_database(url: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sessionmaker[Session]:
    """Bring the schema up to date and return a session factory: what the app does on start."""
    upgrade(url)
    return sessionmaker(create_db_engine(url, busy_timeout_s=busy_timeout_s), expire_on_commit=False)
