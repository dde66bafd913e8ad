"""Per-step learning rates: one packed float64 array per epoch row.

``adatune_epochs.step_lrs`` holds the LR used at every training step of the
epoch, in step order, as little-endian IEEE-754 doubles (8 bytes a step; BLOB
on SQLite, BYTEA on PostgreSQL). Rows written before this revision keep NULL:
their runs have only the sampled step trace and the per-epoch mean.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adatune_epochs") as batch:
        batch.add_column(sa.Column("step_lrs", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("adatune_epochs") as batch:
        batch.drop_column("step_lrs")
