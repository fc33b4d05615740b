"""the shared inbox and chat claims: several processes behind a load balancer, one chat's updates in order

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:00:00

`inbox_updates` keeps every update a webhook received until it has been handled (then only its number, a day, so
that a retried delivery is known), whichever process received it; `chat_claims` says which process handles a
chat now, under a lease it renews. Two new tables and nothing altered: plain CREATE TABLE on SQLite and PostgreSQL
alike, no batch mode needed. Downgrading drops them, with any update still waiting in the inbox: stop every aLAN
process first, and let them finish what they received.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbox_updates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("update_id", sa.BigInteger(), nullable=False),
        sa.Column("chat", sa.String(length=128), nullable=False),
        sa.Column("sender", sa.String(length=64), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox_updates")),
        sa.UniqueConstraint("platform", "update_id", name=op.f("uq_inbox_updates_platform")),
    )
    op.create_index("ix_inbox_updates_waiting", "inbox_updates", ["platform", "handled_at", "chat", "update_id"])
    op.create_table(
        "chat_claims",
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("chat", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("platform", "chat", name=op.f("pk_chat_claims")),
    )


def downgrade() -> None:
    op.drop_table("chat_claims")
    op.drop_index("ix_inbox_updates_waiting", table_name="inbox_updates")
    op.drop_table("inbox_updates")
