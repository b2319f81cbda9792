"""What a scrape reads from the store: one snapshot of every policy's release state."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from policy_canary.controller import RolloutState
from policy_canary.controller._rollouts import Rollouts
from policy_canary.monitoring import Verdict
from policy_canary.store import Store
from policy_canary.store.schema import alert_deliveries, rollout_ticks, rollouts


@dataclass(frozen=True, slots=True)
class RolloutLine:
    """One policy's latest rollout as the metrics show it."""

    policy: str
    rollout_id: str
    state: str
    stage: str
    traffic_bp: int
    verdicts: tuple[Verdict, ...] = ()


@dataclass
class ReleaseSnapshot:
    """Release state at one scrape; every label set is bounded by policies and guardrails."""

    lines: list[RolloutLine] = field(default_factory=list)
    transitions: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    rollbacks: Counter[tuple[str, str]] = field(default_factory=Counter)
    deliveries: Counter[str] = field(default_factory=Counter)


def read_snapshot(store: Store, rollouts_api: Rollouts) -> ReleaseSnapshot:
    """Read the release state metrics report (a few indexed queries, no writes)."""
    snap = ReleaseSnapshot()
    active = {s.rollout.policy: s for s in rollouts_api.status()}
    for status in active.values():
        row = status.rollout
        snap.lines.append(
            RolloutLine(
                row.policy,
                row.id,
                row.state.value,
                status.stage.name,
                row.traffic_bp,
                status.verdicts,
            )
        )
    with store.read() as conn:
        latest = (
            select(rollouts.c.policy, func.max(rollouts.c.created_at).label("at"))
            .group_by(rollouts.c.policy)
            .subquery()
        )
        ended = conn.execute(
            select(rollouts.c.id, rollouts.c.policy, rollouts.c.state).join(
                latest,
                (rollouts.c.policy == latest.c.policy) & (rollouts.c.created_at == latest.c.at),
            )
        ).all()
        for rid, policy, state in ended:
            if policy not in active:
                snap.lines.append(RolloutLine(policy, rid, state, "", 0))
        moves = conn.execute(
            select(rollouts.c.policy, rollout_ticks.c.action, rollout_ticks.c.inputs,
                   rollout_ticks.c.verdicts)
            .join(rollouts, rollouts.c.id == rollout_ticks.c.rollout_id)
            .where(rollout_ticks.c.action != "hold")
        ).all()  # fmt: skip
        for policy, action, inputs, verdicts in moves:
            manual = bool(json.loads(inputs).get("manual"))
            snap.transitions[(policy, action, "manual" if manual else "controller")] += 1
            if action == "rollback":
                snap.rollbacks[(policy, "manual" if manual else _breach(verdicts))] += 1
        for status_value, count in conn.execute(
            select(alert_deliveries.c.status, func.count())
            .where(alert_deliveries.c.status != "delivered")
            .group_by(alert_deliveries.c.status)
        ).all():
            snap.deliveries[status_value] = count
    snap.lines.sort(key=lambda line: line.policy)
    return snap


def _breach(verdicts_json: str) -> str:
    """The guardrail whose breach rolled back (a bounded label: names come from the plan)."""
    verdicts: list[dict[str, Any]] = json.loads(verdicts_json)
    names = sorted(str(v["guardrail"]) for v in verdicts if v.get("status") == "breach")
    return names[0] if names else "controller"


#: Every rollout state, so a state series is 0 rather than absent.
ROLLOUT_STATES = tuple(s.value for s in RolloutState)
