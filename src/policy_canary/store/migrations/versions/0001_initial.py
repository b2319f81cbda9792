"""Initial schema: registry, release history, audit, rollouts, events, feedback.

Append-only tables get triggers that refuse UPDATE and DELETE on both backends.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from policy_canary.store._types import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


_APPEND_ONLY = ("versions", "release_history", "audit")


def _protect_append_only() -> None:
    """Make the database itself refuse edits of stored versions and history."""
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(
            """
            CREATE FUNCTION pc_refuse_change() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION 'policy-canary: rows of % are immutable (append-only)',
                    TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        for table in _APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION pc_refuse_change()"
            )
    else:
        for table in _APPEND_ONLY:
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, 'policy-canary: rows of {table} are immutable "
                    "(append-only)'); END"
                )


def _unprotect_append_only() -> None:
    dialect = op.get_bind().dialect.name
    for table in _APPEND_ONLY:
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        else:
            for verb in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{verb}")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS pc_refuse_change()")


def upgrade() -> None:

    op.create_table(
        "audit",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit")),
    )
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_subject_id"), ["subject", "id"], unique=False)

    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("decision_id", sa.String(length=40), nullable=False),
        sa.Column("policy", sa.String(length=64), nullable=False),
        sa.Column("rollout_id", sa.String(length=40), nullable=True),
        sa.Column("arm", sa.String(length=16), nullable=False),
        sa.Column("version_digest", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=True),
        sa.Column("traffic_bp", sa.Integer(), nullable=False),
        sa.Column("scheme", sa.Integer(), nullable=False),
        sa.Column("sticky", sa.Boolean(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("error", sa.Boolean(), nullable=True),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("safety_flags", sa.Text(), nullable=False),
        sa.Column("flag_count", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("decision_id", name=op.f("uq_events_decision_id")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_policy_at"), ["policy", "at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_events_rollout_id_id"), ["rollout_id", "id"], unique=False
        )

    op.create_table(
        "feedback",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("decision_id", sa.String(length=40), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_decision_id"), ["decision_id"], unique=False)

    op.create_table(
        "policies",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("stable_digest", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_policies")),
    )
    op.create_table(
        "store_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_store_state")),
    )
    op.create_table(
        "versions",
        sa.Column("policy", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("parent_digest", sa.String(length=64), nullable=True),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("author", sa.String(length=200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["policy"], ["policies.name"], name=op.f("fk_versions_policy_policies")
        ),
        sa.PrimaryKeyConstraint("policy", "digest", name=op.f("pk_versions")),
        sa.UniqueConstraint("policy", "number", name=op.f("uq_versions_policy_number")),
    )
    op.create_table(
        "release_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("policy", sa.String(length=64), nullable=False),
        sa.Column("from_digest", sa.String(length=64), nullable=True),
        sa.Column("to_digest", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("rollout_id", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["policy", "to_digest"],
            ["versions.policy", "versions.digest"],
            name=op.f("fk_release_history_policy_to_digest_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["policy"], ["policies.name"], name=op.f("fk_release_history_policy_policies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_release_history")),
    )
    with op.batch_alter_table("release_history", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_release_history_policy_id"), ["policy", "id"], unique=False
        )

    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("policy", sa.String(length=64), nullable=False),
        sa.Column("baseline_digest", sa.String(length=64), nullable=False),
        sa.Column("candidate_digest", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("traffic_bp", sa.Integer(), nullable=False),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("plan_hash", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("stage_started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["policy", "baseline_digest"],
            ["versions.policy", "versions.digest"],
            name=op.f("fk_rollouts_policy_baseline_digest_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["policy", "candidate_digest"],
            ["versions.policy", "versions.digest"],
            name=op.f("fk_rollouts_policy_candidate_digest_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["policy"], ["policies.name"], name=op.f("fk_rollouts_policy_policies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index(
            "uq_rollouts_one_active",
            ["policy"],
            unique=True,
            sqlite_where=sa.text("state IN ('running', 'paused')"),
            postgresql_where=sa.text("state IN ('running', 'paused')"),
        )

    op.create_table(
        "rejections",
        sa.Column("policy", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["policy", "digest"],
            ["versions.policy", "versions.digest"],
            name=op.f("fk_rejections_policy_digest_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rejections_rollout_id_rollouts")
        ),
        sa.PrimaryKeyConstraint("policy", "digest", "rollout_id", name=op.f("pk_rejections")),
    )

    _protect_append_only()


def downgrade() -> None:
    _unprotect_append_only()

    op.drop_table("rejections")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_rollouts_one_active",
            sqlite_where=sa.text("state IN ('running', 'paused')"),
            postgresql_where=sa.text("state IN ('running', 'paused')"),
        )

    op.drop_table("rollouts")
    with op.batch_alter_table("release_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_release_history_policy_id"))

    op.drop_table("release_history")
    op.drop_table("versions")
    op.drop_table("store_state")
    op.drop_table("policies")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_decision_id"))

    op.drop_table("feedback")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_rollout_id_id"))
        batch_op.drop_index(batch_op.f("ix_events_policy_at"))

    op.drop_table("events")
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_subject_id"))

    op.drop_table("audit")
