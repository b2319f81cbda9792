"""Helpers for the serving-path tests: seed policies, fake rollouts, take the store down.

Rollouts proper are the controller's; until it exists a rollout is just a stored row, and
these helpers write exactly what the gate reads (and bump the routing change counter, as
every writer of routing state must).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from policy_canary.clock import Clock
from policy_canary.registry import Registry
from policy_canary.serving._splitter import new_salt
from policy_canary.store import Store
from policy_canary.store.schema import rollouts

POLICY = "support-agent"
STABLE_SPEC: dict[str, Any] = {"prompt": "You are a helpful support agent.", "tools": ["search"]}
CANDIDATE_SPEC: dict[str, Any] = {
    "prompt": "You are a concise, helpful support agent.",
    "tools": ["search", "refund"],
}


def seed_policy(store: Store, clock: Clock, name: str = POLICY) -> tuple[str, str]:
    """Register a stable v1 and a candidate v2 of ``name``; return their digests."""
    registry = Registry(store, clock=clock)
    v1 = registry.register(name, STABLE_SPEC, message="first", author="test").version
    v2 = registry.register(name, CANDIDATE_SPEC, message="second", author="test").version
    return v1.id, v2.id


def start_rollout(
    store: Store,
    clock: Clock,
    *,
    policy: str = POLICY,
    baseline: str,
    candidate: str,
    traffic_bp: int,
    plan: dict[str, Any] | None = None,
    stage_index: int = 0,
    salt: str | None = None,
) -> str:
    """Insert a running rollout row and bump the routing epoch; return its id."""
    rollout_id = uuid.uuid4().hex
    now = clock.now()
    with store.begin() as conn:
        conn.execute(
            rollouts.insert().values(
                id=rollout_id,
                policy=policy,
                baseline_digest=baseline,
                candidate_digest=candidate,
                state="running",
                stage_index=stage_index,
                traffic_bp=traffic_bp,
                salt=salt or new_salt(),
                plan=json.dumps(plan or {}),
                plan_hash="0" * 64,
                revision=1,
                actor="test",
                reason="test rollout",
                created_at=now,
                stage_started_at=now,
            )
        )
        store.bump_epoch(conn)
    return rollout_id


def update_rollout(store: Store, rollout_id: str, **values: Any) -> None:
    """Change a rollout row (traffic_bp, state, stage_index ...) and bump the routing epoch."""
    with store.begin() as conn:
        conn.execute(rollouts.update().where(rollouts.c.id == rollout_id).values(**values))
        store.bump_epoch(conn)


def _dead_url(store: Store) -> str:
    if store.dialect == "sqlite":
        return "sqlite:////nonexistent-policy-canary-dir/gone.db"
    return "postgresql+psycopg://postgres@127.0.0.1:1/test"


@contextmanager
def store_down(store: Store) -> Iterator[None]:
    """Point the store at a database that refuses connections, then restore it."""
    live = store.engine
    dead = create_engine(_dead_url(store), poolclass=NullPool)
    store.engine = dead
    try:
        yield
    finally:
        store.engine = live
        dead.dispose()
