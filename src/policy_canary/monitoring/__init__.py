"""Monitors: events folded into anytime-valid tests, and the verdicts they give."""

from __future__ import annotations

from policy_canary.monitoring._coverage import MetricCoverage, metrics_coverage, uncovered
from policy_canary.monitoring._monitor import (
    ARMS,
    GRACE_SECONDS,
    OUTCOMES_RECORDED,
    Baseline,
    MetricBaseline,
    MonitorEvent,
    PreflightRow,
    RolloutMonitor,
    RoutedWindow,
    StagePlan,
    preflight,
)
from policy_canary.monitoring._verdict import (
    Verdict,
    VerdictStatus,
)

__all__ = [
    "ARMS",
    "GRACE_SECONDS",
    "OUTCOMES_RECORDED",
    "Baseline",
    "MetricBaseline",
    "MetricCoverage",
    "MonitorEvent",
    "PreflightRow",
    "RolloutMonitor",
    "RoutedWindow",
    "StagePlan",
    "Verdict",
    "VerdictStatus",
    "metrics_coverage",
    "preflight",
    "uncovered",
]
