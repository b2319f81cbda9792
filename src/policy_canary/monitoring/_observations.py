"""What the monitors observe of a request: :class:`MonitorEvent`, and one metric read from it.

Shared by the baseline snapshot (``_baseline.py``) and
:class:`policy_canary.monitoring._monitor.RolloutMonitor`; users import :class:`MonitorEvent` from
:mod:`policy_canary.monitoring`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from policy_canary.errors import InvalidMetricError
from policy_canary.guardrails import ModelPrice, price_of
from policy_canary.stats import BPS

#: The two arms of a rollout.
ARMS = ("stable", "candidate")


@dataclass(frozen=True, slots=True)
class MonitorEvent:
    """What happened on one request, as the monitors see it.

    ``traffic_bp`` is the candidate's share (basis points) when the request was *routed*.
    Late feedback (an LLM-judge score, a thumbs-up) is a separate event with ``feedback=True``
    carrying only ``quality`` and/or ``metrics``, with the original decision's arm and share:
    it adds observations of those metrics but never counts as a second request, so request
    metrics (error, safety flags, latency, cost) are read from non-feedback events only.

    ``flag_count`` is how many safety flags the request raised: ``len(safety_flags)`` when
    they were named, or the bare count ``record(safety_flags=3)`` gave. A count of n > 0 makes
    the request flagged for every guardrail on ``safety_flags`` that does not name ``flags``;
    a tripwire (or a rate restricted to ``flags``) needs the names, so a count alone is not an
    observation for it.
    """

    arm: str
    traffic_bp: int
    at: datetime
    latency_ms: float | None = None
    error: bool | None = None
    quality: float | None = None
    safety_flags: tuple[str, ...] = ()
    flag_count: int = 0
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None
    metrics: Mapping[str, float | bool] = field(default_factory=dict)
    feedback: bool = False

    def __post_init__(self) -> None:
        # Field by field, without getattr loops: the controller builds one per event row.
        if self.arm not in ARMS:
            raise InvalidMetricError(f"arm must be 'stable' or 'candidate'; got {self.arm!r}")
        bp = self.traffic_bp
        if isinstance(bp, bool) or not 0 <= bp <= BPS:
            raise InvalidMetricError(f"traffic_bp must lie in 0..{BPS}; got {bp!r}")
        latency = self.latency_ms
        if latency is not None and (not math.isfinite(latency) or latency < 0):
            raise InvalidMetricError(f"latency_ms must be a finite number >= 0; got {latency!r}")
        cost = self.cost_usd
        if cost is not None and (not math.isfinite(cost) or cost < 0):
            raise InvalidMetricError(f"cost_usd must be a finite number >= 0; got {cost!r}")
        quality = self.quality
        if quality is not None and not (math.isfinite(quality) and 0.0 <= quality <= 1.0):
            raise InvalidMetricError(f"quality must lie in [0, 1]; got {quality!r}")
        count = self.flag_count
        if isinstance(count, bool) or count < 0:
            raise InvalidMetricError(f"flag_count must be an int >= 0; got {count!r}")
        if self.safety_flags and count < len(self.safety_flags):
            # names given without a count: count them
            object.__setattr__(self, "flag_count", len(self.safety_flags))
        tokens = self.input_tokens
        if tokens is not None and tokens < 0:
            raise InvalidMetricError(f"input_tokens must be >= 0; got {tokens!r}")
        tokens = self.output_tokens
        if tokens is not None and tokens < 0:
            raise InvalidMetricError(f"output_tokens must be >= 0; got {tokens!r}")
        if self.metrics:
            check_metrics(self.metrics)

    @property
    def flagged(self) -> bool:
        """True when the request raised at least one safety flag (named or counted)."""
        return self.flag_count > 0

    @property
    def is_candidate(self) -> bool:
        """True when the candidate served this request."""
        return self.arm == "candidate"


def check_metrics(metrics: Mapping[str, object]) -> None:
    """Every custom metric a boolean or a finite number (MonitorEvent's rule, and a batch's)."""
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if not isinstance(value, int | float):
            raise InvalidMetricError(f"metrics.{key} must be a number; got {value!r}")
        if not math.isfinite(value):
            raise InvalidMetricError(f"metrics.{key} must be finite; got {value!r}")


def observe(
    metric: str, event: MonitorEvent, prices: Mapping[str, ModelPrice], flags: Sequence[str]
) -> float | bool | None:
    """Read one metric from an event, or ``None`` when the event does not carry it."""
    if metric == "quality":
        return event.quality
    if metric.startswith("metrics."):
        return event.metrics.get(metric[len("metrics.") :])
    if event.feedback:
        return None
    if metric == "error":
        return event.error
    if metric == "safety_flags":
        if flags:
            if event.safety_flags or not event.flag_count:
                return any(f in flags for f in event.safety_flags)
            return None  # counted but not named: whether one of ``flags`` fired is unknown
        return event.flag_count > 0
    if metric == "latency_ms":
        return event.latency_ms
    if metric == "cost_usd":
        if event.cost_usd is not None:
            return event.cost_usd
        return price_of(prices, event.model, event.input_tokens, event.output_tokens)
    return None
