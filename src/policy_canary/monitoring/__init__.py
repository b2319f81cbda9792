"""Monitors: events folded into anytime-valid tests, and the verdicts they give."""

from __future__ import annotations

from policy_canary.monitoring._baseline import Baseline, MetricBaseline
from policy_canary.monitoring._batch import EventBatch
from policy_canary.monitoring._coverage import MetricCoverage, metrics_coverage, uncovered
from policy_canary.monitoring._missing import GRACE_SECONDS, OUTCOMES_RECORDED, RoutedWindow
from policy_canary.monitoring._monitor import RolloutMonitor
from policy_canary.monitoring._observations import ARMS, MonitorEvent
from policy_canary.monitoring._preflight import PreflightRow, StagePlan, preflight
from policy_canary.monitoring._verdict import (
    Verdict,
    VerdictStatus,
)

__all__ = [
    "ARMS",
    "GRACE_SECONDS",
    "OUTCOMES_RECORDED",
    "Baseline",
    "EventBatch",
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
