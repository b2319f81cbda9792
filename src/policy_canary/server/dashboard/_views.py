"""What each page shows, assembled from the same library calls as the CLI and the API."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from policy_canary.alerts import list_alerts
from policy_canary.controller import RolloutStatus
from policy_canary.monitoring import VerdictStatus
from policy_canary.server._state import ServerState
from policy_canary.server.dashboard._series import Series, build_series
from policy_canary.store._audit import audit_entries

#: Worst first: the overview shows each rollout's worst current verdict.
_SEVERITY = {
    VerdictStatus.BREACH.value: 0,
    VerdictStatus.INSUFFICIENT_DATA.value: 1,
    VerdictStatus.PASS.value: 2,
}


def worst_verdict(verdicts: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The verdict to show first: a breach over missing data over a pass."""
    if not verdicts:
        return None
    return min(verdicts, key=lambda v: _SEVERITY.get(str(v.get("status")), 3))


@dataclass(frozen=True, slots=True)
class PolicyRow:
    """One line of the overview."""

    name: str
    stable: str | None
    latest: str
    rollout: Mapping[str, Any] | None
    worst: Mapping[str, Any] | None
    last_change: Mapping[str, Any] | None
    dwell_percent: int
    samples_percent: int


def _progress(done: float, needed: float) -> int:
    if needed <= 0:
        return 100
    return max(0, min(100, int(100 * done / needed)))


def overview(state: ServerState) -> list[PolicyRow]:
    """Every policy: stable, its active (or latest) rollout, worst verdict, last transition."""
    rows = []
    for policy in state.registry.policies():
        statuses = state.rollouts.status(policy.name)
        status = statuses[0] if statuses else None
        rollout = status.to_dict() if status else None
        worst = worst_verdict(rollout["verdicts"]) if rollout else None
        change = None
        dwell = samples = 0
        if status is not None and rollout is not None:
            found = audit_entries(
                state.canary.store, limit=1, subject=f"{policy.name}/{status.rollout.id}"
            )
            change = found[0] if found else None
            dwell = _progress(
                status.dwell.total_seconds(), status.stage.min_duration.total_seconds()
            )
            fewest = min(status.samples.values()) if status.samples else 0
            samples = _progress(fewest, status.stage.min_samples)
        rows.append(
            PolicyRow(
                name=policy.name,
                stable=policy.stable.label if policy.stable else None,
                latest=policy.latest.label,
                rollout=rollout,
                worst=worst,
                last_change=change,
                dwell_percent=dwell,
                samples_percent=samples,
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class StageRow:
    """One stage of the timeline."""

    number: int
    name: str
    share: int
    strict: bool
    entered_at: datetime | str | None
    dwell_seconds: int
    min_duration_seconds: int
    samples: Mapping[str, int]
    min_samples: int
    where: str  # done, current, ended, ahead


def _entries(status: RolloutStatus, trace: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """When the rollout entered each stage it reached (from the trace's advances)."""
    entered: dict[int, str] = {0: status.rollout.created_at.isoformat()}
    for tick in trace:
        if tick.get("action") == "advance":
            entered[int(tick["stage_index"]) + 1] = str(tick["at"])
    entered[status.rollout.stage_index] = status.rollout.stage_started_at.isoformat()
    return entered


def timeline(status: RolloutStatus, trace: Sequence[Mapping[str, Any]]) -> list[StageRow]:
    """Each stage: share, entry time, dwell and samples against its minimums."""
    plan = status.rollout.plan
    current = status.rollout.stage_index
    active = status.rollout.state.is_active()
    entered = _entries(status, trace)
    aggregates = status.aggregates
    rows = []
    for index, stage in enumerate(plan.stages):
        if index < current:
            where = "done"
            nxt = datetime.fromisoformat(entered[index + 1]) if index + 1 in entered else None
            start = datetime.fromisoformat(entered[index]) if index in entered else None
            dwell = (nxt - start) if nxt and start else timedelta(0)
        elif index == current:
            where = "current" if active else "ended"
            dwell = status.dwell
        else:
            where, dwell = "ahead", timedelta(0)
        arms = aggregates.get(stage.name, {})
        rows.append(
            StageRow(
                number=index + 1,
                name=stage.name,
                share=stage.traffic_bp,
                strict=stage.strict,
                entered_at=entered.get(index) if index <= current else None,
                dwell_seconds=int(dwell.total_seconds()),
                min_duration_seconds=int(stage.min_duration.total_seconds()),
                samples={
                    arm: int(arms.get(arm, {}).get("requests", 0))
                    for arm in ("stable", "candidate")
                },
                min_samples=stage.min_samples,
                where=where,
            )
        )
    return rows


@dataclass
class RolloutView:
    """Everything the rollout page shows."""

    status: Mapping[str, Any]
    stages: list[StageRow]
    series: list[Series]
    trace: list[Mapping[str, Any]]
    plan: str
    incident_id: str | None
    arms: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def rollout(state: ServerState, rollout_id: str) -> RolloutView:
    """The rollout page: timeline, one chart per guardrail, the trace, the frozen plan."""
    status = state.rollouts.get(rollout_id)
    trace = state.rollouts.trace(rollout_id)
    plan = status.rollout.plan
    names = [s.name for s in plan.stages]
    incident = next(
        (
            i.id
            for i in state.incidents.list(policy=status.rollout.policy, limit=1000)
            if i.rollout_id == rollout_id
        ),
        None,
    )
    acted = [t for t in trace if t.get("action") != "hold" or t.get("inputs", {}).get("manual")]
    totals: dict[str, dict[str, Any]] = {}
    for arms in status.aggregates.values():
        for arm, agg in arms.items():
            into = totals.setdefault(arm, {"requests": 0, "errors": 0, "flagged": 0})
            for key in into:
                into[key] += int(agg.get(key, 0))
    return RolloutView(
        status=status.to_dict(),
        stages=timeline(status, trace),
        series=build_series(trace, names),
        trace=[*reversed(acted)],
        plan=json.dumps(plan.to_dict(), indent=2, sort_keys=True, ensure_ascii=False),
        incident_id=incident,
        arms=totals,
    )


@dataclass(frozen=True, slots=True)
class DiffRow:
    """One line pair of a side-by-side diff."""

    kind: str  # same, changed, added, removed
    left: str | None
    right: str | None
    left_number: int | None
    right_number: int | None


def side_by_side(left: str, right: str) -> list[DiffRow]:
    """Align two texts line by line (difflib's opcodes), for a two-column diff."""
    a, b = left.splitlines(), right.splitlines()
    rows: list[DiffRow] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            rows += [
                DiffRow("same", a[i1 + k], b[j1 + k], i1 + k + 1, j1 + k + 1)
                for k in range(i2 - i1)
            ]
            continue
        span = max(i2 - i1, j2 - j1)
        for k in range(span):
            li, rj = i1 + k, j1 + k
            lhs = a[li] if li < i2 else None
            rhs = b[rj] if rj < j2 else None
            kind = (
                "changed"
                if lhs is not None and rhs is not None
                else ("removed" if lhs is not None else "added")
            )
            rows.append(
                DiffRow(
                    kind,
                    lhs,
                    rhs,
                    li + 1 if lhs is not None else None,
                    rj + 1 if rhs is not None else None,
                )
            )
    return rows


def _pretty(spec: Any) -> str:
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False)


@dataclass
class PolicyView:
    """The policy page: versions, the release history, its rollouts, a diff of two versions."""

    name: str
    stable: str | None
    versions: Sequence[Mapping[str, Any]]
    history: Sequence[Mapping[str, Any]]
    rollouts: Sequence[Mapping[str, Any]]
    left: str
    right: str
    diff: list[DiffRow]
    paths: Mapping[str, Sequence[str]]


def policy(state: ServerState, name: str, left: str | None, right: str | None) -> PolicyView:
    """The policy page; the diff compares ``left`` and ``right`` (default: stable and latest)."""
    registry = state.registry
    versions = registry.versions(name)
    stable = registry.stable(name)
    labels = {v.id: v.label for v in versions}
    a = left or (stable.label if stable else versions[0].label)
    b = right or versions[-1].label
    compared = registry.diff(name, a, b)
    history = [
        {**e.to_dict(), "from": labels.get(e.from_id or ""), "to": labels.get(e.to_id)}
        for e in reversed(registry.history(name))
    ]
    return PolicyView(
        name=name,
        stable=stable.label if stable else None,
        versions=[{**v.to_dict(), "label": v.label} for v in reversed(versions)],
        history=history,
        rollouts=[s.to_dict() for s in state.rollouts.history(name)],
        left=compared.a.label,
        right=compared.b.label,
        diff=side_by_side(_pretty(compared.a.spec), _pretty(compared.b.spec)),
        paths={"added": compared.added, "removed": compared.removed, "changed": compared.changed},
    )


def alerts(state: ServerState, status: str | None) -> list[Mapping[str, Any]]:
    """Alerts with each sink's delivery (``status``: pending, delivered, failed or all)."""
    return [v.to_dict() for v in list_alerts(state.canary.store, status=status, limit=500)]
