"""memory epoch: an extraction begun before `/memory clear`, `off` or `on` writes nothing, in any process

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:00:00

`people.memory_epoch` counts a person's clears and switches of memory. A turn notes the count it saw; what is
extracted from it is written only while the count is the same, checked in the writing transaction. The memory
worker of each process used to keep that count in its own memory, so a `/memory clear` answered by one process
did not stop another's extraction under way. One column added: a plain ALTER TABLE on SQLite and PostgreSQL alike
(no rebuild, so `people` keeps its AUTOINCREMENT count); the downgrade drops it (SQLite ≥ 3.35 drops a column
in place too).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("people", sa.Column("memory_epoch", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    op.drop_column("people", "memory_epoch")
