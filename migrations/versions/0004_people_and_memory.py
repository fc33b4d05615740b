"""people and memory: accounts of one person, what they told aLAN, and one-time codes that link accounts

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 18:00:00

Every account (`users`) now belongs to a person (`people`); each existing account becomes a person of its own (with
the account's id, so nothing else moves). A person's durable facts (`memories`) and the rolling summary of their
older conversation live with the person, so linked accounts share them. `link_codes` holds the hash of each
account's live `/link` code; `link_attempts` counts an account's wrong codes. Also: `turns` and `voices` get
back the AUTOINCREMENT that 0002's rebuild dropped, so an id is never given twice.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # SQLite rebuilds a table to alter it (batch mode), which restarts AUTOINCREMENT's count at the highest id
    # still there: the counts are kept and put back, so no id is ever given twice.
    counts = _sqlite_counts() if sqlite else {}
    if sqlite:
        # 0002 rebuilt `turns` and `voices` without AUTOINCREMENT, so a deleted row's id could be given to a new one
        # (a late write for a deleted turn would land on it): rebuilt with it again. (PostgreSQL's serials never
        # reuse an id, and needed no rebuild.)
        for table in ("turns", "voices"):
            with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
                pass
    op.create_table(
        "people",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("memory_enabled", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("summary_through", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_people")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("users", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("person_id", sa.Integer(), nullable=True))
    # One person per existing account, numbered as the account: every row elsewhere stays as it is.
    users = sa.table("users", sa.column("id", sa.Integer()), sa.column("created_at", sa.DateTime(timezone=True)),
                     sa.column("person_id", sa.Integer()))  # fmt: skip
    people = sa.table("people", sa.column("id", sa.Integer()), sa.column("memory_enabled", sa.Boolean()),
                      sa.column("created_at", sa.DateTime(timezone=True)))  # fmt: skip
    op.execute(
        people.insert().from_select(
            ["id", "memory_enabled", "created_at"], sa.select(users.c.id, sa.true(), users.c.created_at)
        )
    )
    op.execute(users.update().values(person_id=users.c.id))
    if op.get_bind().dialect.name == "postgresql":  # explicit ids leave a serial's sequence behind: catch it up
        op.execute("SELECT setval(pg_get_serial_sequence('people', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM people")
    with op.batch_alter_table("users", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.alter_column("person_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(op.f("fk_users_person_id_people"), "people", ["person_id"], ["id"], ondelete="CASCADE")
        batch.create_index(op.f("ix_users_person_id"), ["person_id"], unique=False)
    if sqlite:
        _restore_sqlite_counts(counts)
    op.create_table(
        "memories",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=128), nullable=False),
        sa.Column("said_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uses", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"], ["people.id"], name=op.f("fk_memories_person_id_people"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memories")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_memories_person_created", "memories", ["person_id", "created_at"])
    op.create_table(
        "link_codes",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_link_codes_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_link_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_link_codes_code_hash")),
    )
    op.create_table(
        "link_attempts",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_link_attempts_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_link_attempts")),
    )


def downgrade() -> None:
    # Linked accounts become strangers again (0003 has no people); what they told aLAN goes with the tables.
    op.drop_table("link_attempts")
    op.drop_table("link_codes")
    op.drop_index("ix_memories_person_created", table_name="memories")
    op.drop_table("memories")
    with op.batch_alter_table("users", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_index(op.f("ix_users_person_id"))
        batch.drop_constraint(op.f("fk_users_person_id_people"), type_="foreignkey")
        batch.drop_column("person_id")
    op.drop_table("people")


def _sqlite_counts() -> dict[str, int]:
    bind = op.get_bind()
    if not bind.execute(sa.text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")).first():
        return {}
    return {name: seq for name, seq in bind.execute(sa.text("SELECT name, seq FROM sqlite_sequence")).all()}


def _restore_sqlite_counts(counts: dict[str, int]) -> None:
    bind = op.get_bind()
    for name, seq in counts.items():
        bind.execute(
            sa.text("UPDATE sqlite_sequence SET seq = MAX(seq, :seq) WHERE name = :name"), {"seq": seq, "name": name}
        )
        bind.execute(
            sa.text(
                "INSERT INTO sqlite_sequence (name, seq) SELECT :name, :seq WHERE NOT EXISTS "
                "(SELECT 1 FROM sqlite_sequence WHERE name = :name)"
            ),
            {"seq": seq, "name": name},
        )
