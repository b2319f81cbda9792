"""Routed decisions and recorded outcomes per SDK process, rollout, window and share.

The input of the built-in ``outcomes_recorded`` guardrail (missing outcomes, a sample-ratio
mismatch between routed and recorded decisions).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from policy_canary.store._types import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routed_counts",
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("window_start", UTCDateTime(), nullable=False),
        sa.Column("traffic_bp", sa.Integer(), nullable=False),
        sa.Column("policy", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=True),
        sa.Column("window_end", UTCDateTime(), nullable=False),
        sa.Column("routed_stable", sa.BigInteger(), nullable=False),
        sa.Column("routed_candidate", sa.BigInteger(), nullable=False),
        sa.Column("recorded_stable", sa.BigInteger(), nullable=False),
        sa.Column("recorded_candidate", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_routed_counts_rollout_id_rollouts")
        ),
        sa.PrimaryKeyConstraint(
            "rollout_id", "source", "window_start", "traffic_bp", name=op.f("pk_routed_counts")
        ),
    )
    op.create_index(
        op.f("ix_routed_counts_rollout_id_window_end"),
        "routed_counts",
        ["rollout_id", "window_end"],
        unique=False,
    )
    op.create_index(
        op.f("ix_routed_counts_window_end"), "routed_counts", ["window_end"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_routed_counts_window_end"), table_name="routed_counts")
    op.drop_index(op.f("ix_routed_counts_rollout_id_window_end"), table_name="routed_counts")
    op.drop_table("routed_counts")
