"""Starting a rollout: the checks, the frozen plan and the armed monitors in one write."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, select
from sqlalchemy.exc import IntegrityError

from policy_canary.controller._model import RolloutSnapshot, RolloutState, notice
from policy_canary.controller._monitoring import (
    BASELINE_EVENTS,
    MonitorFactory,
    event_from_row,
    feedback_from_row,
)
from policy_canary.controller._rows import (
    Cursors,
    Rollout,
    Tick,
    active_rollout,
    load_rollout,
    record_transition,
)
from policy_canary.controller._state import StoredState, write_state
from policy_canary.errors import ConflictError
from policy_canary.monitoring import (
    Baseline,
    MetricCoverage,
    MonitorEvent,
    metrics_coverage,
    uncovered,
)
from policy_canary.plan import RolloutPlan
from policy_canary.registry import Version, lock_policy, require_policy, resolve_in
from policy_canary.serving._splitter import new_salt
from policy_canary.store import Store
from policy_canary.store.schema import events, feedback, rejections, rollouts


def start_rollout(
    store: Store,
    *,
    policy: str,
    candidate: str,
    plan: RolloutPlan,
    actor: str,
    reason: str,
    force: bool,
    now: datetime,
    monitors: MonitorFactory,
    salt: str | None = None,
    require_metrics: bool = False,
) -> Rollout:
    """Check, then write the rollout, its frozen plan, its armed monitors and its first tick.

    See :meth:`policy_canary.controller._rollouts.Rollouts.start` for the rules.
    """
    try:
        with store.begin() as conn:
            lock_policy(store, conn, policy)
            target, stable, rejected = _check_start(conn, policy, candidate, force=force)
            recent = baseline_events(conn, policy, stable.id)
            if require_metrics:
                _check_coverage(conn, policy, stable, plan, recent)
            monitor = monitors.create(plan, recent)
            rollout_id = "ro_" + secrets.token_hex(8)
            _insert_rollout(
                conn,
                rollout_id,
                target=target,
                stable=stable,
                plan=plan,
                actor=actor,
                reason=reason,
                now=now,
                salt=salt,
            )
            state = StoredState.initial(monitor)
            write_state(conn, rollout_id, state, now, insert=True)
            _record_start(
                store,
                conn,
                rollout_id,
                target=target,
                stable=stable,
                plan=plan,
                forced=rejected is not None,
                actor=actor,
                reason=reason,
                now=now,
            )
            return load_rollout(conn, rollout_id)
    except IntegrityError:
        # Another process started a rollout of this policy between our check and insert
        # (the partial unique index is the database's own guard of invariant 3).
        raise ConflictError(
            f"policy {policy!r} already has an active rollout; see "
            f"'policy-canary rollout status {policy}'"
        ) from None


def _check_start(
    conn: Connection, policy: str, candidate: str, *, force: bool
) -> tuple[Version, Version, Row[Any] | None]:
    """The candidate and stable versions, and the rejection ``force`` overrides (if any).

    Raises a ConflictError when the rollout may not start.
    """
    pol = require_policy(conn, policy)
    target = resolve_in(conn, policy, candidate)
    stable_id = pol["stable_digest"]
    if stable_id is None:
        raise ConflictError(
            f"policy {policy!r} has no stable version to compare against; "
            f"make one stable with 'policy-canary policy set-stable {policy} REF'"
        )
    stable = resolve_in(conn, policy, stable_id)
    if target.id == stable.id:
        raise ConflictError(
            f"{policy}@{target.label} is already the stable version; push a new "
            "version and roll that out"
        )
    active = active_rollout(conn, policy)
    if active is not None:
        raise ConflictError(
            f"policy {policy!r} already has an active rollout {active.id} "
            f"({active.state.value}); promote, roll back or abort it first"
        )
    rejected = conn.execute(
        select(rejections)
        .where(rejections.c.policy == policy, rejections.c.digest == target.id)
        .order_by(rejections.c.at.desc())
    ).first()
    if rejected is not None and not force:
        raise ConflictError(
            f"{policy}@{target.label} was rejected by rollout {rejected.rollout_id} "
            f"at {rejected.at:%Y-%m-%d %H:%M} ({rejected.reason}); a rejected "
            "candidate is never retried automatically: fix it and push a new "
            "version, or start it again with --force --reason TEXT"
        )
    return target, stable, rejected


def _check_coverage(
    conn: Connection, policy: str, stable: Version, plan: RolloutPlan, recent: list[MonitorEvent]
) -> None:
    """Refuse the start when stable's recent traffic does not carry a guardrail's metric."""
    found = metrics_coverage(
        plan.guardrails, recent + baseline_feedback(conn, policy, stable.id), prices=plan.prices
    )
    missing = uncovered(found)
    if missing:
        raise ConflictError(
            f"{policy}@{stable.label}'s recent traffic does not show every guardrail's metric "
            f"(--require-metrics): {'; '.join(m.message() for m in missing)}"
        )


def _insert_rollout(
    conn: Connection,
    rollout_id: str,
    *,
    target: Version,
    stable: Version,
    plan: RolloutPlan,
    actor: str,
    reason: str,
    now: datetime,
    salt: str | None,
) -> None:
    """The rollout row: running at the first stage's share, with its frozen plan."""
    conn.execute(
        rollouts.insert().values(
            id=rollout_id,
            policy=target.policy,
            baseline_digest=stable.id,
            candidate_digest=target.id,
            state=RolloutState.RUNNING.value,
            stage_index=0,
            traffic_bp=plan.stage(0).traffic_bp,
            salt=salt or new_salt(),
            plan=plan.canonical(),
            plan_hash=plan.digest,
            revision=1,
            actor=actor,
            reason=reason,
            created_at=now,
            stage_started_at=now,
        )
    )


def _record_start(
    store: Store,
    conn: Connection,
    rollout_id: str,
    *,
    target: Version,
    stable: Version,
    plan: RolloutPlan,
    forced: bool,
    actor: str,
    reason: str,
    now: datetime,
) -> None:
    """The start's tail: its tick (what a replay reads), its audit row, the epoch bump."""
    first = plan.stage(0)
    text = notice(
        "started_forced" if forced else "started",
        candidate=target.label,
        baseline=stable.label,
        stage=first.describe(),
        reason=reason,
    )
    snapshot = RolloutSnapshot(RolloutState.RUNNING, 0, now)
    inputs = {
        "snapshot": snapshot.to_dict(),
        "now": now.isoformat(),
        "manual": True,
        "actor": actor,
    }
    record_transition(
        store,
        conn,
        Tick(rollout_id, now, 1, 0, first.traffic_bp, "start", text, inputs, Cursors()),
        policy=target.policy,
        actor=actor,
        reason=reason or text,
        details={
            "candidate": target.id,
            "baseline": stable.id,
            "plan_hash": plan.digest,
            "forced": forced,
        },
    )


def baseline_events(conn: Connection, policy: str, stable_id: str) -> list[MonitorEvent]:
    """Stable's most recent events (oldest first): what the baseline snapshot summarises.

    Picked by version, so either arm counts: right after a promotion the new stable's recent
    traffic is the traffic it served as the candidate, and the same spec behaves the same
    whichever arm it is on (:meth:`Baseline.from_events` keeps them all).
    """
    rows = (
        conn.execute(
            select(events)
            .where(
                events.c.policy == policy,
                events.c.version_digest == stable_id,
            )
            .order_by(events.c.id.desc())
            .limit(BASELINE_EVENTS)
        )
    ).all()
    return [event_from_row(r) for r in reversed(rows)]


def baseline_feedback(conn: Connection, policy: str, stable_id: str) -> list[MonitorEvent]:
    """Late feedback on the decisions :func:`baseline_events` returns (for metrics coverage)."""
    recent = (
        select(events.c.decision_id, events.c.arm, events.c.traffic_bp)
        .where(events.c.policy == policy, events.c.version_digest == stable_id)
        .order_by(events.c.id.desc())
        .limit(BASELINE_EVENTS)
        .subquery()
    )
    rows = (
        conn.execute(
            select(
                feedback.c.at,
                feedback.c.quality,
                feedback.c.metrics,
                recent.c.arm,
                recent.c.traffic_bp,
            )
            .join(recent, recent.c.decision_id == feedback.c.decision_id)
            .order_by(feedback.c.id)
        )
        .mappings()
        .all()
    )
    return [feedback_from_row(r) for r in rows]


def stable_coverage(store: Store, policy: str, plan: RolloutPlan) -> tuple[MetricCoverage, ...]:
    """Per guardrail of ``plan``, whether ``policy``'s stable traffic carries its metric."""
    with store.read() as conn:
        pol = require_policy(conn, policy)
        if pol["stable_digest"] is None:
            raise ConflictError(f"policy {policy!r} has no stable version yet")
        recent = baseline_events(conn, policy, pol["stable_digest"])
        recent += baseline_feedback(conn, policy, pol["stable_digest"])
    return metrics_coverage(plan.guardrails, recent, prices=plan.prices)


def stable_baseline(store: Store, policy: str, plan: RolloutPlan) -> Baseline:
    """The baseline a rollout of ``policy`` started now would freeze (for ``plan check``)."""
    with store.read() as conn:
        pol = require_policy(conn, policy)
        if pol["stable_digest"] is None:
            raise ConflictError(f"policy {policy!r} has no stable version yet")
        found = baseline_events(conn, policy, pol["stable_digest"])
    return Baseline.from_events(found, prices=plan.prices)
