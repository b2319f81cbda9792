"""Shared helpers for controller tests: a small plan, a counting monitor, event insertion."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from policy_canary.controller._state import read_state
from policy_canary.guardrails import GuardrailKind
from policy_canary.monitoring import MonitorEvent, Verdict, VerdictStatus
from policy_canary.plan import RolloutPlan
from policy_canary.registry import Registry
from policy_canary.store import Store
from policy_canary.store.schema import events
from policy_canary.testing import ManualClock

POLICY = "support-agent"

PLAN_YAML = """\
alpha: 0.01
guardrails:
  - {name: error_rate, metric: error, max_increase: 20%}
  - {name: critical, metric: safety_flags, tripwire: true, flags: [critical]}
  - {name: quality, metric: quality, max_decrease: 5%, action: alert}
stages:
  - {name: canary, traffic: 1, min_duration: 10m, max_duration: 1h, min_samples: 10}
  - name: validation
    traffic: 10
    strict: true
    min_duration: 20m
    max_duration: 2h
    min_samples: 20
    guardrails: {error_rate: {max_increase: 10%}}
  - {name: soak, traffic: 50, min_duration: 30m, min_samples: 30}
"""


def small_plan() -> RolloutPlan:
    """Three stages, three guardrails (relative, tripwire, alert-only)."""
    return RolloutPlan.loads(PLAN_YAML, source="plan.yaml")


class CountingMonitor:
    """A deterministic stand-in for the statistical monitors.

    ``error_rate`` breaches once the candidate has ``breach_after`` errors; ``quality``
    breaches (alert only) once a candidate quality below 0.5 is seen; the tripwire fires on a
    candidate event flagged ``critical``. Every other verdict passes (non-inferior) once the
    candidate has ``min_n`` requests, and lacks data before.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = dict(data)

    def fold(self, batch: Iterable[MonitorEvent]) -> int:
        n = 0
        for e in batch:
            n += 1
            if not e.is_candidate:
                continue
            if e.quality is not None and e.quality < 0.5:
                self.data["low_quality"] += 1
            if e.feedback:
                continue
            self.data["n"] += 1
            self.data["errors"] += bool(e.error)
            self.data["critical"] += "critical" in e.safety_flags
        return n

    def verdicts(self, stage: str | None = None) -> list[Verdict]:
        plan = RolloutPlan.from_frozen(self.data["plan"])
        index = next(i for i, s in enumerate(plan.stages) if s.name == stage)
        result = []
        for g in plan.stage_guardrails(index):
            if g.kind is GuardrailKind.TRIPWIRE:
                status = VerdictStatus.BREACH if self.data["critical"] else VerdictStatus.PASS
            elif (g.metric == "error" and self.data["errors"] >= self.data["breach_after"]) or (
                g.metric == "quality" and self.data["low_quality"]
            ):
                status = VerdictStatus.BREACH
            elif self.data["n"] >= self.data["min_n"]:
                status = VerdictStatus.PASS
            else:
                status = VerdictStatus.INSUFFICIENT_DATA
            result.append(
                Verdict(
                    guardrail=g.name,
                    metric=g.metric,
                    status=status,
                    action=g.action,
                    reason=f"{g.name}: {status.value} after {self.data['n']} candidate requests",
                    evidence={"n": self.data["n"], "errors": self.data["errors"]},
                    non_inferior=status is VerdictStatus.PASS,
                    tripwire=g.kind is GuardrailKind.TRIPWIRE,
                )
            )
        return result

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


class CountingMonitors:
    """Factory for :class:`CountingMonitor`."""

    def __init__(self, *, breach_after: int = 5, min_n: int = 5) -> None:
        self.breach_after = breach_after
        self.min_n = min_n

    def create(self, plan: RolloutPlan, baseline: Sequence[MonitorEvent]) -> CountingMonitor:
        return CountingMonitor(
            {
                "plan": plan.canonical(),
                "breach_after": self.breach_after,
                "min_n": self.min_n,
                "n": 0,
                "errors": 0,
                "critical": 0,
                "low_quality": 0,
                "baseline_n": len(baseline),
            }
        )

    def load(self, data: Mapping[str, Any]) -> CountingMonitor:
        return CountingMonitor(data)


def setup_policy(store: Store, clock: ManualClock) -> Registry:
    """Register v1 (stable) and v2 of POLICY."""
    registry = Registry(store, clock=clock)
    registry.register(POLICY, {"prompt": "v1"}, message="first", author="alice")
    registry.register(POLICY, {"prompt": "v2"}, message="second", author="alice")
    return registry


def canary_samples(store: Store, rollout_id: str) -> dict[str, int]:
    """The requests per arm that a rollout's stored ledger counts in its canary stage."""
    with store.read() as conn:
        state = read_state(conn, rollout_id)
    assert state is not None, f"rollout {rollout_id} has no stored state"
    return state.ledger.samples("canary")


_counter = [0]


def insert_events(
    store: Store,
    *,
    rollout_id: str | None,
    stage: str | None,
    at: datetime,
    candidate: int = 0,
    stable: int = 0,
    errors: int = 0,
    flags: Sequence[str] = (),
    quality: float | None = None,
    traffic_bp: int = 100,
    latency_ms: float = 100.0,
    prefix: str | None = None,
    policy: str = POLICY,
) -> None:
    """Insert events as the SDK's flusher would; the first ``errors`` candidate ones failed.

    With ``prefix`` the decision ids are deterministic, so inserting the same batch twice
    raises IntegrityError (the crash test relies on it); without, they are unique.
    """
    registry = Registry(store)
    stable_v = registry.resolve(policy, "v1").id
    cand_v = registry.resolve(policy, "v2").id
    rows = []
    for arm, count, version in (("candidate", candidate, cand_v), ("stable", stable, stable_v)):
        for i in range(count):
            _counter[0] += 1
            rows.append(
                {
                    "decision_id": f"{prefix}-{arm}-{i}" if prefix else f"d-{_counter[0]}",
                    "policy": policy,
                    "rollout_id": rollout_id,
                    "arm": arm,
                    "version_digest": version,
                    "stage": stage,
                    "traffic_bp": traffic_bp,
                    "scheme": 1,
                    "sticky": True,
                    "at": at + timedelta(milliseconds=i),
                    "latency_ms": latency_ms,
                    "error": arm == "candidate" and i < errors,
                    "quality": quality,
                    "safety_flags": json.dumps(list(flags) if arm == "candidate" else []),
                    "flag_count": len(flags) if arm == "candidate" else 0,
                    "cost_usd": 0.01,
                    "input_tokens": None,
                    "output_tokens": None,
                    "model": None,
                    "metrics": "{}",
                }
            )
    if rows:
        with store.begin() as conn:
            conn.execute(events.insert(), rows)


def event_count(store: Store) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())
