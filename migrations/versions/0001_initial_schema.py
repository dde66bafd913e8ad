"""Initial schema: experiments, runs, epochs and sampled steps.

Revision ID: 0001
Revises:
Create Date: 2025-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _float(name: str) -> sa.Column:
    return sa.Column(name, sa.Double(), nullable=True)


def upgrade() -> None:
    op.create_table(
        "adatune_experiments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_adatune_experiments"),
        sa.UniqueConstraint("name", name="uq_adatune_experiments_name"),
    )
    op.create_table(
        "adatune_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("optimizer", sa.String(length=64), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=False),
        sa.Column("dataset", sa.String(length=64), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("epochs", sa.Integer(), nullable=False),
        _float("best_val_acc"),
        sa.Column("best_epoch", sa.Integer(), nullable=True),
        _float("test_acc"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("adatune_version", sa.String(length=64), nullable=False),
        sa.Column("torch_version", sa.String(length=64), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("special_floats", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["adatune_experiments.id"],
            name="fk_adatune_runs_experiment_id",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["adatune_runs.id"],
            name="fk_adatune_runs_parent_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_adatune_runs"),
    )
    for column in ("experiment_id", "parent_id", "status", "method", "dataset"):
        op.create_index(f"ix_adatune_runs_{column}", "adatune_runs", [column])
    op.create_table(
        "adatune_epochs",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        _float("lr"),
        _float("lr_mean"),
        _float("mu"),
        _float("hyper_lr"),
        _float("train_loss"),
        _float("train_acc"),
        _float("val_loss"),
        _float("val_acc"),
        _float("test_loss"),
        _float("test_acc"),
        _float("elapsed_s"),
        sa.Column("nonfinite_hypergradients", sa.Integer(), nullable=False),
        sa.Column("special_floats", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["adatune_runs.id"],
            name="fk_adatune_epochs_run_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "epoch", name="pk_adatune_epochs"),
    )
    op.create_table(
        "adatune_steps",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        _float("lr"),
        _float("mu"),
        _float("hyper_lr"),
        _float("hypergradient"),
        _float("train_loss"),
        sa.Column("special_floats", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["adatune_runs.id"],
            name="fk_adatune_steps_run_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "step", name="pk_adatune_steps"),
    )


def downgrade() -> None:
    op.drop_table("adatune_steps")
    op.drop_table("adatune_epochs")
    for column in ("experiment_id", "parent_id", "status", "method", "dataset"):
        op.drop_index(f"ix_adatune_runs_{column}", table_name="adatune_runs")
    op.drop_table("adatune_runs")
    op.drop_table("adatune_experiments")
