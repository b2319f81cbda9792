"""Relative rates and quantile exceedances: the conditional e-process judge.

A quantile guardrail judges the rate of observations beyond stable's line. The line is frozen
from stable's history when the rollout starts; when that history is too short for it, it is
frozen from stable's concurrent traffic once that arm has enough observations, and only the
observations after that point (both arms) count. The line is then fixed before any observation
it judges, so the conditional test stays valid (an A/A candidate exceeds it as often as stable).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from policy_canary.guardrails import Direction, Guardrail, Statistic
from policy_canary.monitoring._baseline import quantile_line, quantile_sample_size
from policy_canary.monitoring._judges._base import (
    Bools,
    Ints,
    Judge,
    Setup,
    Values,
    e_from_log,
    finite_or_none,
    too_few,
)
from policy_canary.monitoring._judges._reasons import (
    arm_rates,
    line_origin,
    line_pending,
    non_inferiority,
    rate_breach,
    rate_pass,
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
        #: Where the line came from: stable's history at the start, or its concurrent traffic.
        self.line_source = "baseline"
        #: Stable observations a line needs, and those gathered while it is not frozen yet.
        self.line_needs = quantile_sample_size(statistic.value) if statistic.is_quantile() else 0
        self.pending: list[float] = []
        # Beyond a quantile means above it for latency or cost, below it for quality.
        info = base.metric_info
        self.beyond_up = info is None or info.worse is Direction.UP
        #: The start's line even when its history was too short (states from before late lines).
        self.short_line: float | None = None
        if statistic.is_quantile():
            snapshot = setup.baseline.get(base.metric)
            if snapshot is not None:
                self.short_line = snapshot.quantiles.get(statistic.value)
                if snapshot.count >= self.line_needs:
                    self.line = self.short_line
            if self.line is None:
                self.line_source = "concurrent"
        self.process = ConditionalRateProcess()

    def _flag(self, value: Any) -> bool | None:
        if self.statistic.is_quantile():
            if isinstance(value, bool) or not isinstance(value, int | float) or self.line is None:
                return None
            if self.beyond_up:
                return float(value) > self.line
            return float(value) < self.line
        return bool(value) if isinstance(value, bool | int | float) else None

    def _flags(self, values: Values) -> list[bool | None]:
        """:meth:`_flag` of every value, its branch chosen once (a tick folds thousands)."""
        if not self.statistic.is_quantile():
            return [bool(v) if isinstance(v, bool | int | float) else None for v in values]
        line = self.line
        if line is None:
            return [None] * len(values)
        if self.beyond_up:
            return [
                None if isinstance(v, bool) or not isinstance(v, int | float) else float(v) > line
                for v in values
            ]
        return [
            None if isinstance(v, bool) or not isinstance(v, int | float) else float(v) < line
            for v in values
        ]

    def fold(self, cand: Bools, bp: Ints, values: Values, ats: Sequence[datetime]) -> None:
        """Fold observations: only bad ones enter the test, all count as requests."""
        if self.statistic.is_quantile() and self.line is None:
            start = self._gather(cand, values)
            if self.line is None:
                return
            cand, bp, values = cand[start:], bp[start:], values[start:]
        if isinstance(values, np.ndarray):  # a batch's column: every value a number
            line = self.line
            if not self.statistic.is_quantile():
                bad = values != 0.0
            else:
                assert line is not None, "a quantile's line is frozen before it counts"
                bad = values > line if self.beyond_up else values < line
            self.process.fold(candidate=cand, share_bp=bp, bad=bad)
            return
        flags = self._flags(values)
        keep = np.asarray([f is not None for f in flags], dtype=bool)
        self.rejected += int((~keep).sum())
        bad = np.asarray([bool(f) for f in flags], dtype=bool)
        self.process.fold(candidate=cand[keep], share_bp=bp[keep], bad=bad[keep])

    def _gather(self, cand: Bools, values: Values) -> int:
        """Gather stable's values until the line can be frozen; return where counting starts.

        Observations up to and including the one that completes the line only shape it; the
        rest of the batch (both arms) is judged against it.
        """
        if isinstance(values, np.ndarray):  # a batch's column: every value a number
            stable = np.flatnonzero(~cand)[: self.line_needs - len(self.pending)]
            self.pending.extend(values[stable].tolist())
            if len(self.pending) < self.line_needs:
                return len(values)
            self.line = quantile_line(self.pending, self.statistic.value)
            self.pending = []
            return int(stable[-1]) + 1
        for i, value in enumerate(values):
            if cand[i] or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            self.pending.append(float(value))
            if len(self.pending) >= self.line_needs:
                self.line = quantile_line(self.pending, self.statistic.value)
                self.pending = []
                return i + 1
        return len(values)

    def verdict(self, g: Guardrail) -> Verdict:
        """Breach when K >= 1/alpha; non-inferior when the mirrored test rejects the tolerance."""
        what = f"{g.metric} rate"
        origin = ""
        if self.statistic.is_quantile():
            what = f"share of {g.metric} beyond stable's {self.statistic.value}"
            origin = line_origin(self.line_source, self.line_needs)
            if self.line is None:
                have = len(self.pending)
                reason = line_pending(g, self.statistic.value, have, self.line_needs)
                waiting = {
                    "statistic": self.statistic.value,
                    "line_source": self.line_source,
                    "line_observations": have,
                    "line_needs": self.line_needs,
                }
                return self._verdict(g, VerdictStatus.INSUFFICIENT_DATA, reason, waiting)
        tests = self._tests(g)
        evidence = self._evidence(tests)
        p, alpha, up = self.process, self.setup.alpha, tests.up
        rates = arm_rates(
            tests.cand_rate,
            tests.stable_rate,
            (p.bad_total[0], p.bad_total[1]),
            (p.requests[0], p.requests[1]),
            tests.ratio,
        )
        if tests.log_k >= math.log(1.0 / alpha):
            reason = rate_breach(g, what, rates, tests.log_k, alpha, up=up) + origin
            return self._verdict(g, VerdictStatus.BREACH, reason, evidence)
        if min(p.requests) < g.min_samples:
            return self._verdict(
                g, VerdictStatus.INSUFFICIENT_DATA, too_few(g, p.requests), evidence
            )
        reason = rate_pass(
            g,
            what,
            rates,
            tests.log_k,
            alpha,
            up=up,
            observed_beyond=_observed_beyond(tests),
            clause=non_inferiority(
                tests.route,
                evidence["non_inferiority_bound"],
                up=up,
                r0=tests.r0,
                negligible=tests.negligible,
            ),
        )
        return self._verdict(
            g, VerdictStatus.PASS, reason + origin, evidence, non_inferior=tests.route is not None
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
            evidence["line_source"] = self.line_source
        return evidence

    def state(self) -> dict[str, Any]:
        """Return the JSON-ready state (a line frozen late, or its pending observations)."""
        data: dict[str, Any] = {"process": self.process.to_dict(), "rejected": self.rejected}
        if self.line_source == "concurrent":
            data["line"] = self.line
            data["pending"] = list(self.pending)
        return data

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output."""
        self.process = ConditionalRateProcess.from_dict(state["process"])
        self.rejected = int(state["rejected"])
        if self.line_source != "concurrent":
            return
        if "line" not in state:
            # Written before lines were frozen late: its counts were taken against the start's
            # line, however short the history, so it goes on with that line (or gathers one).
            self.line = self.short_line
            if self.line is not None:
                self.line_source = "baseline"
            return
        line = state["line"]
        self.line = None if line is None else float(line)
        self.pending = [float(v) for v in state.get("pending", ())]


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


def _observed_beyond(t: _RateTests) -> bool:
    """Whether the candidate's observed rate already lies past the tolerance."""
    if t.cand_rate is None or t.stable_rate is None:
        return False
    if t.up:
        return t.cand_rate > t.r0 * t.stable_rate
    return t.cand_rate < t.r0 * t.stable_rate
