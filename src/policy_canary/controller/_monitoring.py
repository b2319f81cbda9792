"""The controller's side of the monitors seam: event rows in, verdicts and stage ledgers out.

:class:`MonitorFactory` is the extension point: the default :class:`StatisticalMonitors` wraps
:class:`~policy_canary.monitoring.RolloutMonitor` (anytime-valid tests); tests and simulations may
hand the controller any object with the same two methods. :class:`Ledger` is what the
controller itself keeps next to the monitor state: requests and simple aggregates per stage
and arm (``min_samples`` and incident bundles read them), the alert-only guardrails already
alerted on, and the time range of the events seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, func, select

from policy_canary.clock import utc
from policy_canary.monitoring import (
    ARMS,
    Baseline,
    EventBatch,
    MonitorEvent,
    RolloutMonitor,
    RoutedWindow,
    Verdict,
)
from policy_canary.plan import RolloutPlan
from policy_canary.store.schema import events, routed_counts

#: How many of stable's most recent events the baseline snapshot summarises.
BASELINE_EVENTS = 5_000


class Monitor(Protocol):
    """A rollout's guardrail tests: fold events, judge them, persist as a JSON-ready dict."""

    def fold(self, events: Iterable[MonitorEvent]) -> int:
        """Fold new events in arrival order; return how many.

        The controller hands over an :class:`~policy_canary.monitoring.EventBatch`: iterating
        it gives MonitorEvents, and RolloutMonitor reads its columns instead.
        """
        ...

    def verdicts(self, stage: str | None = None) -> list[Verdict]:
        """Judge every guardrail with ``stage``'s thresholds."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The whole state, JSON-ready."""
        ...


class MonitorFactory(Protocol):
    """Creates a rollout's monitor at start and reloads it from the stored state each tick."""

    def create(self, plan: RolloutPlan, baseline: Sequence[MonitorEvent]) -> Monitor:
        """A fresh monitor for ``plan``, with the baseline snapshot of stable's recent events."""
        ...

    def load(self, data: Mapping[str, Any]) -> Monitor:
        """Rebuild the monitor stored by an earlier tick; it continues the same tests."""
        ...


class StatisticalMonitors:
    """The default factory: :class:`~policy_canary.monitoring.RolloutMonitor` per rollout."""

    def create(self, plan: RolloutPlan, baseline: Sequence[MonitorEvent]) -> Monitor:
        """Freeze stable's baseline; every test is sized from its guardrail's ``detect``."""
        return RolloutMonitor(
            plan.guardrails,
            alpha=plan.alpha,
            baseline=Baseline.from_events(baseline, prices=plan.prices),
            prices=plan.prices,
            stages=plan.overrides(),
            outcomes_recorded=True,
        )

    def load(self, data: Mapping[str, Any]) -> Monitor:
        """Rebuild from :meth:`RolloutMonitor.to_dict` output."""
        return RolloutMonitor.from_dict(data)


#: The ``events`` columns a :class:`MonitorEvent` is made of, in its fields' order.
EVENT_COLUMNS = tuple(
    events.c[name]
    for name in (
        "arm", "traffic_bp", "at", "latency_ms", "error", "quality", "safety_flags",
        "flag_count", "cost_usd", "input_tokens", "output_tokens", "model", "metrics",
    )
)  # fmt: skip


def event_from_row(row: Any) -> MonitorEvent:
    """An ``events`` row (a result row with at least :data:`EVENT_COLUMNS`) as the monitors see it.

    Positional, and without re-checking what the column types already made of the values
    (``at`` is aware UTC, ``traffic_bp`` and ``flag_count`` are integers): the controller
    builds one per new event. MonitorEvent still validates every value.
    """
    flags, metrics, error = row.safety_flags, row.metrics, row.error
    return MonitorEvent(
        row.arm,
        row.traffic_bp,
        row.at,
        row.latency_ms,
        None if error is None else bool(error),
        row.quality,
        tuple(json.loads(flags)) if flags and flags != "[]" else (),
        row.flag_count,
        row.cost_usd,
        row.input_tokens,
        row.output_tokens,
        row.model,
        json.loads(metrics) if metrics and metrics != "{}" else {},
    )


def batch_from_rows(rows: Sequence[Sequence[Any]]) -> EventBatch:
    """Event rows ending with the :data:`EVENT_COLUMNS` as one checked batch.

    What the controller folds: MonitorEvent's checks, a column at a time (EventBatch). The
    rows may come straight from the driver: ``at`` as SQLite's text or a zoned datetime.
    """
    names = [c.name for c in EVENT_COLUMNS]
    transposed = list(zip(*rows, strict=True))[-len(names) :] if rows else [()] * len(names)
    columns: dict[str, Sequence[Any]] = dict(zip(names, transposed, strict=True))
    columns["at"] = _aware(columns["at"])
    return EventBatch.from_columns(**columns)


def _aware(times: Sequence[Any]) -> list[datetime]:
    """Stored times as aware UTC datetimes: SQLite's naive UTC text, or the driver's datetimes.

    Parsed with the zone appended (0.2 us) rather than parsed and then given the zone with
    ``replace`` (1.1 us: a tick reads a hundred thousand).
    """
    try:
        return [datetime.fromisoformat(t + "+00:00") if type(t) is str else utc(t) for t in times]
    except ValueError:  # a text that already names its zone
        return [utc(datetime.fromisoformat(t) if isinstance(t, str) else t) for t in times]


def feedback_from_row(row: Mapping[Any, Any]) -> MonitorEvent:
    """A ``feedback`` row joined with its decision's arm and share (see MonitorEvent)."""
    metrics = row["metrics"]
    return MonitorEvent(
        arm=row["arm"],
        traffic_bp=int(row["traffic_bp"]),
        at=utc(row["at"]),
        quality=row["quality"],
        metrics=json.loads(metrics) if metrics and metrics != "{}" else {},
        feedback=True,
    )


@dataclass
class ArmAggregate:
    """Simple per-arm totals for one stage (incident bundles and ``rollout status``)."""

    requests: int = 0
    errors: int = 0
    flagged: int = 0
    latency_sum: float = 0.0
    latency_n: int = 0
    cost_sum: float = 0.0
    cost_n: int = 0
    quality_sum: float = 0.0
    quality_n: int = 0

    def add(self, batch: EventBatch, mine: NDArray[np.bool_]) -> None:
        """Count the events of ``batch`` where ``mine`` holds (feedback adds only its quality)."""
        quality = _present(batch.quality[mine])
        self.quality_sum += float(quality.sum())
        self.quality_n += quality.size
        mine = mine & ~batch.feedback
        self.requests += int(np.count_nonzero(mine))
        self.errors += int(np.count_nonzero(batch.error[mine] == 1.0))
        self.flagged += int(np.count_nonzero(batch.flag_count[mine]))
        latency = _present(batch.latency_ms[mine])
        self.latency_sum += float(latency.sum())
        self.latency_n += latency.size
        cost = _present(batch.cost_usd[mine])
        self.cost_sum += float(cost.sum())
        self.cost_n += cost.size

    def to_dict(self) -> dict[str, Any]:
        """Totals plus the derived rates and means people read."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "flagged": self.flagged,
            "latency_sum": self.latency_sum,
            "latency_n": self.latency_n,
            "cost_sum": self.cost_sum,
            "cost_n": self.cost_n,
            "quality_sum": self.quality_sum,
            "quality_n": self.quality_n,
            "error_rate": self.errors / self.requests if self.requests else None,
            "flag_rate": self.flagged / self.requests if self.requests else None,
            "mean_latency_ms": self.latency_sum / self.latency_n if self.latency_n else None,
            "mean_cost_usd": self.cost_sum / self.cost_n if self.cost_n else None,
            "mean_quality": self.quality_sum / self.quality_n if self.quality_n else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmAggregate:
        """Rebuild from :meth:`to_dict` output (derived fields are recomputed)."""
        return cls(
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            flagged=int(data["flagged"]),
            latency_sum=float(data["latency_sum"]),
            latency_n=int(data["latency_n"]),
            cost_sum=float(data["cost_sum"]),
            cost_n=int(data["cost_n"]),
            quality_sum=float(data["quality_sum"]),
            quality_n=int(data["quality_n"]),
        )


@dataclass
class Ledger:
    """What the controller keeps beside the monitor: per-stage aggregates, alerts, time range."""

    stages: dict[str, dict[str, ArmAggregate]] = field(default_factory=dict)
    alerted: set[str] = field(default_factory=set)
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    #: Routing windows ending at or before this were folded (outcomes_recorded's cursor).
    routed_through: datetime | None = None

    def fold(self, stages: Sequence[str], batch: EventBatch) -> None:
        """Count ``batch``'s events, each in the stage of the same index in ``stages``."""
        if not len(batch):
            return
        at = batch.at
        first, last = min(at), max(at)
        if self.first_event_at is None or first < self.first_event_at:
            self.first_event_at = first
        if self.last_event_at is None or last > self.last_event_at:
            self.last_event_at = last
        names = set(stages)
        in_stage = None if len(names) == 1 else np.asarray(stages, dtype=object)
        for stage in names:
            arms = self.stages.get(stage)
            if arms is None:
                arms = self.stages[stage] = {arm: ArmAggregate() for arm in ARMS}
            mine = None if in_stage is None else in_stage == stage
            for arm, agg in arms.items():
                on_arm = batch.candidate if arm == "candidate" else ~batch.candidate
                agg.add(batch, on_arm if mine is None else on_arm & mine)

    def samples(self, stage: str) -> dict[str, int]:
        """Requests per arm in ``stage``."""
        arms = self.stages.get(stage, {})
        return {arm: arms[arm].requests if arm in arms else 0 for arm in ARMS}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "stages": {
                s: {arm: agg.to_dict() for arm, agg in arms.items()}
                for s, arms in self.stages.items()
            },
            "alerted": sorted(self.alerted),
            "first_event_at": self.first_event_at.isoformat() if self.first_event_at else None,
            "last_event_at": self.last_event_at.isoformat() if self.last_event_at else None,
            "routed_through": self.routed_through.isoformat() if self.routed_through else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ledger:
        """Rebuild from :meth:`to_dict` output."""
        first, last = data.get("first_event_at"), data.get("last_event_at")
        routed = data.get("routed_through")
        return cls(
            stages={
                s: {arm: ArmAggregate.from_dict(agg) for arm, agg in arms.items()}
                for s, arms in data.get("stages", {}).items()
            },
            alerted=set(data.get("alerted", ())),
            first_event_at=datetime.fromisoformat(first) if first else None,
            last_event_at=datetime.fromisoformat(last) if last else None,
            routed_through=datetime.fromisoformat(routed) if routed else None,
        )


def _present(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """The values that are there (a batch's NaN marks an absent one)."""
    return values[~np.isnan(values)]


def routed_windows(
    conn: Connection, rollout_id: str, *, after: datetime | None, until: datetime
) -> list[RoutedWindow]:
    """The rollout's routing windows that ended in (``after``, ``until``], one per SDK process."""
    c = routed_counts.c
    query = select(
        c.routed_stable, c.routed_candidate, c.recorded_stable, c.recorded_candidate
    ).where(c.rollout_id == rollout_id, c.window_end <= until)
    if after is not None:
        query = query.where(c.window_end > after)
    return [RoutedWindow(*(int(x) for x in row)) for row in conn.execute(query)]


def routed_totals(conn: Connection, rollout_id: str) -> dict[str, dict[str, int]]:
    """Per arm, decisions routed and outcomes recorded so far for ``rollout_id``."""
    c = routed_counts.c
    row = conn.execute(
        select(
            func.coalesce(func.sum(c.routed_stable), 0),
            func.coalesce(func.sum(c.routed_candidate), 0),
            func.coalesce(func.sum(c.recorded_stable), 0),
            func.coalesce(func.sum(c.recorded_candidate), 0),
        ).where(c.rollout_id == rollout_id)
    ).one()
    rs, rc, ks, kc = (int(x) for x in row)
    return {
        "stable": {"routed": rs, "recorded": ks},
        "candidate": {"routed": rc, "recorded": kc},
    }
