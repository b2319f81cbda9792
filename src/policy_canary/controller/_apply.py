"""Applying a decision: one transaction that writes the transition and all its consequences.

The rollout row (compare-and-swap on its revision), the monitor state and cursors, the tick of
the decision trace, the audit event, the routing epoch and the alert outbox row are written
together; a rollback adds the candidate's rejection and the incident, a promotion the move of
the stable pointer (design invariants 2, 6 and 7). If any of it fails, none of it happened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from policy_canary.alerts import AlertKind, Severity, enqueue_alert
from policy_canary.canonical import jsonable
from policy_canary.controller._bundle import write_incident
from policy_canary.controller._model import (
    Action,
    ActionKind,
    RolloutSnapshot,
    RolloutState,
    notice,
)
from policy_canary.controller._rows import (
    Rollout,
    Tick,
    bump_revisions,
    compare_and_swap,
    record_rejection,
    record_tick,
    record_ticks,
    record_transition,
)
from policy_canary.controller._state import StoredState, write_state, write_states
from policy_canary.monitoring import Verdict
from policy_canary.plan import BPS
from policy_canary.registry import ReleaseKind, move_stable
from policy_canary.store import Store

#: Alert kind and severity of each transition.
ALERTS: Mapping[ActionKind, tuple[AlertKind, Severity]] = {
    ActionKind.ROLLBACK: (AlertKind.ROLLBACK, Severity.CRITICAL),
    ActionKind.PAUSE: (AlertKind.PAUSED, Severity.WARNING),
    ActionKind.PROMOTE: (AlertKind.PROMOTED, Severity.INFO),
    ActionKind.ADVANCE: (AlertKind.STAGE_ADVANCED, Severity.INFO),
}
GUARDRAIL_ALERT = (AlertKind.GUARDRAIL_ALERT, Severity.WARNING)


@dataclass(frozen=True, slots=True)
class AppliedAction:
    """An action together with everything that led to it (what the trace records)."""

    action: Action
    snapshot: RolloutSnapshot
    verdicts: tuple[Verdict, ...]
    now: datetime
    actor: str
    manual: bool = False

    def inputs(self) -> dict[str, Any]:
        """What decide() saw besides the verdicts, plus the outcome's code (trace ``inputs``)."""
        return {
            "snapshot": self.snapshot.to_dict(),
            "now": self.now.isoformat(),
            "decision": self.action.to_dict(),
            "manual": self.manual,
            "actor": self.actor,
        }


def apply_decision(
    store: Store,
    conn: Connection,
    row: Rollout,
    applied: AppliedAction,
    *,
    state: StoredState,
) -> Rollout:
    """Write ``applied`` for ``row`` inside ``conn``'s transaction; return the row after it.

    ``state`` is the rollout's stored state after this tick's events (saved with the alerts
    the action raises added to its ledger).

    Raises :class:`~policy_canary.controller._rows.StaleRevisionError` (and so rolls the whole
    transaction back) when the rollout changed since ``row`` was read.
    """
    action = applied.action
    after = compare_and_swap(conn, row, **_row_changes(row, action, applied.now))
    state.ledger.alerted |= set(action.alerts)
    write_state(conn, row.id, state, applied.now)
    tick = _tick(row, after, applied, state)
    if action.kind.is_transition():
        details = _audit_details(after, action)
        record_transition(store, conn, tick, policy=row.policy, actor=applied.actor,
                          reason=action.message, details=details)  # fmt: skip
    else:
        record_tick(conn, tick)
    _enqueue_guardrail_alerts(conn, after, applied)
    if action.kind.is_transition():
        _write_consequences(store, conn, row, after, applied, state)
        _enqueue_transition_alert(conn, after, applied)
    return after


def is_quiet_hold(action: Action) -> bool:
    """True for a hold that raises no alert: all it writes is the row, the state and a tick."""
    return action.kind is ActionKind.HOLD and not action.alerts


def apply_holds(
    conn: Connection,
    holds: Sequence[tuple[Rollout, AppliedAction, StoredState]],
    *,
    last_seqs: Mapping[str, int],
) -> list[Rollout]:
    """:func:`apply_decision` of many quiet holds at once: the same rows, one statement a table.

    ``last_seqs`` holds each rollout's newest trace sequence number (none: no tick yet). The
    caller holds the rollouts' policy locks since it read ``holds``' rows; a revision that
    moved anyway raises a StoreError (and so rolls the caller's whole transaction back).
    """
    assert all(is_quiet_hold(applied.action) for _, applied, _ in holds), "holds only"
    afters = bump_revisions(conn, [row for row, _, _ in holds])
    write_states(conn, [(row.id, state, applied.now) for row, applied, state in holds])
    ticks = [
        (_tick(row, after, applied, state), last_seqs.get(row.id, 0) + 1)
        for (row, applied, state), after in zip(holds, afters, strict=True)
    ]
    record_ticks(conn, ticks)
    return afters


def _row_changes(row: Rollout, action: Action, now: datetime) -> dict[str, Any]:
    """The columns of the rollout row that ``action`` changes (none for a hold)."""
    ended = {"ended_at": now, "end_reason": action.message}
    if action.kind is ActionKind.ADVANCE:
        nxt = row.plan.stage(row.stage_index + 1)
        return {
            "stage_index": row.stage_index + 1,
            "traffic_bp": nxt.traffic_bp,
            "stage_started_at": now,
        }
    if action.kind is ActionKind.PAUSE:
        return {"state": RolloutState.PAUSED.value}
    if action.kind is ActionKind.ROLLBACK:
        return {"state": RolloutState.ROLLED_BACK.value, "traffic_bp": 0, **ended}
    if action.kind is ActionKind.PROMOTE:
        return {"state": RolloutState.PROMOTED.value, "traffic_bp": BPS, **ended}
    return {}


def _tick(row: Rollout, after: Rollout, applied: AppliedAction, state: StoredState) -> Tick:
    """The decision trace's row of this action: the stage it was taken in, what decide() saw."""
    action = applied.action
    return Tick(
        rollout_id=row.id,
        at=applied.now,
        revision=after.revision,
        stage_index=row.stage_index,
        traffic_bp=row.traffic_bp,
        action=action.kind.value,
        message=action.message,
        inputs=applied.inputs(),
        cursors=state.cursors,
        verdicts=applied.verdicts,
    )


def _audit_details(after: Rollout, action: Action) -> dict[str, Any]:
    """What a transition's audit row records besides its actor and reason."""
    return {
        "revision": after.revision,
        "stage_index": after.stage_index,
        "traffic_bp": after.traffic_bp,
        "code": action.reason.value,
        "guardrails": list(action.guardrails),
    }


def _write_consequences(
    store: Store,
    conn: Connection,
    row: Rollout,
    after: Rollout,
    applied: AppliedAction,
    state: StoredState,
) -> None:
    """A rollback's rejection and incident; a promotion's move of the stable pointer."""
    action, now = applied.action, applied.now
    if action.kind is ActionKind.ROLLBACK:
        record_rejection(
            conn,
            policy=row.policy,
            digest=row.candidate_digest,
            rollout_id=row.id,
            at=now,
            reason=action.message,
        )
        write_incident(
            conn,
            before=row,
            after=after,
            kind="manual_rollback" if applied.manual else "automatic_rollback",
            action=action,
            verdicts=applied.verdicts,
            ledger=state.ledger,
            cursors=state.cursors,
            at=now,
        )
    elif action.kind is ActionKind.PROMOTE:
        move_stable(
            store,
            conn,
            policy=row.policy,
            to_id=row.candidate_digest,
            kind=ReleaseKind.PROMOTION,
            actor=applied.actor,
            reason=action.message,
            at=now,
            rollout_id=row.id,
        )


def _enqueue_guardrail_alerts(conn: Connection, after: Rollout, applied: AppliedAction) -> None:
    """One alert per alert-only guardrail that fired for the first time."""
    kind, severity = GUARDRAIL_ALERT
    for name in applied.action.alerts:
        _enqueue(
            conn,
            after,
            applied,
            key=f"{after.id}:{kind}:{name}",
            kind=kind,
            severity=severity,
            summary=notice("guardrail_alert", policy=after.policy, guardrail=name),
        )


def _enqueue_transition_alert(conn: Connection, after: Rollout, applied: AppliedAction) -> None:
    """The alert every transition raises (its kind and severity from :data:`ALERTS`)."""
    action = applied.action
    kind, severity = ALERTS[action.kind]
    _enqueue(
        conn,
        after,
        applied,
        key=f"{after.id}:{kind}:{after.revision}",
        kind=kind,
        severity=severity,
        summary=notice("alert", policy=after.policy, message=action.message),
    )


def _enqueue(
    conn: Connection,
    after: Rollout,
    applied: AppliedAction,
    *,
    key: str,
    kind: AlertKind,
    severity: Severity,
    summary: str,
) -> None:
    enqueue_alert(
        conn,
        key=key,
        kind=kind,
        severity=severity,
        summary=summary,
        payload=_payload(after, applied.action, applied.verdicts),
        at=applied.now,
        policy=after.policy,
        rollout_id=after.id,
    )


def _payload(row: Rollout, action: Action, verdicts: Sequence[Verdict]) -> dict[str, Any]:
    data: dict[str, Any] = jsonable(
        {
            "rollout": row.to_dict(),
            "decision": action.to_dict(),
            "verdicts": [v.to_dict() for v in verdicts],
        }
    )
    return data
