"""Relative rates and quantile exceedances: the conditional e-process judge."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    _e,
    _finite,
    _fmt,
    _too_few,
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
        p = self.process
        alpha = self.setup.alpha
        r0 = 1.0 + self.sign * g.tolerance
        log_k = p.log_e_value(null_ratio=r0, mixture=self.toward)
        log_ni = p.log_e_value(null_ratio=r0, mixture=self.away)
        limit = math.log(1.0 / alpha)
        up = self.sign > 0
        # Non-inferiority has two routes, each at half the guardrail's alpha when both run, so
        # a false claim (candidate above both r0 x stable and the negligible rate) has
        # probability <= alpha: the ratio route rejects "ratio >= r0"; the absolute route
        # bounds the candidate's own rate below `negligible` (rare events: safety flags).
        negligible = g.effective_negligible if up else 0.0
        ni_alpha = alpha / 2.0 if negligible > 0.0 else alpha
        ratio_ni = log_ni >= math.log(1.0 / ni_alpha)
        cand_upper = (
            bernoulli_upper_bound(p.bad_total[1], p.requests[1], alpha=ni_alpha)
            if negligible > 0.0
            else None
        )
        absolute_ni = cand_upper is not None and cand_upper <= negligible
        stable_rate, cand_rate = p.rates()
        ratio = cand_rate / stable_rate if cand_rate is not None and stable_rate else None
        evidence: dict[str, Any] = {
            "statistic": self.statistic.value,
            "n_stable": p.requests[0],
            "n_candidate": p.requests[1],
            "bad_stable": p.bad_total[0],
            "bad_candidate": p.bad_total[1],
            "rate_stable": stable_rate,
            "rate_candidate": cand_rate,
            "ratio": _finite(ratio),
            # The bound on the bad side is the breach test's (alpha), the good side the
            # ratio route's (ni_alpha).
            "ratio_lower": p.confidence_bound(
                alpha=alpha if up else ni_alpha,
                mixture=self.toward if up else self.away,
                upper=False,
            ),
            "ratio_upper": p.confidence_bound(
                alpha=ni_alpha if up else alpha,
                mixture=self.away if up else self.toward,
                upper=True,
            ),
            "threshold_ratio": r0,
            "e_value": _e(log_k),
            "e_value_non_inferiority": _e(log_ni),
            "e_value_threshold": 1.0 / alpha,
            "non_inferiority_alpha": ni_alpha,
            "negligible": negligible,
            "rate_candidate_upper": cand_upper,
        }
        route: str | None = "ratio" if ratio_ni else "absolute" if absolute_ni else None
        evidence["non_inferiority_route"] = route
        evidence["non_inferiority_bound"] = (
            evidence["ratio_upper" if up else "ratio_lower"]
            if route == "ratio"
            else cand_upper
            if route == "absolute"
            else None
        )
        if self.line is not None:
            evidence["baseline_line"] = self.line
        change = "rise" if up else "drop"
        tol = f"{100 * g.tolerance:.3g}%"
        if log_k >= limit:
            reason = (
                f"{g.name}: {what} is {_fmt(cand_rate, pct=True)} on the candidate vs "
                f"{_fmt(stable_rate, pct=True)} on stable (x{_fmt(ratio)}); e-value "
                f"{_fmt(_e(log_k))} >= {_fmt(1 / alpha)} establishes a {change} beyond {tol}."
            )
            return self._verdict(g, VerdictStatus.BREACH, reason, evidence)
        if min(p.requests) < g.min_samples:
            return self._verdict(
                g, VerdictStatus.INSUFFICIENT_DATA, _too_few(g, p.requests), evidence
            )
        reason = (
            f"{g.name}: {what} {_fmt(cand_rate, pct=True)} vs {_fmt(stable_rate, pct=True)} "
            f"(x{_fmt(ratio)}) shows no {change} beyond {tol} after {p.requests[1]} candidate "
            f"and {p.requests[0]} stable observations."
        )
        if route == "ratio":
            reason += (
                f" Non-inferior: the ratio is below x{_fmt(evidence['non_inferiority_bound'])}"
                f" {'<=' if up else '>='} x{_fmt(r0)}."
            )
        elif route == "absolute":
            reason += (
                f" Non-inferior: the candidate's rate is below {_fmt(cand_upper, pct=True)}, "
                f"within the negligible {_fmt(negligible, pct=True)}."
            )
        return self._verdict(
            g, VerdictStatus.PASS, reason, evidence, non_inferior=route is not None
        )

    def state(self) -> dict[str, Any]:
        """Return the JSON-ready state."""
        return {"process": self.process.to_dict(), "rejected": self.rejected}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output."""
        self.process = ConditionalRateProcess.from_dict(state["process"])
        self.rejected = int(state["rejected"])
