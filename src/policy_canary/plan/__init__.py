"""Rollout plans: stages, guardrails, validation with locations, the default plan."""

from __future__ import annotations

from policy_canary.plan._plan import (
    BPS,
    DEFAULT_ALPHA,
    MAX_PLAN_BYTES,
    PLAN_FORMAT_KEYS,
    RolloutPlan,
    Stage,
    format_duration,
    parse_duration,
)

__all__ = [
    "BPS",
    "DEFAULT_ALPHA",
    "MAX_PLAN_BYTES",
    "PLAN_FORMAT_KEYS",
    "RolloutPlan",
    "Stage",
    "format_duration",
    "parse_duration",
]
