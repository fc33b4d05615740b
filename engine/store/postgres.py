"""PostgreSQL, for several aLAN processes sharing one database: the engine, what keeps them from stepping on each
other, and what /forget can do about the rows it deletes.

Isolation is SERIALIZABLE: the store's operations were written against SQLite, where one write transaction runs at
a time and a transaction that read before another one's write is refused (and retried by `faults.guarded`).
PostgreSQL's serializable isolation gives each operation the same guarantee with many writers: two transactions
whose reads and writes would interleave wrongly (two uses of one link code, two first messages of one person,
the memory cap counted twice) fail one of them with a serialization failure, which the store retries. No
process-local lock is needed for correctness. Waits for a row lock are bounded by `lock_timeout`, as SQLite's by
`busy_timeout`, and fail as "busy" too.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

# How long connecting may take: an unreachable host fails within this, not after the kernel's minutes.
CONNECT_TIMEOUT_S = 10
# Connections kept per process, and how many more a burst may open: ten per process leaves room for about nine
# aLAN processes in PostgreSQL's default max_connections (100).
POOL_SIZE = 5
POOL_OVERFLOW = 5
# Any constant shared by every aLAN process: the key of the lock that lets one process migrate at a time.
MIGRATION_LOCK_KEY = 0x616C616E  # "alan"


def create_postgres_engine(url: str, *, lock_timeout_s: float) -> Engine:
    """An engine for several processes: serializable transactions, a small pool whose connections are checked
    before use (a server restart or a failover leaves dead ones behind), a bounded connect and lock wait."""
    parsed = make_url(url)
    defaults = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "alan"}
    engine = create_engine(
        url,
        hide_parameters=True,  # parameters are what people said: never in an error message or a log line
        isolation_level="SERIALIZABLE",
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        pool_pre_ping=True,
        # What the URL itself says (?connect_timeout=…) wins.
        connect_args={key: value for key, value in defaults.items() if key not in parsed.query},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Per connection rather than in the URL's `options`, which an operator may use for their own settings.
        dbapi_connection.execute(f"SET lock_timeout = {int(lock_timeout_s * 1000)}")
        dbapi_connection.commit()

    event.listen(engine, "before_cursor_execute", _without_nul, retval=True)
    return engine


def _without_nul(_connection, _cursor, statement, parameters, _context, _executemany):  # type: ignore[no-untyped-def]
    """PostgreSQL's text can't hold a NUL character, SQLite's can: one in what the store is given to keep (an LLM's
    reply, a display name) is dropped, invisible as it was, rather than failing the write. Bytes are left alone."""

    def clean(value: object) -> object:
        return value.replace("\x00", "") if isinstance(value, str) and "\x00" in value else value

    def clean_all(values):  # type: ignore[no-untyped-def]
        if isinstance(values, dict):
            return {key: clean(value) for key, value in values.items()}
        return type(values)(clean(value) for value in values)

    if not parameters:
        return statement, parameters
    if isinstance(parameters, list):  # executemany: one set of parameters per row
        return statement, [clean_all(row) for row in parameters]
    return statement, clean_all(parameters)


def server_of(url: str | URL) -> str:
    """Where a PostgreSQL URL points, for messages: host, port and database, never the user's password."""
    parsed = make_url(url)
    host = parsed.host or str(parsed.query.get("host") or "the local socket")
    port = f":{parsed.port}" if parsed.port else ""
    return f"{host}{port}/{parsed.database or ''}"


# What the server said when it refused a connection: libpq hands it over as text only, with no SQLSTATE.
_REFUSALS = (
    ("authentication failed", "28P01"),
    ("no pg_hba.conf entry", "28000"),
    ("does not exist", "3D000"),  # FATAL: database "…" does not exist
    ("the database system is", "57P03"),  # … starting up, shutting down, in recovery mode
)


def sqlstate(error: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE code for a psycopg error, also for a connection the server refused (whose code libpq
    doesn't pass on); None when the client lost the server, or couldn't reach it."""
    code: str | None = getattr(error, "sqlstate", None)
    if code is not None:
        return code
    message = str(error)
    if message.startswith("connection failed") and "FATAL:" in message:
        said = message.split("FATAL:", 1)[1]
        return next((state for words, state in _REFUSALS if words in said), None)
    return None


def lock_migrations(connection: Connection) -> None:
    """Inside a migration's transaction: one aLAN process migrates, the others wait for it to commit and then find
    the schema already at their revision. Held until the transaction ends; the connection must read committed
    data (a serializable one would keep the schema it saw before the wait)."""
    # However long the other process's migration takes: the connection's lock_timeout (seconds, for row locks in a
    # turn) would otherwise give up on the advisory lock too, and fail this process's start-up.
    connection.execute(text("SET LOCAL lock_timeout = 0"))
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def vacuum_deleted_rows(engine: Engine, tables: list[str]) -> None:
    """After a deletion (/forget, /reset, deleting a voice): VACUUM the tables that held a person's rows.

    A deleted row stays in its table's file as a dead tuple, readable by anyone with the files, until VACUUM
    removes it; VACUUM does so now rather than whenever autovacuum comes by, index entries included
    (INDEX_CLEANUP ON: PostgreSQL would otherwise skip the indexes after a small deletion). The space is marked
    free for new rows, not overwritten, and the write-ahead log keeps its copy until its segments are recycled:
    what this does and doesn't guarantee is in the README. The rows are already gone for every query, so a
    failure here is logged, never raised.
    """
    preparer = engine.dialect.identifier_preparer
    try:
        # VACUUM can't run inside a transaction block.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            present = set(inspect(connection).get_table_names())  # one missing table would fail them all
            names = [preparer.quote(table) for table in tables if table in present]
            if names:  # no names would VACUUM the whole database
                connection.exec_driver_sql(f"VACUUM (INDEX_CLEANUP ON) {', '.join(names)}")
    except DBAPIError as error:
        log.warning("after a deletion, VACUUM of the deleted rows failed (%s): autovacuum will remove them later",
                    error.orig)  # fmt: skip
