"""When the database fails: what is transient is retried, anything else becomes a `StorageUnavailableError`.

SQLite waits `busy_timeout` for another connection's lock by itself, but some conflicts (a read that must
become a write after another connection wrote, a lock held past the timeout) fail at once with "database is
locked"; a whole transaction retried a little later usually goes through. PostgreSQL has the same two cases:
a lock waited out past `lock_timeout`, and a serializable transaction that lost a race with another process
(a serialization failure or a deadlock), which the next try usually wins. A PostgreSQL server that restarted or
was unreachable for a moment is retried too, when nothing can have been committed. A full disk, a read-only
database or a broken one won't get better in a second: the person is told what happened in the same words on
both databases, and the operator gets one log line with the fix.
"""

from __future__ import annotations

import functools
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy.exc import DBAPIError, InternalError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from engine.errors import StorageUnavailableError
from engine.store.postgres import sqlstate

log = logging.getLogger(__name__)

# Pauses between attempts of a transaction that met a lock (each attempt already waits busy_timeout).
RETRY_DELAYS_S = (0.1, 0.5)
# A transaction that lost a race with another process's (PostgreSQL): tried again at once, this many times more,
# after a random pause of up to CONFLICT_PAUSE_S × the number of tries so far, so that the racers fall apart.
CONFLICT_RETRIES = 8
CONFLICT_PAUSE_S = 0.02

# What to do about a failure: wait and try again, try again at once (a lost race), or give up.
WAIT, RACE, GIVE_UP = "wait", "race", "give up"


@dataclass(frozen=True)
class Fault:
    problem: str  # what the person is told: one of engine.errors.STORAGE_PROBLEMS
    fix: str  # the operator's side
    retry: str = GIVE_UP


# SQLite's primary result codes (the low byte of an extended code).
_SQLITE = {
    sqlite3.SQLITE_BUSY: Fault(
        "busy",
        "the database stayed locked by another connection (a second `alan run`, a backup, an open sqlite3 "
        "shell?); it was retried and gave up",
        WAIT,
    ),
    sqlite3.SQLITE_FULL: Fault(
        "full", "the disk holding the database is full (or SQLite's max_page_count was reached): free some space"
    ),
    sqlite3.SQLITE_READONLY: Fault(
        "read-only", "the database or its folder is read-only: make ALAN_DATA_DIR writable by the user running aLAN"
    ),
}
_SQLITE[sqlite3.SQLITE_LOCKED] = _SQLITE[sqlite3.SQLITE_BUSY]
FAILING = Fault("failing", "the database failed; check the disk and run `alan doctor`")

_GONE = Fault(
    "failing",
    "the PostgreSQL server of ALAN_DATABASE_URL can't be reached or closed the connection (stopped, restarting, "
    "or the network is down): check that it is up; `alan doctor` says what it sees",
    WAIT,
)
# PostgreSQL's SQLSTATE codes (psycopg's `sqlstate`); a code's two-letter class stands for the codes not listed.
_POSTGRES = {
    "40001": Fault("busy", "other aLAN processes kept changing the same rows at once; retried, it gave up", RACE),
    "55P03": Fault(
        "busy",
        "rows aLAN needed stayed locked by another transaction (another aLAN process, a long transaction in psql?) "
        "past lock_timeout; it was retried and gave up",
        WAIT,
    ),
    "53300": Fault(
        "busy",
        "PostgreSQL refused another connection (max_connections reached): raise max_connections on the server, "
        "or run fewer aLAN processes (each keeps up to 10 connections)",
        WAIT,
    ),
    "53100": Fault("full", "the disk holding PostgreSQL's data or write-ahead log is full: free some space there"),
    "25006": Fault(
        "read-only",
        "the PostgreSQL server accepts no writes (a standby, or default_transaction_read_only is on): point "
        "ALAN_DATABASE_URL at the primary",
    ),
    "28P01": Fault("failing", "PostgreSQL refused ALAN_DATABASE_URL's user or password: check them (and pg_hba.conf)"),
    "3D000": Fault("failing", "the database named in ALAN_DATABASE_URL doesn't exist: create it (`createdb`)"),
    "08": _GONE,  # connection exceptions
    "57P01": _GONE,  # the server shut down or restarted: it rolled the transaction back
    "57P02": _GONE,
    "57P03": _GONE,  # starting up or shutting down: not accepting connections yet
}
_POSTGRES["40P01"] = _POSTGRES["40001"]  # a deadlock: one of the two is rolled back, as in a lost race
_POSTGRES["28000"] = _POSTGRES["28P01"]
POOL_EXHAUSTED = "every database connection of this process stayed in use past the pool's timeout"


class HasRetryDelays(Protocol):
    retry_delays: tuple[float, ...]


S = TypeVar("S", bound=HasRetryDelays)
P = ParamSpec("P")
R = TypeVar("R")


def diagnose(error: DBAPIError) -> Fault:
    """What a database error means for the person and for the operator, and whether to try again."""
    original = error.orig
    code = getattr(original, "sqlite_errorcode", None)
    if code is not None:
        return _SQLITE.get(code & 0xFF, FAILING)
    if type(original).__module__.startswith("psycopg"):
        return _postgres_fault(error)
    message = str(original).lower()  # another driver: its words are all there is
    if "locked" in message or "busy" in message:
        return _SQLITE[sqlite3.SQLITE_BUSY]
    if "full" in message or "no space" in message:
        return _SQLITE[sqlite3.SQLITE_FULL]
    if "readonly" in message or "read-only" in message:
        return _SQLITE[sqlite3.SQLITE_READONLY]
    return FAILING


def _postgres_fault(error: DBAPIError) -> Fault:
    state = sqlstate(error.orig)
    if state is not None:
        fault = _POSTGRES.get(state) or _POSTGRES.get(state[:2]) or FAILING
        if error.statement is None and fault.retry != GIVE_UP and state not in ("40001", "40P01"):
            # It failed at COMMIT (no statement): whether that commit happened is unknown, so it is not run again
            # (nothing is ever stored twice), except for a conflict, which PostgreSQL reports with nothing kept.
            return Fault(fault.problem, fault.fix)
        return fault
    if not isinstance(error, OperationalError):
        return FAILING
    # No SQLSTATE: the client lost the server. Connecting failed (nothing ran), or a statement failed (the
    # server rolls back a transaction whose connection dropped): safe to run again. Lost while committing, the
    # commit may or may not have happened: not run again, so nothing is ever stored twice.
    if str(error.orig).startswith("connection failed") or error.statement is not None:
        return _GONE
    return Fault("failing", _GONE.fix)


def guarded(consequence: str) -> Callable[[Callable[Concatenate[S, P], R]], Callable[Concatenate[S, P], R]]:
    """Run a store operation (one whole transaction), tried again on what is transient (a lock, a race lost to
    another process, a server back in a moment); `consequence` is told on failure.

    The operation must be safe to run again after a failed attempt: a failed transaction is rolled back.
    """

    def decorate(operation: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
        @functools.wraps(operation)
        def run(store: S, *args: P.args, **kwargs: P.kwargs) -> R:
            waits = iter(store.retry_delays)
            races = 0
            while True:
                try:
                    return operation(store, *args, **kwargs)
                except (OperationalError, InternalError) as error:  # InternalError: PostgreSQL's read-only
                    fault, failure, cause = diagnose(error), error, error.orig
                except PoolTimeoutError as error:  # every pooled connection stayed in use for pool_timeout
                    fault, failure, cause = Fault("busy", POOL_EXHAUSTED), error, error
                delay = None
                if fault.retry == RACE and races < CONFLICT_RETRIES:
                    races += 1
                    delay = random.uniform(0, CONFLICT_PAUSE_S * races)
                elif fault.retry == WAIT:
                    delay = next(waits, None)
                if delay is None:
                    # The driver's first line only: the SQL statement and its parameters stay out of logs.
                    first_line = (str(cause).splitlines() or [""])[0]
                    log.error("database %s in %s (%s): %s", fault.problem, operation.__name__, first_line, fault.fix)
                    raise StorageUnavailableError(fault.problem, fault.fix, consequence) from failure
                if fault.retry == WAIT:
                    log.info("database %s in %s; trying again in %.1f s", "locked" if fault.problem == "busy"
                             else "unreachable", operation.__name__, delay)  # fmt: skip
                else:  # routine between processes: not worth a line at INFO
                    log.debug("%s lost a race with another transaction; trying again", operation.__name__)
                time.sleep(delay)

        return run

    return decorate


class ErasesDeletedPages(HasRetryDelays, Protocol):
    def _erase_deleted_pages(self, tables: Collection[str] | None = None) -> None: ...


E = TypeVar("E", bound=ErasesDeletedPages)


def erasing_deleted_pages(
    *tables: str,
) -> Callable[[Callable[Concatenate[E, P], R]], Callable[Concatenate[E, P], R]]:
    """After a (guarded, retried) deletion, take the deleted rows off the disk: outside the retries, so a log
    still in use never repeats the deletion. A result of 0 (nothing deleted) needs no erasing. `tables`: where the
    deleted rows were (cascades included), for PostgreSQL's VACUUM; none named: every table. (SQLite's log is one
    for all tables.)"""

    def decorate(operation: Callable[Concatenate[E, P], R]) -> Callable[Concatenate[E, P], R]:
        @functools.wraps(operation)
        def run(store: E, *args: P.args, **kwargs: P.kwargs) -> R:
            result = operation(store, *args, **kwargs)
            if result is None or result:
                store._erase_deleted_pages(tables or None)
            return result

        return run

    return decorate
