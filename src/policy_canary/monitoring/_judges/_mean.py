"""Relative means (and absolute deltas): likelihood ratios on weighted AIPW terms."""

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
    e_from_log,
    fmt,
    numeric,
    too_few,
)
from policy_canary.monitoring._verdict import Verdict, VerdictStatus
from policy_canary.stats import MeanDifferenceProcess, ShiftMixture, mixture_rho


def on_log_scale(g: Guardrail) -> bool:
    """Whether a mean guardrail compares ln(1 + value): latency with a relative tolerance."""
    return g.metric == "latency_ms" and g.tolerance_field in ("max_increase", "max_decrease")


def detect_shift(g: Guardrail) -> float:
    """The distance from a mean guardrail's tolerance to its ``detect``, on its contrast's scale.

    On ln(1 + ms) for latency with a relative tolerance, per unit of stable's mean for other
    relative tolerances, in the metric's units for ``max_delta``.
    """
    if on_log_scale(g):
        sign = 1.0 if g.worse is Direction.UP else -1.0
        return abs(math.log1p(sign * g.effective_detect) - math.log1p(sign * g.tolerance))
    return g.effective_detect - g.tolerance


class MeanJudge(Judge):
    """Difference of means against the concurrent baseline: weighted AIPW likelihood ratios.

    Latency with a relative tolerance is compared on ln(1 + ms), where a +10% tolerance is an
    absolute shift of ln(1.1). Other relative tolerances compare mu_c with (1 +/- t) mu_s, one
    confidence sequence per distinct tolerance with alpha split between them. ``max_delta``
    compares mu_c - mu_s with the delta. The breach side is a mixture of likelihood ratios
    tuned to ``detect`` (:class:`~policy_canary.stats.ShiftMixture`); the other side, read for
    non-inferiority, a half-normal mixture tightest where ``detect`` would be caught.
    """

    def __init__(
        self, base: Guardrail, variants: Sequence[Guardrail], statistic: Statistic, setup: Setup
    ) -> None:
        self.base, self.setup, self.statistic = base, setup, statistic
        self.sign = 1.0 if base.worse is Direction.UP else -1.0
        self.log_scale = on_log_scale(base)
        self.ratio_scale = (
            base.tolerance_field in ("max_increase", "max_decrease") and not self.log_scale
        )
        self.coefficients = tuple(sorted({self._coefficient(v) for v in variants}))
        self.test_alpha = setup.alpha / len(self.coefficients)
        snapshot = setup.baseline.get(base.metric)
        prior, variance = 0.0, None
        if snapshot is not None:
            prior = (snapshot.log_mean if self.log_scale else snapshot.mean) or 0.0
            variance = snapshot.log_variance if self.log_scale else snapshot.variance
        if not variance:
            variance = 0.25 if base.is_boolean or base.metric == "quality" else max(prior**2, 1.0)
        # Tuned to `detect` (a relative contrast's process scales by stable's mean itself).
        self.mixture = ShiftMixture.around(detect_shift(base))
        self.rho_h = mixture_rho(self.mixture.design_time(self.test_alpha), self.test_alpha)
        self.process = MeanDifferenceProcess(
            coefficients=self.coefficients,
            prior_mean=prior,
            prior_variance=variance,
            relative=self.ratio_scale,
        )

    def _coefficient(self, g: Guardrail) -> float:
        return 1.0 + self.sign * g.tolerance if self.ratio_scale else 1.0

    def _bound(self, g: Guardrail) -> float:
        if self.log_scale:
            return math.log1p(self.sign * g.tolerance)
        if self.ratio_scale:
            return 0.0
        return self.sign * g.tolerance

    def fold(self, cand: Bools, bp: Ints, values: Values, ats: Sequence[datetime]) -> None:
        """Fold observations in arrival order (booleans count as 0/1)."""
        keep, y = numeric(values)
        self.rejected += int((~keep).sum())
        if self.log_scale:
            y = np.log1p(np.maximum(y, 0.0))
        self.process.fold(candidate=cand[keep], share=bp[keep] / 10_000.0, values=y[keep])

    def verdict(self, g: Guardrail) -> Verdict:
        """Breach when the whole confidence sequence lies beyond the tolerance."""
        p = self.process
        c = self._coefficient(g)
        b = self._bound(g)
        worse_up = self.sign > 0
        ci = p.interval(
            c, alpha=self.test_alpha, rho=self.rho_h, mixture=self.mixture, worse_up=worse_up
        )
        log_e = p.log_e_value(c, null=b, mixture=self.mixture, worse_up=worse_up)
        mean_s, mean_c = p.arm_mean(0), p.arm_mean(1)
        change: float | None
        if self.log_scale and mean_s is not None and mean_c is not None:
            change = math.expm1(mean_c - mean_s)
        elif self.ratio_scale and mean_s and mean_c is not None:
            change = mean_c / mean_s - 1.0
        else:
            change = mean_c - mean_s if mean_s is not None and mean_c is not None else None
        evidence: dict[str, Any] = {
            "statistic": "mean",
            "scale": "log1p" if self.log_scale else "raw",
            "n_stable": p.count[0],
            "n_candidate": p.count[1],
            "mean_stable": mean_s,
            "mean_candidate": mean_c,
            "change": change,
            "contrast": f"mu_c - {c:g} * mu_s",
            "estimate": ci.estimate,
            "lower": ci.lower,
            "upper": ci.upper,
            "threshold": b,
            "e_value": e_from_log(log_e),
            "test_alpha": self.test_alpha,
        }
        enough = min(p.count) >= g.min_samples
        if ci.lower is None or ci.upper is None:
            return self._verdict(g, VerdictStatus.INSUFFICIENT_DATA, too_few(g, p.count), evidence)
        worse = ci.lower > b if self.sign > 0 else ci.upper < b
        better = ci.upper < b if self.sign > 0 else ci.lower > b
        tol = g.describe()
        relative = self.log_scale or self.ratio_scale
        shown = f"change {fmt(change, pct=relative)}"
        # The mean sequence is asymptotic (time-uniform CLT), so it may not act before
        # min_samples per arm, unlike the exact e-processes.
        if worse and enough:
            reason = (
                f"{g.name}: the candidate's mean {g.metric} {shown} is "
                f"beyond the tolerance ({tol}) with the whole confidence sequence "
                f"[{fmt(ci.lower)}, {fmt(ci.upper)}] past {fmt(b)}."
            )
            return self._verdict(g, VerdictStatus.BREACH, reason, evidence)
        if not enough:
            return self._verdict(g, VerdictStatus.INSUFFICIENT_DATA, too_few(g, p.count), evidence)
        reason = (
            f"{g.name}: mean {g.metric} {shown} is not established beyond "
            f"the tolerance ({tol}); confidence sequence [{fmt(ci.lower)}, {fmt(ci.upper)}]."
        )
        return self._verdict(g, VerdictStatus.PASS, reason, evidence, non_inferior=better)

    def state(self) -> dict[str, Any]:
        """Return the JSON-ready state."""
        return {"process": self.process.to_dict(), "rejected": self.rejected}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output."""
        self.process = MeanDifferenceProcess.from_dict(state["process"])
        self.rejected = int(state["rejected"])
