"""Feedback counts once per decision and metric: a ``metric`` column, unique with the decision.

Judges and queues deliver at least once; from now on each feedback row holds one value and
``(decision_id, metric)`` is unique, so a repeated score is not stored again, whichever
process or restart sends it. Older rows keep ``metric`` NULL (NULLs never collide); the
controller reduces them to their first value per metric when it folds them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("metric", sa.String(length=80), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_feedback_decision_id_metric"), ["decision_id", "metric"]
        )


def downgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_feedback_decision_id_metric"), type_="unique")
        batch_op.drop_column("metric")
