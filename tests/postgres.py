"""PostgreSQL for the tests: the server CI starts (`ALAN_TEST_POSTGRES_URL`), or else a throwaway one of our own.

The throwaway server is what makes `python -m pytest -q` work on a developer's machine with Debian's `postgresql`
installed and nothing configured: `initdb` and `pg_ctl` from /usr/lib/postgresql/*/bin in a temporary folder, on a
free port of 127.0.0.1, with a random password over TCP as a real deployment has. initdb refuses to run as root,
so as root the server runs as the `postgres` user the package creates. Without PostgreSQL the tests that need it
fail and say how to install it, as the real-Whisper tests do: a real dependency is never skipped in silence.

Each test gets a database of its own, created empty and dropped after it (with any connection still open).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection, make_url

from tests.fakes.local_server import free_port

URL_VARIABLE = "ALAN_TEST_POSTGRES_URL"
INSTALL = (
    "PostgreSQL is not installed: `sudo apt-get install postgresql` (what .ci/run does; the tests start their own "
    f"throwaway server with its initdb and pg_ctl), or set {URL_VARIABLE} to a postgresql+psycopg:// URL of a role "
    "that may CREATE DATABASE."
)
# The kinds of database the store's tests run on (`database_url`'s parameters, and the tests' ids).
DATABASES = ("sqlite", "postgresql")
ROLE = "alan_test"
START_TIMEOUT_S = 60
DROP_TIMEOUT_S = 30


class PostgresMissingError(RuntimeError):
    """No PostgreSQL to test on; the message says how to get one."""


class DatabaseUrl(str):
    """A database URL whose repr hides the password: pytest prints a failing test's arguments, and CI's server
    has one."""

    def __repr__(self) -> str:
        return repr(make_url(str(self)).render_as_string(hide_password=True))


def _conninfo(url: URL) -> str:
    """libpq's form of a SQLAlchemy URL (psycopg connects with it directly)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class PostgresServer:
    """A server where `url`'s role may create databases; `data_dir` and `bin_dir` only for our own throwaway one."""

    url: URL
    data_dir: Path | None = None
    bin_dir: Path | None = None
    run_as: tuple[str, ...] = ()

    def admin(self) -> psycopg.Connection:
        # CREATE and DROP DATABASE can't run inside a transaction.
        return psycopg.connect(_conninfo(self.url), autocommit=True, connect_timeout=10)

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A new, empty database for one test: its SQLAlchemy URL; dropped afterwards."""
        name = f"alan_{secrets.token_hex(6)}"
        with self.admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield DatabaseUrl(self.url.set(database=name).render_as_string(hide_password=False))
        finally:
            self._drop(name)

    def _drop(self, name: str) -> None:
        # FORCE: an engine a test left open must not keep its database alive (PostgreSQL ≥ 13). It also has to end
        # an autovacuum worker busy there (likely after a test's mass delete), which PostgreSQL refuses a role
        # outside pg_signal_backend: .ci/run grants it; elsewhere the worker is waited out, it takes moments.
        deadline = time.monotonic() + DROP_TIMEOUT_S
        while True:
            try:
                with self.admin() as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg.errors.InsufficientPrivilege:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def pg_ctl(self, action: str, *args: str) -> None:
        """Run pg_ctl on our own server: start, stop, restart (what some fault tests are about)."""
        assert self.data_dir is not None and self.bin_dir is not None, "not a server these tests started"
        # The server's output goes to a file: a server started with our pipes as its stdout would hold them open.
        log = ("-l", str(self.data_dir.parent / "server.log")) if action in ("start", "restart") else ()
        command = [*self.run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", *log, *args, action]
        subprocess.run(command, check=True, capture_output=True, timeout=START_TIMEOUT_S)


def bin_dir() -> Path:
    """Where initdb and pg_ctl are: Debian keeps them out of PATH, per major version; the newest wins."""
    found = sorted(
        (path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresMissingError(INSTALL)


@contextlib.contextmanager
def throwaway_server(**settings: str) -> Iterator[PostgresServer]:
    """A PostgreSQL server of our own for as long as the block runs, then stopped and deleted.

    `settings` are server settings (`fsync="off"` …) on top of ours: durability is of no use to a test database.
    """
    binaries = bin_dir()
    as_root = os.geteuid() == 0
    run_as = ("runuser", "-u", "postgres", "--") if as_root else ()
    # Not under pytest's own temporary folder: as root that one is 0700, and the server runs as `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="alan-postgres-"))
    password = secrets.token_urlsafe(18)
    (folder / "password").write_text(password)
    (folder / "password").chmod(0o600)
    if as_root:
        shutil.chown(folder, "postgres", "postgres")
        shutil.chown(folder / "password", "postgres", "postgres")
    data = folder / "data"
    port = free_port()
    server = PostgresServer(
        URL.create("postgresql+psycopg", ROLE, password, "127.0.0.1", port, "postgres"), data, binaries, run_as
    )
    options = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(folder),
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        **settings,
    }
    try:
        try:
            subprocess.run(
                [*run_as, str(binaries / "initdb"), "-D", str(data), "-U", ROLE, "--pwfile", str(folder / "password"),
                 "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
                check=True, capture_output=True, timeout=START_TIMEOUT_S,
            )  # fmt: skip
            settings_file = "".join(f"{key} = '{value}'\n" for key, value in options.items())
            (data / "postgresql.auto.conf").write_text(settings_file)
            server.pg_ctl("start")
        except subprocess.CalledProcessError as error:
            raise PostgresMissingError(
                f"Could not start a throwaway PostgreSQL server with {binaries}: "
                f"{error.stderr.decode(errors='replace')}{_log_tail(folder / 'server.log')}"
            ) from error
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            if (data / "postmaster.pid").exists():
                server.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(folder, ignore_errors=True)


def _log_tail(log: Path) -> str:
    return f"\n{log.read_text(errors='replace')[-2000:]}" if log.exists() else ""


@contextlib.contextmanager
def server_for_tests() -> Iterator[PostgresServer]:
    """The server the tests use: CI's, named by `ALAN_TEST_POSTGRES_URL`, or a throwaway one."""
    configured = os.environ.get(URL_VARIABLE)
    if configured:
        yield PostgresServer(make_url(configured))
        return
    with throwaway_server() as server:
        yield server


def database_url_for(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database of the kind the test is parametrized with (one of `DATABASES`): its URL."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{request.getfixturevalue('tmp_path') / 'alan.db'}"


def insert_rows(connection: Connection, table: str, *rows: dict[str, object]) -> None:
    """Rows as an older revision's aLAN wrote them, ids included: on PostgreSQL the table's id sequence is moved
    past them too, as that aLAN's own inserts would have (SQLite's AUTOINCREMENT counts them by itself)."""
    columns = list(rows[0])
    connection.execute(
        text(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(f':{name}' for name in columns)})"),
        [dict(row) for row in rows],
    )
    if connection.dialect.name == "postgresql" and "id" in columns:
        connection.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), MAX(id)) FROM {table}"))
