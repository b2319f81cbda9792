"""The Prometheus collector: release state read from the store at scrape time.

Shapes follow Argo Rollouts and Flagger: an ``_info`` series per rollout, a gauge per
candidate share, one 0/1 series per verdict status, ``_total`` counters in base units. No
label is unbounded: labels are policy, rollout id (one per policy: its latest rollout),
guardrail, metric, state, stage, action and a small reason set, never unit keys or
decision ids.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from policy_canary.controller._rollouts import Rollouts
from policy_canary.monitoring import VerdictStatus
from policy_canary.resilience import Outage
from policy_canary.telemetry._release import ROLLOUT_STATES, ReleaseSnapshot, read_snapshot

if TYPE_CHECKING:
    from policy_canary.serving._canary import Canary
    from policy_canary.store import Store

METRIC_PREFIX = "policy_canary_"
_P = METRIC_PREFIX
_log = logging.getLogger("policy_canary.telemetry")
_STATUSES = tuple(s.value for s in VerdictStatus)
_DELIVERY_STATES = ("pending", "sending", "failing")


class ReleaseCollector(Collector):
    """Yields release metrics from ``store`` (and ``canary``'s pipeline) on every scrape.

    A scrape never raises for store trouble: the release series are left out and
    ``policy_canary_store_up`` is 0, so the pipeline series still reach Prometheus.
    """

    def __init__(self, store: Store, *, canary: Canary | None = None) -> None:
        self._store = store
        self._canary = canary
        self._rollouts = Rollouts(store, clock=canary.rollouts.clock if canary else None)
        self._outage = Outage(_log, "metrics scrape could not read the store")
        self._lock = threading.Lock()  # concurrent scrapes share the outage log

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(_P + "store_up", "1 when the last scrape could read the store.")
        try:
            snap = read_snapshot(self._store, self._rollouts)
        except Exception as error:  # the store is down: report that, and the rest
            with self._lock:
                self._outage.failed(error)
            up.add_metric([], 0)
        else:
            with self._lock:
                self._outage.recovered("metrics scrape reads the store again")
            up.add_metric([], 1)
            yield from _release_families(snap)
        yield up
        if self._canary is not None:
            yield from _pipeline_families(self._canary)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(_P + name, doc, labels=labels or [])


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(_P + name, doc, labels=labels or [])


def _release_families(snap: ReleaseSnapshot) -> Iterator[Any]:
    info = InfoMetricFamily(
        _P + "rollout", "The latest rollout of each policy.",
        labels=["policy", "rollout", "state", "stage"],
    )  # fmt: skip
    phase = _gauge("rollout_phase", "1 for the state of each policy's latest rollout.",
                   ["policy", "state"])  # fmt: skip
    share = _gauge("candidate_traffic_ratio", "The candidate's share of traffic (0..1).",
                   ["policy"])  # fmt: skip
    glabels = ["policy", "guardrail", "metric"]
    verdict = _gauge("guardrail_verdict", "1 for the guardrail's current verdict status.",
                     [*glabels, "status"])  # fmt: skip
    evidence = _gauge("guardrail_evidence", "The anytime-valid e-value against the candidate.",
                      glabels)  # fmt: skip
    threshold = _gauge("guardrail_evidence_threshold", "The e-value at which the guardrail "
                       "breaches (1/alpha).", glabels)  # fmt: skip
    for line in snap.lines:
        info.add_metric([line.policy, line.rollout_id, line.state, line.stage], {})
        for state in ROLLOUT_STATES:
            phase.add_metric([line.policy, state], 1.0 if state == line.state else 0.0)
        share.add_metric([line.policy], line.traffic_bp / 10_000)
        for v in line.verdicts:
            labels = [line.policy, v.guardrail, v.metric]
            for status in _STATUSES:
                verdict.add_metric([*labels, status], 1.0 if v.status.value == status else 0.0)
            e_value, alpha = v.evidence.get("e_value"), v.evidence.get("alpha")
            if isinstance(e_value, int | float) and math.isfinite(e_value):
                evidence.add_metric(labels, float(e_value))
            if isinstance(alpha, int | float) and alpha > 0:
                threshold.add_metric(labels, 1.0 / float(alpha))
    transitions = _counter("rollout_transitions", "Rollout state or stage changes.",
                           ["policy", "action", "trigger"])  # fmt: skip
    for (policy, action, trigger), count in sorted(snap.transitions.items()):
        transitions.add_metric([policy, action, trigger], count)
    rollbacks = _counter("rollbacks", "Rollbacks, by the guardrail that breached or 'manual'.",
                         ["policy", "reason"])  # fmt: skip
    for (policy, reason), count in sorted(snap.rollbacks.items()):
        rollbacks.add_metric([policy, reason], count)
    outbox = _gauge("alert_deliveries", "Alert deliveries not yet delivered, by status.",
                    ["status"])  # fmt: skip
    for status in _DELIVERY_STATES:
        outbox.add_metric([status], snap.deliveries.get(status, 0))
    yield from (info, phase, share, verdict, evidence, threshold, transitions, rollbacks, outbox)


def _pipeline_families(canary: Canary) -> Iterator[Any]:
    stats = canary.stats()
    kind = ["kind"]
    written = CounterMetricFamily(_P + "events_written", "Events and feedback stored.", labels=kind)
    written.add_metric(["event"], stats.written)
    written.add_metric(["feedback"], stats.feedback_written)
    dropped = CounterMetricFamily(_P + "events_dropped", "Rows accepted but never to be "
                                  "stored.", labels=["kind", "reason"])  # fmt: skip
    for k, full, closed in (("event", stats.dropped_full, stats.dropped_closed),
                            ("feedback", stats.feedback_dropped_full,
                             stats.feedback_dropped_closed)):  # fmt: skip
        dropped.add_metric([k, "buffer_full"], full)
        dropped.add_metric([k, "closed"], closed)
    rejected = CounterMetricFamily(_P + "events_rejected", "Rows the store refused.", labels=kind)
    rejected.add_metric(["event"], stats.rejected)
    rejected.add_metric(["feedback"], stats.feedback_rejected)
    depth = GaugeMetricFamily(_P + "event_buffer_depth", "Rows waiting for the store.",
                              labels=kind)  # fmt: skip
    depth.add_metric(["event"], stats.buffered)
    depth.add_metric(["feedback"], stats.feedback_buffered)
    capacity = GaugeMetricFamily(_P + "event_buffer_capacity", "Rows the buffer holds.")
    capacity.add_metric([], stats.capacity)
    errors = CounterMetricFamily(_P + "flush_errors", "Batches the store could not take.")
    errors.add_metric([], stats.flush_errors)
    age = GaugeMetricFamily(_P + "routing_age_seconds", "Time since the routing table was "
                            "last refreshed.", labels=["policy"])  # fmt: skip
    stale = GaugeMetricFamily(_P + "routing_stale", "1 when the routing table is stale.",
                              labels=["policy"])  # fmt: skip
    for status in canary.gate_statuses():
        age.add_metric([status.policy], status.age.total_seconds())
        stale.add_metric([status.policy], 1.0 if status.stale else 0.0)
    yield from (written, dropped, rejected, depth, capacity, errors, age, stale)


def metrics_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding ``collectors``."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry
