"""Feedback rows get an idempotency key and an index on their time.

The key makes a feedback batch retried after an unknown commit outcome safe to write again;
the index on ``at`` keeps retention pruning from scanning the table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key", sa.String(length=48), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_feedback_key"), ["key"])
        batch_op.create_index(batch_op.f("ix_feedback_at"), ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_at"))
        batch_op.drop_constraint(batch_op.f("uq_feedback_key"), type_="unique")
        batch_op.drop_column("key")
