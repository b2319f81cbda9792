"""Validating what the agent records, and shaping it into rows for the flusher.

Everything here runs on the agent's thread inside ``record()``, so it is written for speed:
one chained comparison per number (``0.0 <= x < inf`` is also false for NaN) and JSON
encoding only when there is something to encode. A bad value raises
:class:`InvalidMetricError` before anything is buffered (design invariant 9), and whatever
passes is storable on both backends: sizes are bounded (``MAX_*`` below) and text holds no
NUL and no lone surrogate (``text_problem``), so the flusher never refuses a row for its
content.

Numbers may be any real-number type, not only ``int`` and ``float``: numpy scalars
(``np.float64``, ``np.float32``, ``np.int64``) are accepted and stored as plain Python
numbers, and ``np.bool_`` is accepted wherever a bool is. They are recognised by duck typing
(:mod:`numbers`, ``__index__``, the type's module), so numpy is never imported here, and
only off the fast path: plain ``float``/``int``/``bool`` values never reach those checks.
"""

from __future__ import annotations

import json
import numbers
import operator
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
#: Longest safety flag name; a flag names a category (``pii_leak``), not the offending text.
MAX_FLAG_NAME = 64
#: Most safety flags on one event, as names or as a bare count.
MAX_FLAGS = 64

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


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored the same way on both backends, or None if it can.

    PostgreSQL refuses NUL in text and neither driver can encode a lone surrogate, so such
    values would be accepted by ``record()`` and refused at flush time; refuse them here.
    """
    if "\x00" in text:
        return "it contains a NUL character"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "it contains a lone surrogate (not valid Unicode; decode the bytes properly)"
    return None


def _model(value: object) -> str:
    """A model name: 1..MAX_MODEL characters of storable text."""
    if type(value) is not str or not 0 < len(value) <= MAX_MODEL:
        raise InvalidMetricError(f"model must be a name of 1..{MAX_MODEL} characters")
    problem = text_problem(value)
    if problem:
        raise InvalidMetricError(f"model {value[:40]!r} is not allowed: {problem}")
    return value


def _is_bool(value: object) -> bool:
    """``bool`` or numpy's ``bool_`` (whose type is named ``bool`` in numpy 2)."""
    kind = type(value)
    return kind is bool or (kind.__module__ == "numpy" and kind.__name__ in {"bool", "bool_"})


def _real(value: object) -> numbers.Real | None:
    """``value`` if it is a real number other than a bool (int, float, numpy...), else None."""
    if isinstance(value, numbers.Real) and not _is_bool(value):
        return value
    return None


def _integer(value: object) -> int | None:
    """``value`` as an ``int`` if it is an integer other than a bool (int, np.int64...)."""
    if _is_bool(value):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]  # duck-typed on purpose
    except TypeError:
        return None


def _kind(value: object) -> str:
    """The name a message should use for ``value``'s type (``numpy.bool``, not ``bool``)."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _amount(name: str, value: object) -> float:
    """A finite, non-negative number (latency, cost)."""
    number = _real(value)
    if number is not None:
        # Compared before float(): a huge int must be refused, not overflow.
        if 0.0 <= number <= MAX_MAGNITUDE:  # type: ignore[operator]  # Real compares
            return float(number)
        raise InvalidMetricError(
            f"{name}={value!r} is not allowed; it must be a number in [0, {MAX_MAGNITUDE:g}]"
        )
    raise InvalidMetricError(f"{name} must be a number, got {_kind(value)}")


def _count(name: str, value: object) -> int:
    """A non-negative integer (token counts); bools are refused as a likely mix-up."""
    number = _integer(value)
    if number is not None:
        if 0 <= number <= MAX_MAGNITUDE:
            return number
        raise InvalidMetricError(
            f"{name}={value} is not allowed; it must be in [0, {MAX_MAGNITUDE:g}]"
        )
    raise InvalidMetricError(f"{name} must be an integer, got {_kind(value)}")


def _failed(value: object) -> bool:
    """The ``error`` flag: True or False (a numpy bool too); 0/1 are refused as a mix-up."""
    if _is_bool(value):
        return bool(value)
    raise InvalidMetricError(
        f"error must be True or False, got {_kind(value)} "
        "(log the message yourself; the event stores whether the request failed)"
    )


def quality_value(value: object) -> float:
    """A quality score in [0, 1]."""
    number = _real(value)
    if number is not None:
        if 0.0 <= number <= 1.0:  # type: ignore[operator]  # Real compares
            return float(number)
        raise InvalidMetricError(
            f"quality={value!r} is not allowed; scores are in [0, 1] (rescale, e.g. 4/5 → 0.8)"
        )
    raise InvalidMetricError(f"quality must be a number in [0, 1], got {_kind(value)}")


def _metric(key: str, value: object) -> int | float | bool:
    """A custom metric value that is not a plain int, float or bool, as one of those."""
    if _is_bool(value):
        return bool(value)
    number = _real(value)
    if number is None:
        raise InvalidMetricError(
            f"metric {key!r} must be a number or a boolean, got {_kind(value)}"
        )
    integer = _integer(number)
    return integer if integer is not None else float(number)


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
    plain: dict[str, Any] | None = None  # a copy, only if some value was not a plain number
    for key, value in metrics.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METRIC_NAME:
            raise InvalidMetricError(
                f"metric name {_short(key)} is not allowed; use a string of "
                f"1..{MAX_METRIC_NAME} chars"
            )
        if not key.isascii() or "\x00" in key:
            problem = text_problem(key)
            if problem:
                raise InvalidMetricError(f"metric name {key!r} is not allowed: {problem}")
        kind = type(value)
        if kind is bool:
            continue
        if kind is not int and kind is not float:
            value = _metric(key, value)
            if plain is None:
                plain = dict(metrics)
            plain[key] = value
            if type(value) is bool:
                continue
        # A chained comparison: false for NaN and infinities, and no float() of a huge int.
        if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:
            raise InvalidMetricError(
                f"metric {key!r}={value!r} is not allowed; use a finite number within "
                f"±{MAX_MAGNITUDE:g}"
            )
    return json.dumps(
        metrics if plain is None else plain,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _flags(value: Sequence[str] | int) -> tuple[str, int]:
    """Safety flags as (JSON list of names, count); a bare count is accepted too."""
    count = value if type(value) is int else _integer(value)
    if count is not None:
        if not 0 <= count <= MAX_FLAGS:
            raise InvalidMetricError(
                f"safety_flags={_short(count)} is not allowed; a count must be in 0..{MAX_FLAGS}"
            )
        return _NO_FLAGS, count
    if isinstance(value, str) or not isinstance(value, Sequence | frozenset | set):
        raise InvalidMetricError(
            f"safety_flags must be a list of flag names (or a count), got {type(value).__name__}"
        )
    if len(value) > MAX_FLAGS:
        raise InvalidMetricError(
            f"{len(value)} safety flags on one event; at most {MAX_FLAGS} (name the categories "
            "that fired, not each finding)"
        )
    for name in value:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_FLAG_NAME:
            raise InvalidMetricError(
                f"safety flag {_short(name)} is not allowed; use a name of "
                f"1..{MAX_FLAG_NAME} characters, e.g. 'pii_leak'"
            )
        if not name.isascii() or "\x00" in name:
            problem = text_problem(name)
            if problem:
                raise InvalidMetricError(f"safety flag {name!r} is not allowed: {problem}")
    names = sorted(value) if isinstance(value, frozenset | set) else list(value)
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
        error = _failed(error)
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
    if model is not None and (
        type(model) is not str
        or not 0 < len(model) <= MAX_MODEL
        or not model.isascii()
        or "\x00" in model
    ):
        model = _model(model)
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


def _short(value: object) -> str:
    """``repr(value)`` cut to a readable length: error messages must not echo a megabyte."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
