"""What ``POST /v1/traces`` did since the server started, as counters and Prometheus series.

Every label comes from a small fixed set (a span's outcome, an export's result), never from
the spans themselves.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from policy_canary.errors import (
    CanaryError,
    InputError,
    RateLimitedError,
    StoreError,
    TooLargeError,
)
from policy_canary.telemetry import METRIC_PREFIX

#: What became of a span: part of a recorded request, of none, or of a refused one.
SPAN_OUTCOMES = ("accepted", "unattributed", "rejected")
#: What became of an export (a refused one is retried by the exporter, or not if malformed).
EXPORT_RESULTS = ("accepted", "malformed", "too_large", "buffer_full", "store_unavailable",
                  "refused")  # fmt: skip


def export_result(error: CanaryError) -> str:
    """The bounded label of an export that ``error`` refused."""
    if isinstance(error, TooLargeError):
        return "too_large"
    if isinstance(error, RateLimitedError):
        return "buffer_full"
    if isinstance(error, StoreError):
        return "store_unavailable"
    return "malformed" if isinstance(error, InputError) else "refused"


class OtlpStats:
    """Spans, exports and joined evaluations counted by /v1/traces. Thread-safe."""

    def __init__(self) -> None:
        self.spans: Counter[str] = Counter()
        self.exports: Counter[str] = Counter()
        self.joined = 0
        self._lock = threading.Lock()

    def add(self, *, accepted: int, unattributed: int, rejected: int, joined: int) -> None:
        """Count one accepted export."""
        with self._lock:
            self.spans["accepted"] += accepted
            self.spans["unattributed"] += unattributed
            self.spans["rejected"] += rejected
            self.exports["accepted"] += 1
            self.joined += joined

    def snapshot(self) -> tuple[dict[str, int], dict[str, int], int]:
        """Spans by outcome, exports by result, evaluations joined: one consistent read."""
        with self._lock:
            return dict(self.spans), dict(self.exports), self.joined

    def refused(self, error: CanaryError) -> None:
        """Count one export refused as a whole."""
        with self._lock:
            self.exports[export_result(error)] += 1


class OtlpCollector(Collector):
    """The ``policy_canary_otlp_*`` series of one server."""

    def __init__(self, stats: OtlpStats, *, pending: Callable[[], int],
                 waiting: Callable[[], int]) -> None:  # fmt: skip
        self._stats = stats
        self._pending = pending
        self._waiting = waiting

    def collect(self) -> Iterator[Any]:
        p = METRIC_PREFIX
        spans, exports, joined = self._stats.snapshot()
        by_outcome = CounterMetricFamily(p + "otlp_spans", "Spans received on /v1/traces, by "
                                         "what became of them.", labels=["outcome"])  # fmt: skip
        for outcome in SPAN_OUTCOMES:
            by_outcome.add_metric([outcome], spans.get(outcome, 0))
        by_result = CounterMetricFamily(p + "otlp_exports", "Export requests to /v1/traces, "
                                        "by result.", labels=["result"])  # fmt: skip
        for result in EXPORT_RESULTS:
            by_result.add_metric([result], exports.get(result, 0))
        join = CounterMetricFamily(p + "otlp_evaluations_joined", "Evaluations joined to "
                                   "their request by gen_ai.response.id.")  # fmt: skip
        join.add_metric([], joined)
        pending = GaugeMetricFamily(p + "otlp_pending_spans", "Spans kept until their "
                                    "request's root span arrives.")  # fmt: skip
        pending.add_metric([], self._pending())
        waiting = GaugeMetricFamily(p + "otlp_evaluations_waiting", "Evaluations kept until "
                                    "the response they name is recorded.")  # fmt: skip
        waiting.add_metric([], self._waiting())
        yield from (by_outcome, by_result, join, pending, waiting)


__all__ = ["EXPORT_RESULTS", "SPAN_OUTCOMES", "OtlpCollector", "OtlpStats", "export_result"]
