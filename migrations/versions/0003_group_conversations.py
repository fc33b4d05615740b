"""group conversations: turns heard without being addressed, and each channel's /listen setting

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 17:00:00

In a voice channel or a group chat every utterance is kept, addressed to aLAN or not, so that it knows what the
group said. `turns.addressed` tells the two apart: only an addressed turn waits for an answer (the follow-up after
a restart looks for those). Every turn stored before this revision was addressed. `scope_settings` holds a
conversation's own settings, today its `/listen` mode. A group's history is read by scope: an index serves it.
Downgrading deletes the heard-only turns (0002 would take them for questions left unanswered).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("addressed", sa.Boolean(), nullable=False, server_default="1"))
    op.create_index("ix_turns_scope_created", "turns", ["scope", "created_at", "id"])
    op.create_table(
        "scope_settings",
        sa.Column("scope", sa.String(length=128), nullable=False),
        sa.Column("listen_mode", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_scope_settings")),
    )


def downgrade() -> None:
    op.drop_table("scope_settings")
    # 0002 can't tell words heard in a group from words said to aLAN: it would take every heard-only turn that was
    # someone's last for a question left unanswered, and answer or apologise for it after the next start. They go.
    op.execute(sa.text("DELETE FROM turns WHERE NOT addressed"))
    op.drop_index("ix_turns_scope_created", table_name="turns")
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("addressed")
