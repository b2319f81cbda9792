"""The schema as SQLAlchemy Core tables: one definition for SQLite and PostgreSQL.

Migrations under ``migrations/versions`` create exactly this schema (a test compares the two).
Append-only tables (``versions``, ``release_history``, ``audit``) are also protected by
database triggers, so even raw SQL cannot rewrite history.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from policy_canary.store._types import UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only aliases the rowid (and so autoincrements) for a column typed exactly INTEGER.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

DIGEST = 64
NAME = 64
#: Width of every actor / author column; ``_audit.actor_or_default`` checks it before writes.
ACTOR = 200

policies = Table(
    "policies",
    metadata,
    Column("name", String(NAME), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("stable_digest", String(DIGEST), nullable=True),
)

versions = Table(
    "versions",
    metadata,
    Column("policy", String(NAME), ForeignKey("policies.name"), primary_key=True),
    Column("digest", String(DIGEST), primary_key=True),
    Column("number", Integer, nullable=False),
    Column("parent_digest", String(DIGEST), nullable=True),
    Column("spec", Text, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("author", String(ACTOR), nullable=False),
    Column("message", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("policy", "number"),
)

release_history = Table(
    "release_history",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("policy", String(NAME), ForeignKey("policies.name"), nullable=False),
    Column("from_digest", String(DIGEST), nullable=True),
    Column("to_digest", String(DIGEST), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("actor", String(ACTOR), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("rollout_id", String(40), nullable=True),
    ForeignKeyConstraint(["policy", "to_digest"], ["versions.policy", "versions.digest"]),
    Index(None, "policy", "id"),
)

audit = Table(
    "audit",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(ACTOR), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("details", Text, nullable=False),
    Index(None, "subject", "id"),
)

#: The change counter in ``store_state`` that every routing change bumps.
ROUTING_KEY = "routing"

store_state = Table(
    "store_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("policy", String(NAME), ForeignKey("policies.name"), nullable=False),
    Column("baseline_digest", String(DIGEST), nullable=False),
    Column("candidate_digest", String(DIGEST), nullable=False),
    Column("state", String(16), nullable=False),
    Column("stage_index", Integer, nullable=False),
    Column("traffic_bp", Integer, nullable=False),
    Column("salt", String(64), nullable=False),
    Column("plan", Text, nullable=False),
    Column("plan_hash", String(DIGEST), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("actor", String(ACTOR), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("stage_started_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime(), nullable=True),
    Column("end_reason", Text, nullable=True),
    ForeignKeyConstraint(["policy", "candidate_digest"], ["versions.policy", "versions.digest"]),
    ForeignKeyConstraint(["policy", "baseline_digest"], ["versions.policy", "versions.digest"]),
    # Invariant 3: at most one active rollout per policy, enforced by the database itself.
    Index(
        "uq_rollouts_one_active",
        "policy",
        unique=True,
        sqlite_where=text("state IN ('running', 'paused')"),
        postgresql_where=text("state IN ('running', 'paused')"),
    ),
)

rejections = Table(
    "rejections",
    metadata,
    Column("policy", String(NAME), primary_key=True),
    Column("digest", String(DIGEST), primary_key=True),
    Column("rollout_id", String(40), ForeignKey("rollouts.id"), primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("reason", Text, nullable=False),
    ForeignKeyConstraint(["policy", "digest"], ["versions.policy", "versions.digest"]),
)

events = Table(
    "events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("decision_id", String(40), nullable=False, unique=True),
    Column("policy", String(NAME), nullable=False),
    Column("rollout_id", String(40), nullable=True),
    Column("arm", String(16), nullable=False),
    Column("version_digest", String(DIGEST), nullable=False),
    Column("stage", String(64), nullable=True),
    Column("traffic_bp", Integer, nullable=False),
    Column("scheme", Integer, nullable=False),
    Column("sticky", Boolean, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("latency_ms", Float, nullable=True),
    Column("error", Boolean, nullable=True),
    Column("quality", Float, nullable=True),
    Column("safety_flags", Text, nullable=False),
    Column("flag_count", Integer, nullable=False),
    Column("cost_usd", Float, nullable=True),
    Column("input_tokens", BigInteger, nullable=True),
    Column("output_tokens", BigInteger, nullable=True),
    Column("model", String(200), nullable=True),
    Column("metrics", Text, nullable=False),
    Index(None, "rollout_id", "id"),
    Index(None, "policy", "at"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("decision_id", String(40), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("quality", Float, nullable=True),
    Column("metrics", Text, nullable=False),
    # Written by the SDK with each row, so a batch retried after an unknown commit outcome
    # cannot store the same feedback twice (migration 0003; NULL only for older rows).
    Column("key", String(48), nullable=True, unique=True),
    # One value per decision and metric ("quality", "metrics.<name>"): the first stored wins
    # (_feedback.py; migration 0004; NULL only for older rows, which may hold several).
    Column("metric", String(80), nullable=True),
    Index(None, "decision_id"),
    Index(None, "at"),
    UniqueConstraint("decision_id", "metric"),
)

#: Decisions routed and outcomes recorded, per SDK process ("source"), rollout, routing window
#: and share: the input of the built-in ``outcomes_recorded`` guardrail (migration 0006). The
#: counts are cumulative per row and written with MAX(), so a retried flush is idempotent.
routed_counts = Table(
    "routed_counts",
    metadata,
    Column("rollout_id", String(40), ForeignKey("rollouts.id"), nullable=False),
    Column("source", String(40), nullable=False),
    Column("window_start", UTCDateTime(), nullable=False),
    Column("traffic_bp", Integer, nullable=False),
    Column("policy", String(NAME), nullable=False),
    Column("stage", String(64), nullable=True),
    Column("window_end", UTCDateTime(), nullable=False),
    Column("routed_stable", BigInteger, nullable=False),
    Column("routed_candidate", BigInteger, nullable=False),
    Column("recorded_stable", BigInteger, nullable=False),
    Column("recorded_candidate", BigInteger, nullable=False),
    PrimaryKeyConstraint("rollout_id", "source", "window_start", "traffic_bp"),
    Index(None, "rollout_id", "window_end"),
    Index(None, "window_end"),
)

#: Tables whose rows may never be updated or deleted (design invariants 1 and 2).
APPEND_ONLY = ("versions", "release_history", "audit")

# -- controller, alerts and incidents (migration 0002) --------------------------------------

monitor_states = Table(
    "monitor_states",
    metadata,
    Column("rollout_id", String(40), ForeignKey("rollouts.id"), primary_key=True),
    Column("state", Text, nullable=False),
    Column("events_through", BigInteger, nullable=False),
    Column("feedback_through", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

rollout_ticks = Table(
    "rollout_ticks",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("rollout_id", String(40), ForeignKey("rollouts.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("stage_index", Integer, nullable=False),
    Column("traffic_bp", Integer, nullable=False),
    Column("action", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("verdicts", Text, nullable=False),
    Column("events_through", BigInteger, nullable=False),
    Column("feedback_through", BigInteger, nullable=False),
    # What decide() saw besides the verdicts (stage clock, samples, now): replayable trace.
    Column("inputs", Text, nullable=False),
    UniqueConstraint("rollout_id", "seq"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("policy", String(NAME), nullable=True),
    Column("rollout_id", String(40), nullable=True),
    Column("kind", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("summary", Text, nullable=False),
    Column("payload", Text, nullable=False),
)

alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("alert_id", BigInteger, ForeignKey("alerts.id"), primary_key=True),
    Column("sink", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index(None, "status", "next_attempt_at"),
)

incidents = Table(
    "incidents",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("rollout_id", String(40), ForeignKey("rollouts.id"), nullable=False),
    Column("policy", String(NAME), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("summary", Text, nullable=False),
    Column("bundle", Text, nullable=False),
    Column("bundle_hash", String(DIGEST), nullable=False),
    Index(None, "policy", "created_at"),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("acquired_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("name", String(NAME), primary_key=True),
    Column("role", String(16), nullable=False),
    # JSON list of policy names the token is limited to; "[]" means every policy.
    Column("policies", Text, nullable=False),
    # sha256 of the secret: the secret itself is shown once and never stored.
    Column("digest", String(DIGEST), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("revoked_by", String(200), nullable=True),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("actor", String(NAME), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("request_hash", String(DIGEST), nullable=False),
    # NULL while the first request is still being handled.
    Column("status", Integer, nullable=True),
    Column("response", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Index(None, "created_at"),
)
