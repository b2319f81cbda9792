"""Guardrails: the validated rule on one metric, its vocabulary and prices."""

from __future__ import annotations

from policy_canary.guardrails._guardrail import (
    Guardrail,
    check_unique_names,
    resolve_stage_guardrails,
)
from policy_canary.guardrails._prices import ModelPrice, price_of
from policy_canary.guardrails._types import (
    BUILTIN_METRICS,
    DEFAULT_NEGLIGIBLE,
    MAX_MIN_SAMPLES,
    OVERRIDABLE_FIELDS,
    Direction,
    GuardrailAction,
    GuardrailKind,
    MetricInfo,
    Statistic,
)

__all__ = [
    "BUILTIN_METRICS",
    "DEFAULT_NEGLIGIBLE",
    "MAX_MIN_SAMPLES",
    "OVERRIDABLE_FIELDS",
    "Direction",
    "Guardrail",
    "GuardrailAction",
    "GuardrailKind",
    "MetricInfo",
    "ModelPrice",
    "Statistic",
    "check_unique_names",
    "price_of",
    "resolve_stage_guardrails",
]
