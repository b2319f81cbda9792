"""The vocabulary of guardrails: statistics, kinds, directions, built-in metrics, defaults.

The defaults are the fields a stage may override and the default ``negligible`` rate. Users
import these names from :mod:`policy_canary.guardrails`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Statistic(StrEnum):
    """How a metric is summarised: a rate, a mean, or a quantile judged through exceedances."""

    RATE = "rate"
    MEAN = "mean"
    P50 = "p50"
    P90 = "p90"
    P95 = "p95"
    P99 = "p99"

    @property
    def quantile(self) -> float | None:
        """The quantile level (0.95 for p95), or ``None`` for rate and mean."""
        levels = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
        return levels.get(self.value)

    def is_quantile(self) -> bool:
        """True for p50/p90/p95/p99."""
        return self.quantile is not None


class GuardrailAction(StrEnum):
    """What the controller does when a guardrail breaches."""

    ROLLBACK = "rollback"
    PAUSE = "pause"
    ALERT = "alert"


class GuardrailKind(StrEnum):
    """Which question a guardrail asks."""

    RELATIVE = "relative"  # candidate against the concurrent stable baseline
    SLO = "slo"  # candidate against a fixed line
    TRIPWIRE = "tripwire"  # a single event, no statistics

    def is_statistical(self) -> bool:
        """True when the guardrail needs a sequential test (and a share of the alpha budget)."""
        return self is not GuardrailKind.TRIPWIRE


class Direction(StrEnum):
    """The direction in which a metric gets worse."""

    UP = "up"
    DOWN = "down"


#: The direction each threshold field watches: ``max_increase: 10%`` guards against a rise.
FIELD_DIRECTION: Mapping[str, Direction] = {
    "max_increase": Direction.UP,
    "max": Direction.UP,
    "max_decrease": Direction.DOWN,
    "min": Direction.DOWN,
}
#: The field that watches the other direction, suggested when a plan picks the wrong one.
OPPOSITE_FIELD: Mapping[str, str] = {
    "max_increase": "max_decrease",
    "max_decrease": "max_increase",
    "max": "min",
    "min": "max",
}


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """What the monitors know about a built-in metric."""

    boolean: bool
    default_statistic: Statistic
    worse: Direction
    lower: float
    upper: float
    log_scale: bool = False


#: Built-in metrics; custom ones are written ``metrics.NAME``.
BUILTIN_METRICS: Mapping[str, MetricInfo] = {
    "error": MetricInfo(True, Statistic.RATE, Direction.UP, 0.0, 1.0),
    "safety_flags": MetricInfo(True, Statistic.RATE, Direction.UP, 0.0, 1.0),
    "latency_ms": MetricInfo(False, Statistic.MEAN, Direction.UP, 0.0, math.inf, log_scale=True),
    "cost_usd": MetricInfo(False, Statistic.MEAN, Direction.UP, 0.0, math.inf),
    "quality": MetricInfo(False, Statistic.MEAN, Direction.DOWN, 0.0, 1.0),
}

#: Fields a stage may override; the rest size the test and stay fixed for the rollout.
OVERRIDABLE_FIELDS = frozenset(
    {
        "max_increase",
        "max_decrease",
        "max_delta",
        "max",
        "min",
        "min_samples",
        "action",
        "negligible",
    }
)

#: Largest ``min_samples`` (per arm) a stage or guardrail may ask for. A stage cannot pass
#: before it has them, so a larger number is a typo that would hold the stage for ever.
MAX_MIN_SAMPLES = 10_000_000

#: Default ``negligible`` of a relative ``max_increase`` guardrail on a rate (or a quantile's
#: exceedance rate): a candidate whose own rate is shown to be at most 1 in 1,000 requests is
#: non-inferior whatever stable's rate (see docs/statistics.md, section 3).
DEFAULT_NEGLIGIBLE = 0.001
