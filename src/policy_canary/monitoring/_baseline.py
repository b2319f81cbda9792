"""The baseline: stable's recent behaviour per metric, frozen when a rollout starts.

Quantile lines are frozen from it; rates, means and variances size the tests. Users import
:class:`Baseline` and :class:`MetricBaseline` from :mod:`policy_canary.monitoring`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policy_canary.guardrails import ModelPrice
from policy_canary.monitoring._observations import MonitorEvent, observe

_QUANTILES = ("p50", "p90", "p95", "p99")
#: Stable observations expected beyond a quantile line before it is frozen from them.
_TAIL_OBSERVATIONS = 20


def quantile_sample_size(quantile: str) -> int:
    """Stable observations a ``pNN`` line needs: about 20 of them beyond it (p95: 400)."""
    share_beyond = 1.0 - int(quantile[1:]) / 100
    return math.ceil(_TAIL_OBSERVATIONS / share_beyond - 1e-9)


def quantile_line(values: Sequence[float], quantile: str) -> float:
    """The ``pNN`` of ``values`` (numpy's default interpolation), as a frozen line."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), int(quantile[1:]) / 100))


@dataclass(frozen=True, slots=True)
class MetricBaseline:
    """Stable's recent behaviour on one metric, frozen when the rollout starts.

    ``mean``/``variance`` are on the raw scale, ``log_mean``/``log_variance`` on ln(1 + x)
    (the scale latency is compared on); ``rate`` is set for boolean metrics; ``quantiles``
    (p50/p90/p95/p99) are on the raw scale.
    """

    count: int
    mean: float | None = None
    variance: float | None = None
    log_mean: float | None = None
    log_variance: float | None = None
    rate: float | None = None
    quantiles: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "count": self.count,
            "mean": self.mean,
            "variance": self.variance,
            "log_mean": self.log_mean,
            "log_variance": self.log_variance,
            "rate": self.rate,
            "quantiles": dict(self.quantiles),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricBaseline:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            count=int(data["count"]),
            mean=data.get("mean"),
            variance=data.get("variance"),
            log_mean=data.get("log_mean"),
            log_variance=data.get("log_variance"),
            rate=data.get("rate"),
            quantiles={k: float(v) for k, v in data.get("quantiles", {}).items()},
        )


@dataclass(frozen=True, slots=True)
class Baseline:
    """A snapshot of stable's recent traffic: quantiles to freeze, rates and means for sizing."""

    metrics: Mapping[str, MetricBaseline] = field(default_factory=dict)

    @classmethod
    def from_events(
        cls, events: Iterable[MonitorEvent], *, prices: Mapping[str, ModelPrice] | None = None
    ) -> Baseline:
        """Summarise the stable version's recent events, whichever arm served them.

        The caller picks the events by version: right after a promotion the new stable's
        history is the traffic it served as the candidate, and the same spec behaves the same
        on either arm (the sticky splitter hands each arm a random share of units).
        """
        prices = prices or {}
        values: dict[str, list[float | bool]] = {}
        for event in events:
            names = ["error", "safety_flags", "latency_ms", "cost_usd", "quality"]
            names += [f"metrics.{k}" for k in event.metrics]
            for name in names:
                value = observe(name, event, prices, ())
                if value is not None:
                    values.setdefault(name, []).append(value)
        summary = {name: _summarise(name, vals) for name, vals in values.items()}
        return cls(metrics=summary)

    def get(self, metric: str) -> MetricBaseline | None:
        """Return the snapshot of one metric, if stable reported it."""
        return self.metrics.get(metric)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {name: m.to_dict() for name, m in sorted(self.metrics.items())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        """Rebuild from :meth:`to_dict` output."""
        return cls(metrics={k: MetricBaseline.from_dict(v) for k, v in data.items()})


def _summarise(name: str, values: Sequence[float | bool]) -> MetricBaseline:
    if all(isinstance(v, bool) for v in values):
        rate = sum(bool(v) for v in values) / len(values)
        return MetricBaseline(count=len(values), mean=rate, variance=rate * (1 - rate), rate=rate)
    raw = np.asarray([float(v) for v in values if not isinstance(v, bool)], dtype=np.float64)
    logs = np.log1p(np.maximum(raw, 0.0))
    many = raw.size > 1
    return MetricBaseline(
        count=int(raw.size),
        mean=float(raw.mean()),
        variance=float(raw.var(ddof=1)) if many else None,
        log_mean=float(logs.mean()),
        log_variance=float(logs.var(ddof=1)) if many else None,
        quantiles={q: quantile_line(raw.tolist(), q) for q in _QUANTILES},
    )
