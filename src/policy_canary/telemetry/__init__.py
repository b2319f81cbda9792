"""Telemetry the operators already run: Prometheus metrics of releases and of the pipeline.

:class:`ReleaseCollector` reads release state from the store at scrape time (rollouts,
guardrail verdicts, transitions, the alert outbox) and, when given a canary, its event
pipeline's counters and routing freshness; :class:`ControllerMetrics` adds a controller's
leadership and tick durations. Needs the ``prometheus`` extra (``prometheus-client``).
See docs/integrations.md for every series.
"""

from __future__ import annotations

from policy_canary.telemetry._controller import (
    ControllerMetrics,
    MeteredController,
    serve_controller_metrics,
)
from policy_canary.telemetry._prometheus import METRIC_PREFIX, ReleaseCollector, metrics_registry

__all__ = [
    "METRIC_PREFIX",
    "ControllerMetrics",
    "MeteredController",
    "ReleaseCollector",
    "metrics_registry",
    "serve_controller_metrics",
]
