"""Validating what the agent records, and shaping it into rows for the flusher.

Everything here runs on the agent's thread inside ``record()``, so it is written for speed:
one chained comparison per number (``0.0 <= x < inf`` is also false for NaN) and JSON
encoding only when there is something to encode. A bad value raises
:class:`InvalidMetricError` before anything is buffered (design invariant 9).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from policy_canary.errors import InvalidMetricError
from policy_canary.limits import MAX_MAGNITUDE

#: Columns of ``events`` the flusher writes, in row order (``id`` is the database's).
EVENT_COLUMNS = (
    "decision_id",
    "policy",
    "rollout_id",
    "arm",
    "version_digest",
    "stage",
    "traffic_bp",
    "scheme",
    "sticky",
    "at",
    "latency_ms",
    "error",
    "quality",
    "safety_flags",
    "flag_count",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "model",
    "metrics",
)
#: Position of ``at`` in an event row (the SQLite writer converts it).
AT_INDEX = EVENT_COLUMNS.index("at")

#: Longest model name the schema stores.
MAX_MODEL = 200
#: Longest custom metric name; longer names are almost certainly values pasted as keys.
MAX_METRIC_NAME = 64
#: Most custom metrics on one event; more is a logging mistake, not a metric set.
MAX_METRICS = 64

_NO_FLAGS = "[]"
_NO_METRICS = "{}"
#: The default of ``safety_flags``; compared by identity so the common case costs nothing.
NO_FLAGS: tuple[str, ...] = ()

#: The outcome part of an event row: latency_ms .. metrics (see :data:`EVENT_COLUMNS`).
Outcome = tuple[
    float | None,
    bool | None,
    float | None,
    str,
    int,
    float | None,
    int | None,
    int | None,
    str | None,
    str,
]


def _amount(name: str, value: object) -> float:
    """A finite, non-negative number (latency, cost)."""
    if type(value) is float or (type(value) is int):
        if 0.0 <= value <= MAX_MAGNITUDE:
            return float(value)
        raise InvalidMetricError(
            f"{name}={value!r} is not allowed; it must be a number in [0, {MAX_MAGNITUDE:g}]"
        )
    raise InvalidMetricError(f"{name} must be a number, got {type(value).__name__}")


def _count(name: str, value: object) -> int:
    """A non-negative integer (token counts); bools are refused as a likely mix-up."""
    if type(value) is int:
        if 0 <= value <= MAX_MAGNITUDE:
            return value
        raise InvalidMetricError(
            f"{name}={value} is not allowed; it must be in [0, {MAX_MAGNITUDE:g}]"
        )
    raise InvalidMetricError(f"{name} must be an integer, got {type(value).__name__}")


def quality_value(value: object) -> float:
    """A quality score in [0, 1]."""
    if type(value) is float or type(value) is int:
        if 0.0 <= value <= 1.0:
            return float(value)
        raise InvalidMetricError(
            f"quality={value!r} is not allowed; scores are in [0, 1] (rescale, e.g. 4/5 → 0.8)"
        )
    raise InvalidMetricError(f"quality must be a number in [0, 1], got {type(value).__name__}")


def metrics_json(metrics: Mapping[str, Any] | None) -> str:
    """Custom metrics as canonical JSON text: names to finite numbers or booleans."""
    if not metrics:
        return _NO_METRICS
    if not isinstance(metrics, Mapping):
        raise InvalidMetricError(
            f"metrics must be a mapping of names to numbers, got {type(metrics).__name__}"
        )
    if len(metrics) > MAX_METRICS:
        raise InvalidMetricError(
            f"{len(metrics)} custom metrics on one event; at most {MAX_METRICS}"
        )
    for key, value in metrics.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METRIC_NAME:
            raise InvalidMetricError(
                f"metric name {key!r} is not allowed; use a string of 1..{MAX_METRIC_NAME} chars"
            )
        kind = type(value)
        if kind is bool:
            continue
        if kind is not int and kind is not float:
            raise InvalidMetricError(
                f"metric {key!r} must be a number or a boolean, got {kind.__name__}"
            )
        # A chained comparison: false for NaN and infinities, and no float() of a huge int.
        if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:
            raise InvalidMetricError(
                f"metric {key!r}={value!r} is not allowed; use a finite number within "
                f"±{MAX_MAGNITUDE:g}"
            )
    return json.dumps(metrics, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _flags(value: Sequence[str] | int) -> tuple[str, int]:
    """Safety flags as (JSON list of names, count); a bare count is accepted too."""
    if type(value) is int:
        if value < 0:
            raise InvalidMetricError(f"safety_flags={value} is not allowed; a count must be >= 0")
        return _NO_FLAGS, value
    if isinstance(value, str) or not isinstance(value, Sequence | frozenset | set):
        raise InvalidMetricError(
            f"safety_flags must be a list of flag names (or a count), got {type(value).__name__}"
        )
    names = sorted(value) if isinstance(value, frozenset | set) else list(value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise InvalidMetricError(f"safety flag {name!r} is not allowed; use a non-empty name")
    if not names:
        return _NO_FLAGS, 0
    return json.dumps(names, separators=(",", ":"), ensure_ascii=False), len(names)


def outcome(
    latency_ms: float | None,
    error: bool | None,
    quality: float | None,
    safety_flags: Sequence[str] | int,
    cost_usd: float | None,
    input_tokens: int | None,
    output_tokens: int | None,
    model: str | None,
    metrics: Mapping[str, Any] | None,
) -> Outcome:
    """Validate one request's outcome and return it as the tail of an event row."""
    # Each check inlines the happy path (one type test, one chained comparison, which is
    # also false for NaN); the helper runs only to convert an int or raise the exact error.
    if latency_ms is not None and not (
        type(latency_ms) is float and 0.0 <= latency_ms <= MAX_MAGNITUDE
    ):
        latency_ms = _amount("latency_ms", latency_ms)
    if error is not None and type(error) is not bool:
        raise InvalidMetricError(
            f"error must be True or False, got {type(error).__name__} "
            "(log the message yourself; the event stores whether the request failed)"
        )
    if quality is not None and not (type(quality) is float and 0.0 <= quality <= 1.0):
        quality = quality_value(quality)
    if safety_flags is NO_FLAGS:
        flags, flag_count = _NO_FLAGS, 0
    else:
        flags, flag_count = _flags(safety_flags)
    if cost_usd is not None and not (type(cost_usd) is float and 0.0 <= cost_usd <= MAX_MAGNITUDE):
        cost_usd = _amount("cost_usd", cost_usd)
    if input_tokens is not None and not (
        type(input_tokens) is int and 0 <= input_tokens <= MAX_MAGNITUDE
    ):
        input_tokens = _count("input_tokens", input_tokens)
    if output_tokens is not None and not (
        type(output_tokens) is int and 0 <= output_tokens <= MAX_MAGNITUDE
    ):
        output_tokens = _count("output_tokens", output_tokens)
    if model is not None and (type(model) is not str or not 0 < len(model) <= MAX_MODEL):
        raise InvalidMetricError(f"model must be a name of 1..{MAX_MODEL} characters")
    return (
        latency_ms,
        error,
        quality,
        flags,
        flag_count,
        cost_usd,
        input_tokens,
        output_tokens,
        model,
        metrics_json(metrics) if metrics else _NO_METRICS,
    )
