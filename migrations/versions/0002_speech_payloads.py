"""speech payloads: the synthesizer's per-turn and per-voice data, opaque and tagged with backend and model

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 11:10:00

`codes` (CSM's Mimi codes) becomes `speech`, an opaque payload of whichever speech synthesizer made it, and
`speech_model` tags it "backend:model". The codebook count goes: the backend that reads a payload knows its own
shape. Existing voices were made by CSM, so their tag is "csm:" + the model they name; existing turns never
recorded their model, so their codes keep an empty tag that no backend claims (their audio is kept, and is
encoded again when needed).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("voices") as batch:
        batch.alter_column("codes", new_column_name="speech", existing_type=sa.LargeBinary())
        batch.alter_column("codes_model", new_column_name="speech_model", existing_type=sa.String(length=200))
        batch.drop_column("codes_codebooks")
    op.execute("UPDATE voices SET speech_model = 'csm:' || speech_model WHERE speech_model IS NOT NULL")
    with op.batch_alter_table("turns") as batch:
        batch.alter_column("codes", new_column_name="speech", existing_type=sa.LargeBinary())
        batch.add_column(sa.Column("speech_model", sa.String(length=200), nullable=True))
        batch.drop_column("codes_codebooks")
    op.execute("UPDATE turns SET speech_model = '' WHERE speech IS NOT NULL")


def downgrade() -> None:
    # Mimi's 32 codebooks: the only shape CSM-1B's payloads had when the codebook count was a column. Other
    # backends' payloads (the tone synthesizer's) meant nothing to 0001: they go.
    op.execute("UPDATE turns SET speech = NULL WHERE speech_model <> '' AND speech_model NOT LIKE 'csm:%'")
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("codes_codebooks", sa.Integer(), nullable=True))
        batch.drop_column("speech_model")
        batch.alter_column("speech", new_column_name="codes", existing_type=sa.LargeBinary())
    op.execute("UPDATE turns SET codes_codebooks = 32 WHERE codes IS NOT NULL")
    with op.batch_alter_table("voices") as batch:
        batch.add_column(sa.Column("codes_codebooks", sa.Integer(), nullable=True))
        batch.alter_column("speech", new_column_name="codes", existing_type=sa.LargeBinary())
        batch.alter_column("speech_model", new_column_name="codes_model", existing_type=sa.String(length=200))
    op.execute(
        "UPDATE voices SET codes_codebooks = 32, codes_model = substr(codes_model, 5) WHERE codes_model LIKE 'csm:%'"
    )
    # Payloads of other backends (the tone synthesizer's) meant nothing to 0001: their voices re-encode their clips.
    op.execute(
        "UPDATE voices SET codes = NULL, codes_model = NULL WHERE codes_model IS NOT NULL AND codes_codebooks IS NULL"
    )
