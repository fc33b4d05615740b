"""When the database fails: a lock is waited out and retried, anything else becomes a `StorageUnavailableError`.

SQLite waits `busy_timeout` for another connection's lock by itself, but some conflicts (a read that must
become a write after another connection wrote, a lock held past the timeout) fail at once with "database is
locked"; a whole transaction retried a little later usually goes through. A full disk, a read-only file or a
broken one won't get better in a second: the person is told what happened and the operator gets one log line.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy.exc import OperationalError

from engine.errors import StorageUnavailableError

log = logging.getLogger(__name__)

# Pauses between attempts of a transaction that met a lock (each attempt already waits busy_timeout).
RETRY_DELAYS_S = (0.1, 0.5)

# SQLite's primary result codes (the low byte of an extended code), and what each means for aLAN.
_PROBLEMS = {
    sqlite3.SQLITE_BUSY: "busy",
    sqlite3.SQLITE_LOCKED: "busy",
    sqlite3.SQLITE_FULL: "full",
    sqlite3.SQLITE_READONLY: "read-only",
}
_FIXES = {
    "busy": "the database stayed locked by another connection (a second `alan run`, a backup, an open sqlite3 "
    "shell?); it was retried and gave up",
    "full": "the disk holding the database is full (or SQLite's max_page_count was reached): free some space",
    "read-only": "the database or its folder is read-only: make ALAN_DATA_DIR writable by the user running aLAN",
    "failing": "the database failed; check the disk and run `alan doctor`",
}


class HasRetryDelays(Protocol):
    retry_delays: tuple[float, ...]


S = TypeVar("S", bound=HasRetryDelays)
P = ParamSpec("P")
R = TypeVar("R")


def storage_problem(error: OperationalError) -> str:
    """ "busy", "full", "read-only" or "failing", from SQLite's result code (or its message, for other drivers)."""
    original = error.orig
    code = getattr(original, "sqlite_errorcode", None)
    if code is not None:
        return _PROBLEMS.get(code & 0xFF, "failing")
    message = str(original).lower()
    if "locked" in message or "busy" in message:
        return "busy"
    if "full" in message or "no space" in message:
        return "full"
    if "readonly" in message or "read-only" in message:
        return "read-only"
    return "failing"


def guarded(consequence: str) -> Callable[[Callable[Concatenate[S, P], R]], Callable[Concatenate[S, P], R]]:
    """Run a store operation (one whole transaction) with retries on a lock; `consequence` is told on failure.

    The operation must be safe to run again after a failed attempt: a failed SQLite transaction is rolled back.
    """

    def decorate(operation: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
        @functools.wraps(operation)
        def run(store: S, *args: P.args, **kwargs: P.kwargs) -> R:
            delays = iter(store.retry_delays)
            while True:
                try:
                    return operation(store, *args, **kwargs)
                except OperationalError as error:
                    problem = storage_problem(error)
                    delay = next(delays, None) if problem == "busy" else None
                    if delay is None:
                        # The driver's own message only: the SQL statement and its parameters stay out of logs.
                        log.error("database %s in %s (%s): %s", problem, operation.__name__, error.orig,
                                  _FIXES[problem])  # fmt: skip
                        raise StorageUnavailableError(problem, _FIXES[problem], consequence) from error
                    log.info("database locked in %s; trying again in %.1f s", operation.__name__, delay)
                    time.sleep(delay)

        return run

    return decorate


class ErasesDeletedPages(HasRetryDelays, Protocol):
    def _erase_deleted_pages(self) -> None: ...


E = TypeVar("E", bound=ErasesDeletedPages)


def erasing_deleted_pages(operation: Callable[Concatenate[E, P], R]) -> Callable[Concatenate[E, P], R]:
    """After a (guarded, retried) deletion, take the deleted rows off the disk: outside the retries, so a log
    still in use never repeats the deletion. A result of 0 (nothing deleted) needs no erasing."""

    @functools.wraps(operation)
    def run(store: E, *args: P.args, **kwargs: P.kwargs) -> R:
        result = operation(store, *args, **kwargs)
        if result is None or result:
            store._erase_deleted_pages()
        return result

    return run
