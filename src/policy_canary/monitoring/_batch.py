"""Events column by column: :class:`EventBatch`, what the monitors and the ledger fold.

A controller tick folds about a hundred thousand events over a thousand rollouts. One
:class:`MonitorEvent` object per event (built, validated, then read field by field once per
guardrail) was half of such a tick. A batch holds the same fields as columns: numbers as float
arrays with NaN where a value is absent, validated a column at a time with MonitorEvent's
rules and messages, so a metric's observations are one array and its checks one comparison.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from policy_canary.errors import InvalidMetricError
from policy_canary.guardrails import ModelPrice, price_of
from policy_canary.monitoring._observations import ARMS, MonitorEvent, check_metrics
from policy_canary.stats import BPS

Floats = NDArray[np.float64]
_NO_FLAGS: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class EventBatch:
    """Events in arrival order, one column per :class:`MonitorEvent` field.

    ``latency_ms``, ``error`` (0/1), ``quality`` and ``cost_usd`` are float arrays with NaN
    where the event carries no value; ``flag_count`` already counts named flags. Build one
    with :meth:`of` (from MonitorEvents) or :meth:`from_columns` (from stored rows, validated);
    iterating a batch gives its MonitorEvents, for monitors that read events one by one.
    """

    candidate: NDArray[np.bool_]
    traffic_bp: NDArray[np.int64]
    at: Sequence[datetime]
    latency_ms: Floats
    error: Floats
    quality: Floats
    safety_flags: Sequence[tuple[str, ...]]
    flag_count: NDArray[np.int64]
    cost_usd: Floats
    input_tokens: Sequence[int | None]
    output_tokens: Sequence[int | None]
    model: Sequence[str | None]
    metrics: Sequence[Mapping[str, float | bool]]
    feedback: NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.at)

    def __iter__(self) -> Iterator[MonitorEvent]:
        for i in range(len(self.at)):
            yield self.event(i)

    def event(self, i: int) -> MonitorEvent:
        """The ``i``-th event as a MonitorEvent."""
        return MonitorEvent(
            "candidate" if self.candidate[i] else "stable",
            int(self.traffic_bp[i]),
            self.at[i],
            _item(self.latency_ms[i]),
            None if np.isnan(self.error[i]) else bool(self.error[i]),
            _item(self.quality[i]),
            self.safety_flags[i],
            int(self.flag_count[i]),
            _item(self.cost_usd[i]),
            self.input_tokens[i],
            self.output_tokens[i],
            self.model[i],
            self.metrics[i],
            bool(self.feedback[i]),
        )

    @classmethod
    def of(cls, events: Sequence[MonitorEvent]) -> EventBatch:
        """The batch of already validated events."""
        return cls(
            candidate=np.fromiter((e.arm == "candidate" for e in events), bool, len(events)),
            traffic_bp=np.fromiter((e.traffic_bp for e in events), np.int64, len(events)),
            at=[e.at for e in events],
            latency_ms=_floats([e.latency_ms for e in events]),
            error=_floats([None if e.error is None else float(e.error) for e in events]),
            quality=_floats([e.quality for e in events]),
            safety_flags=[e.safety_flags for e in events],
            flag_count=np.fromiter((e.flag_count for e in events), np.int64, len(events)),
            cost_usd=_floats([e.cost_usd for e in events]),
            input_tokens=[e.input_tokens for e in events],
            output_tokens=[e.output_tokens for e in events],
            model=[e.model for e in events],
            metrics=[e.metrics for e in events],
            feedback=np.fromiter((e.feedback for e in events), bool, len(events)),
        )

    @classmethod
    def from_columns(
        cls,
        *,
        arm: Sequence[Any],
        traffic_bp: Sequence[Any],
        at: Sequence[datetime],
        latency_ms: Sequence[Any],
        error: Sequence[Any],
        quality: Sequence[Any],
        safety_flags: Sequence[str | None],
        flag_count: Sequence[Any],
        cost_usd: Sequence[Any],
        input_tokens: Sequence[Any],
        output_tokens: Sequence[Any],
        model: Sequence[Any],
        metrics: Sequence[str | None],
    ) -> EventBatch:
        """Stored event rows' columns (``safety_flags`` and ``metrics`` as JSON text), checked.

        Every value is checked as MonitorEvent checks it, with its message for the first
        value that fails; the flags and metrics are parsed only where a row has some.
        """
        arms = list(arm)
        if not set(arms) <= set(ARMS):
            bad = next(a for a in arms if a not in ARMS)
            raise InvalidMetricError(f"arm must be 'stable' or 'candidate'; got {bad!r}")
        bp = _ints("traffic_bp", traffic_bp)
        if bp.size and (bp.min() < 0 or bp.max() > BPS):
            bad_bp = int(bp[(bp < 0) | (bp > BPS)][0])
            raise InvalidMetricError(f"traffic_bp must lie in 0..{BPS}; got {bad_bp!r}")
        latency = _checked("latency_ms", latency_ms, "must be a finite number >= 0", 0.0, None)
        cost = _checked("cost_usd", cost_usd, "must be a finite number >= 0", 0.0, None)
        score = _checked("quality", quality, "must lie in [0, 1]", 0.0, 1.0)
        errors = _floats(error)
        errors[~np.isnan(errors) & (errors != 0.0)] = 1.0
        counts = _ints("flag_count", flag_count)
        if counts.size and counts.min() < 0:
            raise InvalidMetricError(f"flag_count must be an int >= 0; got {counts.min()!r}")
        names = [_NO_FLAGS if not f or f == "[]" else _names(f) for f in safety_flags]
        for i, named in enumerate(names):
            if named and counts[i] < len(named):  # names given without a count: count them
                counts[i] = len(named)
        for field, tokens in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
            negative = next((t for t in tokens if t is not None and t < 0), None)
            if negative is not None:
                raise InvalidMetricError(f"{field} must be >= 0; got {negative!r}")
        parsed: list[Mapping[str, float | bool]] = [
            {} if not m or m == "{}" else _metrics(_parsed("metrics", m)) for m in metrics
        ]
        return cls(
            candidate=np.asarray([a == "candidate" for a in arms], dtype=bool),
            traffic_bp=bp,
            at=at,
            latency_ms=latency,
            error=errors,
            quality=score,
            safety_flags=names,
            flag_count=counts,
            cost_usd=cost,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=model,
            metrics=parsed,
            feedback=np.zeros(len(arms), dtype=bool),
        )

    # -- what a guardrail observes ------------------------------------------------------

    def requests(self) -> int:
        """How many events are requests (not late feedback)."""
        return int(len(self.at) - np.count_nonzero(self.feedback))

    def numbers(
        self, metric: str, prices: Mapping[str, ModelPrice], flags: Sequence[str] = ()
    ) -> Floats | None:
        """A built-in numeric or boolean metric of every event, NaN where it is not observed.

        None for a metric read another way (custom ``metrics.*``, or safety flags restricted
        to ``flags``): :meth:`values` reads those event by event.
        """
        if metric == "quality":
            return self.quality
        if metric == "error":
            values = self.error
        elif metric == "latency_ms":
            values = self.latency_ms
        elif metric == "safety_flags" and not flags:
            values = (self.flag_count > 0).astype(np.float64)
        elif metric == "cost_usd":
            values = self._costs(prices)
        else:
            return None
        if self.feedback.any():  # late feedback carries no request metric
            values = np.where(self.feedback, np.nan, values)
        return values

    def values(self, metric: str, flags: Sequence[str]) -> list[Any]:
        """A metric :meth:`numbers` does not read, per event (None where not observed)."""
        if metric.startswith("metrics."):
            key = metric[len("metrics.") :]
            return [m.get(key) for m in self.metrics]
        if metric != "safety_flags":
            return [None] * len(self.at)
        return [
            None
            if fb or (count and not names)  # counted but not named: which fired is unknown
            else any(f in flags for f in names)
            for fb, count, names in zip(
                self.feedback.tolist(), self.flag_count.tolist(), self.safety_flags, strict=True
            )
        ]

    def tripped(self, flags: Sequence[str]) -> tuple[int, list[int], list[tuple[str, ...]]]:
        """What a tripwire on ``flags`` reads: how many events it observes (feedback, and
        flags counted but not named, say nothing of which fired), and the index and matching
        names of each event that raised one of ``flags``."""
        counted = self.flag_count > 0
        named = np.asarray([bool(names) for names in self.safety_flags], dtype=bool)
        observed = int(np.count_nonzero(~self.feedback & (named | ~counted)))
        picks, tripped = [], []
        for i in np.flatnonzero(named & ~self.feedback).tolist():
            if hit := tuple(f for f in self.safety_flags[i] if f in flags):
                picks.append(i)
                tripped.append(hit)
        return observed, picks, tripped

    def _costs(self, prices: Mapping[str, ModelPrice]) -> Floats:
        """``cost_usd``, or the price of the event's tokens where it was not recorded."""
        costs = self.cost_usd
        missing = np.flatnonzero(np.isnan(costs))
        if missing.size == 0 or not prices:
            return costs
        costs = costs.copy()
        for i in missing.tolist():
            price = price_of(prices, self.model[i], self.input_tokens[i], self.output_tokens[i])
            if price is not None:
                costs[i] = price
        return costs


def _item(value: np.float64) -> float | None:
    return None if np.isnan(value) else float(value)


def _floats(values: Sequence[Any]) -> Floats:
    """Floats with NaN for None (the caller has ruled out stored NaNs where they matter)."""
    return np.array(values, dtype=np.float64) if len(values) else np.zeros(0, np.float64)


def _ints(field: str, values: Sequence[Any]) -> NDArray[np.int64]:
    try:
        return np.array(values, dtype=np.int64) if len(values) else np.zeros(0, np.int64)
    except (TypeError, ValueError, OverflowError):
        bad = next((v for v in values if not isinstance(v, int) or isinstance(v, bool)), None)
        raise InvalidMetricError(f"{field} must be an integer; got {bad!r}") from None


def _checked(
    field: str, values: Sequence[Any], rule: str, low: float, high: float | None
) -> Floats:
    """``values`` as floats (NaN for None); the first that is not finite or out of range fails."""
    try:
        floats = _floats(values)
    except (TypeError, ValueError):
        bad = next(v for v in values if v is not None and not isinstance(v, int | float))
        raise InvalidMetricError(f"{field} {rule}; got {bad!r}") from None
    absent = np.isnan(floats)
    wrong = np.isinf(floats) | (floats < low)
    if high is not None:
        wrong |= floats > high
    if wrong.any() or np.count_nonzero(absent) != _count_none(values):
        # A stored NaN reads as NaN, not None: it fails like any value out of range.
        top = math.inf if high is None else high
        for value in values:
            if value is not None and not (math.isfinite(value) and low <= value <= top):
                raise InvalidMetricError(f"{field} {rule}; got {value!r}")
    return floats


def _count_none(values: Sequence[Any]) -> int:
    count = getattr(values, "count", None)
    return int(count(None)) if count is not None else sum(v is None for v in values)


def _parsed(field: str, text: str) -> Any:
    """A stored JSON column's value; text that is not JSON names the column and the text."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise InvalidMetricError(f"{field} of a stored event is not JSON: {text[:80]!r}") from None


def _names(text: str) -> tuple[str, ...]:
    """A stored ``safety_flags`` column: a JSON list of flag names."""
    data = _parsed("safety_flags", text)
    if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
        raise InvalidMetricError(f"safety_flags must be a list of flag names; got {data!r}")
    return tuple(data)


def _metrics(data: Any) -> dict[str, float | bool]:
    """A stored ``metrics`` object, every value finite (MonitorEvent's rule)."""
    if not isinstance(data, dict):
        raise InvalidMetricError(f"metrics must be an object; got {data!r}")
    check_metrics(data)
    return data
