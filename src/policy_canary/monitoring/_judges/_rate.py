"""Relative rates and quantile exceedances: the conditional e-process judge."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from policy_canary.guardrails import Direction, Guardrail, Statistic
from policy_canary.monitoring._judges._base import (
    Bools,
    Ints,
    Judge,
    Setup,
    Values,
    e_from_log,
    finite_or_none,
    fmt,
    too_few,
)
from policy_canary.monitoring._verdict import Verdict, VerdictStatus
from policy_canary.stats import ConditionalRateProcess, RateMixture, bernoulli_upper_bound


class RateJudge(Judge):
    """Relative rate, or the rate of exceeding stable's frozen quantile: conditional e-process."""

    def __init__(
        self, base: Guardrail, variants: Sequence[Guardrail], statistic: Statistic, setup: Setup
    ) -> None:
        self.base, self.setup, self.statistic = base, setup, statistic
        # A quantile is judged through its exceedance rate, which can only get worse upwards.
        self.sign = 1.0 if base.worse is Direction.UP or statistic.is_quantile() else -1.0
        r0 = 1.0 + self.sign * base.tolerance
        r1 = 1.0 + self.sign * base.effective_detect
        strictest = min(
            (1.0 + self.sign * v.tolerance for v in variants), key=lambda r: self.sign * r
        )
        self.toward = RateMixture.around(r0, r1)
        self.away = RateMixture.away(pivot=strictest, null_ratio=r0, detect_ratio=r1)
        self.line: float | None = None
        # Beyond a quantile means above it for latency or cost, below it for quality.
        info = base.metric_info
        self.beyond_up = info is None or info.worse is Direction.UP
        if statistic.is_quantile():
            snapshot = setup.baseline.get(base.metric)
            self.line = snapshot.quantiles.get(statistic.value) if snapshot else None
        self.process = ConditionalRateProcess()

    def _flag(self, value: Any) -> bool | None:
        if self.statistic.is_quantile():
            if isinstance(value, bool) or not isinstance(value, int | float) or self.line is None:
                return None
            if self.beyond_up:
                return float(value) > self.line
            return float(value) < self.line
        return bool(value) if isinstance(value, bool | int | float) else None

    def fold(self, cand: Bools, bp: Ints, values: Values, ats: Sequence[datetime]) -> None:
        """Fold observations: only bad ones enter the test, all count as requests."""
        if self.statistic.is_quantile() and self.line is None:
            return
        flags = [self._flag(v) for v in values]
        keep = np.asarray([f is not None for f in flags], dtype=bool)
        self.rejected += int((~keep).sum())
        bad = np.asarray([bool(f) for f in flags], dtype=bool)
        self.process.fold(candidate=cand[keep], share_bp=bp[keep], bad=bad[keep])

    def verdict(self, g: Guardrail) -> Verdict:
        """Breach when K >= 1/alpha; non-inferior when the mirrored test rejects the tolerance."""
        what = f"{g.metric} rate"
        if self.statistic.is_quantile():
            what = f"share of {g.metric} beyond stable's {self.statistic.value}"
            if self.line is None:
                reason = (
                    f"{g.name}: there is no frozen baseline {self.statistic.value} of {g.metric} "
                    "(stable reported none when the rollout started), so it cannot be judged."
                )
                return self._verdict(g, VerdictStatus.INSUFFICIENT_DATA, reason, {})
        tests = self._tests(g)
        evidence = self._evidence(tests)
        p, alpha, up = self.process, self.setup.alpha, tests.up
        change = "rise" if up else "drop"
        tol = f"{100 * g.tolerance:.3g}%"
        cand, stable = fmt(tests.cand_rate, pct=True), fmt(tests.stable_rate, pct=True)
        if tests.log_k >= math.log(1.0 / alpha):
            reason = (
                f"{g.name}: {what} is {cand} on the candidate vs {stable} on stable "
                f"(x{fmt(tests.ratio)}); e-value {fmt(e_from_log(tests.log_k))} >= "
                f"{fmt(1 / alpha)} establishes a {change} beyond {tol}."
            )
            return self._verdict(g, VerdictStatus.BREACH, reason, evidence)
        if min(p.requests) < g.min_samples:
            return self._verdict(
                g, VerdictStatus.INSUFFICIENT_DATA, too_few(g, p.requests), evidence
            )
        reason = (
            f"{g.name}: {what} {cand} vs {stable} (x{fmt(tests.ratio)}) shows no {change} "
            f"beyond {tol} after {p.requests[1]} candidate and {p.requests[0]} stable "
            "observations."
        ) + _non_inferiority_clause(tests, evidence["non_inferiority_bound"])
        return self._verdict(
            g, VerdictStatus.PASS, reason, evidence, non_inferior=tests.route is not None
        )

    def _tests(self, g: Guardrail) -> _RateTests:
        """Both e-values and the non-inferiority routes for ``g``'s tolerance."""
        p = self.process
        alpha = self.setup.alpha
        r0 = 1.0 + self.sign * g.tolerance
        up = self.sign > 0
        log_ni = p.log_e_value(null_ratio=r0, mixture=self.away)
        # Non-inferiority has two routes, each at half the guardrail's alpha when both run, so
        # a false claim (candidate above both r0 x stable and the negligible rate) has
        # probability <= alpha: the ratio route rejects "ratio >= r0"; the absolute route
        # bounds the candidate's own rate below `negligible` (rare events: safety flags).
        negligible = g.effective_negligible if up else 0.0
        ni_alpha = alpha / 2.0 if negligible > 0.0 else alpha
        cand_upper = (
            bernoulli_upper_bound(p.bad_total[1], p.requests[1], alpha=ni_alpha)
            if negligible > 0.0
            else None
        )
        absolute_ni = cand_upper is not None and cand_upper <= negligible
        ratio_ni = log_ni >= math.log(1.0 / ni_alpha)
        stable_rate, cand_rate = p.rates()
        return _RateTests(
            up=up,
            r0=r0,
            log_k=p.log_e_value(null_ratio=r0, mixture=self.toward),
            log_ni=log_ni,
            ni_alpha=ni_alpha,
            negligible=negligible,
            cand_upper=cand_upper,
            route="ratio" if ratio_ni else "absolute" if absolute_ni else None,
            stable_rate=stable_rate,
            cand_rate=cand_rate,
            ratio=cand_rate / stable_rate if cand_rate is not None and stable_rate else None,
        )

    def _evidence(self, t: _RateTests) -> dict[str, Any]:
        """What the verdict records: counts, rates, bounds, e-values and thresholds."""
        p, alpha, up = self.process, self.setup.alpha, t.up
        evidence: dict[str, Any] = {
            "statistic": self.statistic.value,
            "n_stable": p.requests[0],
            "n_candidate": p.requests[1],
            "bad_stable": p.bad_total[0],
            "bad_candidate": p.bad_total[1],
            "rate_stable": t.stable_rate,
            "rate_candidate": t.cand_rate,
            "ratio": finite_or_none(t.ratio),
            # The bound on the bad side is the breach test's (alpha), the good side the
            # ratio route's (ni_alpha).
            "ratio_lower": p.confidence_bound(
                alpha=alpha if up else t.ni_alpha,
                mixture=self.toward if up else self.away,
                upper=False,
            ),
            "ratio_upper": p.confidence_bound(
                alpha=t.ni_alpha if up else alpha,
                mixture=self.away if up else self.toward,
                upper=True,
            ),
            "threshold_ratio": t.r0,
            "e_value": e_from_log(t.log_k),
            "e_value_non_inferiority": e_from_log(t.log_ni),
            "e_value_threshold": 1.0 / alpha,
            "non_inferiority_alpha": t.ni_alpha,
            "negligible": t.negligible,
            "rate_candidate_upper": t.cand_upper,
        }
        evidence["non_inferiority_route"] = t.route
        evidence["non_inferiority_bound"] = (
            evidence["ratio_upper" if up else "ratio_lower"]
            if t.route == "ratio"
            else t.cand_upper
            if t.route == "absolute"
            else None
        )
        if self.line is not None:
            evidence["baseline_line"] = self.line
        return evidence

    def state(self) -> dict[str, Any]:
        """Return the JSON-ready state."""
        return {"process": self.process.to_dict(), "rejected": self.rejected}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output."""
        self.process = ConditionalRateProcess.from_dict(state["process"])
        self.rejected = int(state["rejected"])


@dataclass(frozen=True, slots=True)
class _RateTests:
    """One evaluation of a rate guardrail's breach and non-inferiority tests."""

    up: bool
    r0: float
    log_k: float
    log_ni: float
    ni_alpha: float
    negligible: float
    cand_upper: float | None
    route: str | None
    stable_rate: float | None
    cand_rate: float | None
    ratio: float | None


def _non_inferiority_clause(t: _RateTests, bound: float | None) -> str:
    """The sentence a passing verdict adds when a non-inferiority route succeeded."""
    if t.route == "ratio":
        return (
            f" Non-inferior: the ratio is below x{fmt(bound)}"
            f" {'<=' if t.up else '>='} x{fmt(t.r0)}."
        )
    if t.route == "absolute":
        return (
            f" Non-inferior: the candidate's rate is below {fmt(t.cand_upper, pct=True)}, "
            f"within the negligible {fmt(t.negligible, pct=True)}."
        )
    return ""
