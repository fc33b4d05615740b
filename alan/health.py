"""The heartbeat behind `alan health`: a running aLAN shows that its event loop is alive by rewriting a small file.

`alan run` rewrites `heartbeat-<host name>` in the data dir every 15 s from its event loop; `alan health` (the
container's health check) reads it. A process that died, or whose event loop is stuck (a blocking call, a deadlock),
stops rewriting it, and the check fails once the newest beat is over a minute old. The file is per host name so that
replicas sharing one data volume each vouch only for themselves (a container's host name is its id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BEAT_INTERVAL_S = 15.0
# Four beats missed: a loop that was busy for a few seconds is not hung.
MAX_AGE_S = 60.0


def heartbeat_path(data_dir: Path, host: str | None = None) -> Path:
    """The heartbeat file of `host` (this machine's or container's host name by default) in `data_dir`."""
    name = socket.gethostname() if host is None else host
    # Only file-name-safe characters: a host name never makes the path leave the data dir.
    return data_dir / f"heartbeat-{re.sub(r'[^A-Za-z0-9_-]', '_', name) or 'localhost'}"


def write_heartbeat(path: Path, *, now: float | None = None) -> None:
    """Replace `path` with a beat dated `now`: atomically (a reader never sees half a file) and owner-only."""
    folder = path.parent
    if not folder.is_dir():  # with PostgreSQL nothing else may have created the data dir yet
        from engine.store.database import OWNER_ONLY_DIR

        folder.mkdir(parents=True, mode=OWNER_ONLY_DIR, exist_ok=True)
        folder.chmod(OWNER_ONLY_DIR)  # mkdir's mode passes through the umask
    beat = json.dumps({"time": time.time() if now is None else now, "pid": os.getpid()})
    # mkstemp creates the file 0600, in the same folder so that the rename is atomic.
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(beat)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def clear_heartbeat(data_dir: Path) -> None:
    """Remove this host's heartbeat, if any: an earlier process's must not vouch for one still starting."""
    path = heartbeat_path(data_dir)
    try:
        path.unlink(missing_ok=True)
    except OSError as error:  # not worth stopping aLAN for: the health check may call it healthy early, no worse
        log.warning("Can't remove the old heartbeat %s: %s", path, error)


class Heartbeat:
    """Rewrites this host's heartbeat file every `interval_s` from the running event loop, until stopped."""

    def __init__(self, data_dir: Path, *, interval_s: float = BEAT_INTERVAL_S) -> None:
        self.data_dir = data_dir
        self.path = heartbeat_path(data_dir)
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Heartbeat:
        """Beat now and every `interval_s` after; call from inside the event loop the beats vouch for."""
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="heartbeat")
        return self

    async def stop(self) -> None:
        """Stop beating and remove the file: an aLAN stopped on purpose has no heartbeat rather than a stale one."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # unlike awaiting the task, never swallows our own cancellation
            self._task = None
        clear_heartbeat(self.data_dir)

    async def _beat(self) -> None:
        failing: str | None = None
        while True:
            # Written here, on the loop, not in a worker thread: a thread pool busy with transcriptions must not
            # make a busy aLAN look hung. It is one ~50-byte file every 15 s.
            try:
                write_heartbeat(self.path)
            except OSError as error:
                # A full or read-only disk: said once, not every beat; `alan health` reports the beat going stale.
                if str(error) != failing:
                    log.warning(
                        "Can't write the heartbeat %s: %s. `alan health` will report aLAN unhealthy.", self.path, error
                    )
                failing = str(error)
            else:
                if failing is not None:
                    log.info("The heartbeat %s is written again.", self.path)
                failing = None
            await asyncio.sleep(self._interval_s)


@dataclass(frozen=True)
class Health:
    healthy: bool
    reason: str  # one line, for a person reading `docker inspect` or the health check's output


def check_heartbeat(
    data_dir: Path, *, max_age_s: float = MAX_AGE_S, now: float | None = None, host: str | None = None
) -> Health:
    """Whether this host's aLAN beat within the last `max_age_s` seconds, and why not."""
    path = heartbeat_path(data_dir, host)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return Health(False, f"no heartbeat at {path}: aLAN is still starting (loading its models) or not running")
    except OSError as error:
        return Health(False, f"can't read the heartbeat {path}: {error.strerror or error}")
    try:
        written = float(json.loads(text)["time"])
    except (ValueError, KeyError, TypeError, IndexError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return Health(False, f"{path} is not a heartbeat aLAN wrote (no time in it)")
    age = (time.time() if now is None else now) - written
    if not math.isfinite(age):
        return Health(False, f"{path} is not a heartbeat aLAN wrote (its time is not a number)")
    if age > max_age_s:
        stale = f"the last heartbeat is {age:.0f} s old (more than {max_age_s:g} s)"
        return Health(False, f"{stale}: aLAN stopped or its event loop is stuck")
    if age < -max_age_s:  # a beat from the future: the clock was set back; the next beat, in 15 s, fixes it
        return Health(False, f"the last heartbeat is dated {-age:.0f} s in the future: was the clock set back?")
    return Health(True, f"heartbeat {max(age, 0.0):.0f} s ago")
