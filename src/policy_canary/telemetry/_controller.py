"""A controller's own metrics: does it lead, how long do its ticks take."""

from __future__ import annotations

from collections.abc import Iterator
from time import perf_counter
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from policy_canary.controller import Controller, TickReport
from policy_canary.errors import InputError
from policy_canary.store import Store
from policy_canary.telemetry._prometheus import METRIC_PREFIX, ReleaseCollector, metrics_registry

#: Tick durations from a quick SQLite tick to a slow PostgreSQL one with many rollouts.
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ControllerMetrics(Collector):
    """Leadership, ticks and tick durations of one controller process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = False
        self.ticks = 0
        self.failed = 0
        self.duration = Histogram(
            METRIC_PREFIX + "controller_tick_duration_seconds",
            "Time one controller tick took (leading or not).",
            buckets=TICK_BUCKETS,
            registry=registry,
        )
        registry.register(self)

    def observe(self, report: TickReport | None, seconds: float) -> None:
        """Count one tick (``None``: it raised) that took ``seconds``."""
        self.duration.observe(seconds)
        if report is None:
            self.failed += 1
            return
        self.ticks += 1
        self.leader = report.acted

    def collect(self) -> Iterator[Any]:
        leader = GaugeMetricFamily(METRIC_PREFIX + "controller_leader",
                                   "1 while this controller holds the lock and acts.")  # fmt: skip
        leader.add_metric([], 1.0 if self.leader else 0.0)
        ticks = CounterMetricFamily(METRIC_PREFIX + "controller_ticks", "Controller ticks, by "
                                    "outcome.", labels=["outcome"])  # fmt: skip
        ticks.add_metric(["ok"], self.ticks)
        ticks.add_metric(["failed"], self.failed)
        yield from (leader, ticks)


class MeteredController(Controller):
    """A :class:`Controller` whose ticks feed :class:`ControllerMetrics`."""

    metrics: ControllerMetrics | None = None
    #: The /metrics HTTP server, stopped by :meth:`close`.
    exporter: WSGIServer | None = None

    def tick(self) -> TickReport:
        start = perf_counter()
        try:
            report = super().tick()
        except BaseException:
            if self.metrics is not None:
                self.metrics.observe(None, perf_counter() - start)
            raise
        if self.metrics is not None:
            self.metrics.observe(report, perf_counter() - start)
        return report

    def close(self) -> None:
        """Release the lock and stop serving metrics."""
        try:
            super().close()
        finally:
            if self.exporter is not None:
                self.exporter.shutdown()
                self.exporter.server_close()
                self.exporter = None


def serve_controller_metrics(
    store: Store, *, holder: str | None, port: int, host: str = "0.0.0.0", processes: int = 1
) -> MeteredController:
    """A metered controller whose release and controller metrics are served on ``port``.

    The exporter runs in a daemon thread until the controller is closed.
    """
    registry = metrics_registry(ReleaseCollector(store))
    worker = MeteredController(store, holder=holder, processes=processes)
    worker.metrics = ControllerMetrics(registry)
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise InputError(
            f"--metrics-port {port}: cannot listen ({exc.strerror}); choose a free port"
        ) from None
    worker.exporter = server
    return worker
