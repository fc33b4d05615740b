"""Alembic's scripts are the `migrations` package's files, found wherever that package is installed.

Not by walking up from `engine/` to a checkout's root: from a wheel, `engine` and `migrations` are two packages
that need not sit side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import migrations
from engine.store.database import MIGRATIONS_DIR, head_revision

ROOT = Path(__file__).resolve().parents[1]


def test_the_migrations_folder_is_the_migrations_package() -> None:
    assert Path(migrations.__file__).parent == MIGRATIONS_DIR
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert any((MIGRATIONS_DIR / "versions").glob("*.py"))
    assert head_revision() is not None


# In a fresh interpreter, with the `migrations` package found elsewhere than beside `engine`: migrate a database.
MIGRATE_WITH_THE_PACKAGE = """
import json, sys
from engine.store.database import MIGRATIONS_DIR, create_db_engine, current_revision, head_revision, upgrade
url = sys.argv[1]
upgrade(url)
print(json.dumps([str(MIGRATIONS_DIR), current_revision(create_db_engine(url)), head_revision()]))
"""


def test_migrations_installed_apart_from_the_engine_are_used(tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(ROOT / "migrations", site / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    url = f"sqlite:///{tmp_path / 'alan.db'}"
    result = subprocess.run(
        [sys.executable, "-c", MIGRATE_WITH_THE_PACKAGE, url],
        cwd=tmp_path,  # not the checkout: nothing is found relative to it
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    folder, current, head = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(folder) == site / "migrations"
    assert current == head is not None
