"""Preflight: can each stage of a plan detect each guardrail's smallest regression in time?

Users import :func:`preflight`, :class:`StagePlan` and :class:`PreflightRow` from
:mod:`policy_canary.monitoring`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from policy_canary.guardrails import (
    Direction,
    Guardrail,
    GuardrailKind,
    Statistic,
    resolve_stage_guardrails,
)
from policy_canary.monitoring._baseline import Baseline
from policy_canary.monitoring._judges import detect_shift, on_log_scale
from policy_canary.stats import (
    BPS,
    MAIN_WEIGHT,
    RATE_DETECT_WEIGHT,
    bernoulli_kl,
    candidate_share_of_bad,
    wald_bernoulli_floor,
    wald_gaussian_floor,
)


@dataclass(frozen=True, slots=True)
class StagePlan:
    """The plain facts about a stage that :func:`preflight` needs."""

    name: str
    traffic_bp: int
    min_duration: timedelta
    max_duration: timedelta | None = None
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PreflightRow:
    """Can this stage detect this guardrail's smallest regression, and how soon?

    ``expected_candidate_requests`` is our test's approximate expected sample to detect the
    ``detect`` regression; ``wald_floor`` is what an oracle SPRT (baseline known, alpha and
    ``beta`` errors) would need, which no sequential test beats on average. Times are given
    when a request rate is known. ``None`` means it cannot be sized (see ``note``).
    """

    stage: str
    guardrail: str
    metric: str
    traffic_bp: int
    expected_candidate_requests: float | None
    wald_floor: float | None
    expected_duration: timedelta | None
    dwell: timedelta
    max_duration: timedelta | None
    warning: str | None = None
    note: str | None = None


def preflight(
    guardrails: Sequence[Guardrail],
    stages: Sequence[StagePlan],
    *,
    alpha: float = 0.01,
    beta: float = 0.2,
    requests_per_second: float | None = None,
    baseline: Baseline | None = None,
    baseline_rates: Mapping[str, float] | None = None,
) -> list[PreflightRow]:
    """Size every (stage, guardrail) pair; warn when a stage cannot detect within its dwell.

    ``baseline_rates`` gives stable's rate of a boolean metric (e.g. ``{"error": 0.01}``) and
    takes precedence over ``baseline``, which also provides the variances the mean tests need.
    """
    statistical = [g for g in guardrails if g.kind.is_statistical()]
    # The rollout's monitors split alpha with the built-in outcomes_recorded guardrail too.
    alpha_m = alpha / (len(statistical) + 1)
    rows = []
    for stage in stages:
        rho = stage.traffic_bp / BPS
        for g in resolve_stage_guardrails(guardrails, stage.overrides):
            ours, floor, note = _size(g, rho, alpha_m, beta, baseline, baseline_rates or {})
            duration = None
            if ours is not None and requests_per_second and rho > 0:
                seconds = ours / (requests_per_second * rho)
                duration = timedelta(seconds=min(seconds, _NEVER.total_seconds()))
            limit = stage.max_duration or stage.min_duration
            warning = None
            if duration is not None and duration > limit:
                warning = (
                    f"stage {stage.name!r} cannot detect {g.name}'s smallest regression within "
                    f"its {'maximum' if stage.max_duration else 'minimum'} duration: expect "
                    f"{_human(duration)} (about {ours:,.0f} candidate requests) against "
                    f"{_human(limit)}"
                )
            rows.append(
                PreflightRow(
                    stage=stage.name,
                    guardrail=g.name,
                    metric=g.metric,
                    traffic_bp=stage.traffic_bp,
                    expected_candidate_requests=ours,
                    wald_floor=floor,
                    expected_duration=duration,
                    dwell=stage.min_duration,
                    max_duration=stage.max_duration,
                    warning=warning,
                    note=note,
                )
            )
    return rows


#: Expected durations are capped here (a trickle of traffic would overflow a timedelta).
_NEVER = timedelta(days=36_500)


def _human(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if delta >= _NEVER:
        return "over 100 years"
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} d"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds / 60:.0f} min"


def _size(
    g: Guardrail,
    rho: float,
    alpha_m: float,
    beta: float,
    baseline: Baseline | None,
    rates: Mapping[str, float],
) -> tuple[float | None, float | None, str | None]:
    """Return (our expected candidate requests, Wald's floor, note) for one guardrail."""
    if g.kind is GuardrailKind.TRIPWIRE:
        return None, None, "tripwire: acts on the first flagged request, no sample needed"
    snapshot = baseline.get(g.metric) if baseline is not None else None
    stat = g.statistic or (g.metric_info.default_statistic if g.metric_info else None)
    d, t = g.effective_detect, g.tolerance
    threshold = math.log(1.0 / alpha_m)
    if g.kind is GuardrailKind.SLO and (stat is Statistic.RATE or (stat and stat.is_quantile())):
        if stat is Statistic.RATE:
            p0 = t
            p1 = p0 * (1 + d) if g.worse is Direction.UP else p0 * (1 - d)
        else:
            quantile = stat.quantile or 0.5
            p0 = 1 - quantile if g.worse is Direction.UP else quantile
            p1 = min(p0 * (1 + d), 0.999)
        kl = bernoulli_kl(p1, p0)
        ours = (threshold + math.log(1 / MAIN_WEIGHT)) / kl
        return ours, wald_bernoulli_floor(p0, p1, alpha=alpha_m, beta=beta), None
    if g.kind is GuardrailKind.SLO:
        if snapshot is None or not snapshot.variance:
            return None, None, "no baseline variance to size this mean SLO"
        delta = d * t
        kl = delta * delta / (2 * snapshot.variance)
        ours = (threshold + math.log(len((1.0, 0.5, 0.25)))) / kl
        return (
            ours,
            wald_gaussian_floor(delta, math.sqrt(snapshot.variance), alpha=alpha_m, beta=beta),
            "Gaussian approximation",
        )
    if not 0.0 < rho < 1.0:
        return None, None, "no concurrent baseline at this share; relative tests do not move"
    if stat is Statistic.RATE or (stat is not None and stat.is_quantile()):
        if g.tolerance_field == "max_delta":
            return None, None, "max_delta on a rate is sized as a mean; give baseline variance"
        if stat is Statistic.RATE:
            p = rates.get(g.metric, snapshot.rate if snapshot is not None else None)
        else:
            p = 1 - (stat.quantile or 0.5)
        if p is None or not 0.0 < p < 1.0:
            return None, None, f"no baseline rate for {g.metric}; pass baseline_rates"
        sign = 1.0 if g.worse is Direction.UP or stat.is_quantile() else -1.0
        r0, r1 = 1 + sign * t, 1 + sign * d
        q0 = float(candidate_share_of_bad(rho, r0))
        q1 = float(candidate_share_of_bad(rho, r1))
        per_candidate = (rho * p * r1 + (1 - rho) * p) * bernoulli_kl(q1, q0) / rho
        ours = (threshold + math.log(1 / RATE_DETECT_WEIGHT)) / per_candidate
        p0, p1 = min(p * r0, 0.999), min(p * r1, 0.999)
        return ours, wald_bernoulli_floor(p0, p1, alpha=alpha_m, beta=beta), None
    # Relative mean or absolute delta: likelihood ratios on weighted AIPW terms.
    log_scale = on_log_scale(g)
    if snapshot is None:
        return None, None, f"no baseline for {g.metric}; build one with Baseline.from_events"
    variance = snapshot.log_variance if log_scale else snapshot.variance
    mean = snapshot.log_mean if log_scale else snapshot.mean
    if not variance or mean is None:
        return None, None, f"no baseline variance for {g.metric}"
    if log_scale or g.tolerance_field == "max_delta":
        delta, c = detect_shift(g), 1.0
    else:
        delta, c = detect_shift(g) * abs(mean), 1 + t if g.worse is Direction.UP else 1 - t
    # The breach side is a likelihood-ratio mixture weighted MAIN_WEIGHT at `detect`, on AIPW
    # terms of variance `per_pair`, one per request: 1/rho of them per candidate request.
    per_pair = variance * (1 / rho + c * c / (1 - rho))
    per_candidate = delta * delta / (2 * rho * per_pair)
    ours = (threshold + math.log(1 / MAIN_WEIGHT)) / per_candidate
    floor = wald_gaussian_floor(delta, math.sqrt(variance), alpha=alpha_m, beta=beta)
    return ours, floor, None
