"""Absolute SLOs: the candidate alone against a fixed line, on a rate, quantile or mean."""

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
from policy_canary.stats import (
    BETTING_GRID,
    MAIN_WEIGHT,
    BettingMeanProcess,
    IndicatorProcess,
    OneSampleMeanProcess,
    mixture_rho,
)


class IndicatorSLOJudge(Judge):
    """SLO on a rate ("flag rate <= 0.5%") or a quantile ("p95 <= 8000 ms"), candidate only.

    A quantile SLO is the rate of the candidate's observations beyond the line: p95 <= 8000
    means at most 5% above 8000. Each distinct line (stages may tighten it) is its own
    indicator, so alpha is split between lines; a rate SLO counts one indicator and reads
    every stage's line from it at no cost (the e-value is monotone in the line).
    """

    def __init__(
        self, base: Guardrail, variants: Sequence[Guardrail], statistic: Statistic, setup: Setup
    ) -> None:
        self.base, self.setup, self.statistic = base, setup, statistic
        self.quantile = statistic.quantile
        if self.quantile is not None:
            # Exceedance beyond the line on the bad side must stay at most this often.
            level = 1.0 - self.quantile if base.worse is Direction.UP else self.quantile
            self.lines: tuple[float | None, ...] = tuple(sorted({v.tolerance for v in variants}))
            null_base, rate_up = level, True
            strictest_null = level
        else:
            self.lines = (None,)
            null_base, rate_up = base.tolerance, base.worse is Direction.UP
            nulls = [v.tolerance for v in variants]
            strictest_null = min(nulls) if rate_up else max(nulls)
        d = base.effective_detect
        p1 = min(null_base * (1.0 + d), 0.999) if rate_up else null_base * (1.0 - d)
        mid = math.sqrt(null_base * p1)
        self.rate_up = rate_up
        self.toward = ((p1, mid), (MAIN_WEIGHT, 1.0 - MAIN_WEIGHT))
        step = null_base / p1
        self.away = (
            tuple(strictest_null * step**k for k in (1.0, 0.5, 0.25)),
            (1.0 / 3.0,) * 3,
        )
        self.test_alpha = setup.alpha / len(self.lines)
        self.processes = {line: IndicatorProcess() for line in self.lines}

    def _null(self, g: Guardrail) -> float:
        if self.quantile is None:
            return g.tolerance
        return 1.0 - self.quantile if g.worse is Direction.UP else self.quantile

    def fold(self, cand: Bools, bp: Ints, values: Values, ats: Sequence[datetime]) -> None:
        """Fold the candidate's observations."""
        chosen = [v for v, c in zip(values, cand.tolist(), strict=True) if c]
        if self.quantile is None:
            ok = [v for v in chosen if isinstance(v, bool | int | float)]
            self.rejected += len(chosen) - len(ok)
            self.processes[None].fold(np.asarray([bool(v) for v in ok], dtype=bool))
            return
        ok_values = [
            float(v) for v in chosen if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        self.rejected += len(chosen) - len(ok_values)
        x = np.asarray(ok_values, dtype=np.float64)
        for line, process in self.processes.items():
            assert line is not None
            process.fold(x > line if self.base.worse is Direction.UP else x < line)

    def verdict(self, g: Guardrail) -> Verdict:
        """Breach when K >= 1/alpha for this stage's line."""
        line = g.tolerance if self.quantile is not None else None
        p = self.processes[line]
        null = self._null(g)
        alpha = self.test_alpha
        alts, weights = self.toward
        log_k = p.log_e_value(null_rate=null, alternatives=alts, weights=weights)
        log_ni = p.log_e_value(null_rate=null, alternatives=self.away[0], weights=self.away[1])
        rate = p.bad / p.count if p.count else None
        up = self.rate_up
        evidence: dict[str, Any] = {
            "statistic": self.statistic.value,
            "n_candidate": p.count,
            "hits_candidate": p.bad,
            "rate_candidate": rate,
            "null_rate": null,
            "rate_lower": p.confidence_bound(
                alpha=alpha,
                alternatives=alts if up else self.away[0],
                weights=weights if up else self.away[1],
                upper=False,
            ),
            "rate_upper": p.confidence_bound(
                alpha=alpha,
                alternatives=self.away[0] if up else alts,
                weights=self.away[1] if up else weights,
                upper=True,
            ),
            "e_value": e_from_log(log_k),
            "e_value_non_inferiority": e_from_log(log_ni),
            "e_value_threshold": 1.0 / alpha,
            "test_alpha": alpha,
        }
        if line is not None:
            evidence["line"] = line
        what = (
            f"share of {g.metric} {'above' if g.worse is Direction.UP else 'below'} {line:g}"
            if line is not None
            else f"{g.metric} rate"
        )
        if log_k >= math.log(1.0 / alpha):
            reason = (
                f"{g.name}: {what} is {fmt(rate, pct=True)} on the candidate; e-value "
                f"{fmt(e_from_log(log_k))} >= {fmt(1 / alpha)} establishes it breaks the SLO "
                f"({fmt(null, pct=True)} {'at most' if up else 'at least'})."
            )
            return self._verdict(g, VerdictStatus.BREACH, reason, evidence)
        if p.count < g.min_samples:
            return self._verdict(
                g,
                VerdictStatus.INSUFFICIENT_DATA,
                too_few(g, [0, p.count], per_arm=False),
                evidence,
            )
        reason = (
            f"{g.name}: {what} {fmt(rate, pct=True)} after {p.count} candidate observations "
            f"does not establish a breach of the SLO ({g.describe()})."
        )
        limit = math.log(1.0 / alpha)
        return self._verdict(g, VerdictStatus.PASS, reason, evidence, non_inferior=log_ni >= limit)

    def state(self) -> dict[str, Any]:
        """Return the JSON-ready state."""
        return {
            "processes": [[line, p.to_dict()] for line, p in self.processes.items()],
            "rejected": self.rejected,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output."""
        self.processes = {
            (None if line is None else float(line)): IndicatorProcess.from_dict(data)
            for line, data in state["processes"]
        }
        self.rejected = int(state["rejected"])


class MeanSLOJudge(Judge):
    """SLO on a mean ("mean cost <= 0.04"): betting e-process, candidate only.

    Breach uses the exact betting e-process (needs only the metric's lower bound for ``max``,
    upper bound for ``min``); non-inferiority uses a one-sample normal-mixture confidence
    sequence. Each stage's line has its own wealth, but the wealth is monotone in the line, so
    tightening a line spends no extra alpha.
    """

    def __init__(
        self, base: Guardrail, variants: Sequence[Guardrail], statistic: Statistic, setup: Setup
    ) -> None:
        self.base, self.setup, self.statistic = base, setup, statistic
        self.up = base.worse is Direction.UP
        lower, upper = base.support
        bound = lower if self.up else upper
        lines = tuple(sorted({v.tolerance for v in variants}))
        fractions = tuple(min(0.95, base.effective_detect * g) for g in BETTING_GRID)
        self.betting = BettingMeanProcess(
            thresholds=lines, fractions=fractions, upper=self.up, bound=bound
        )
        self.sums = OneSampleMeanProcess()
        snapshot = setup.baseline.get(base.metric)
        variance = snapshot.variance if snapshot is not None and snapshot.variance else None
        variance = variance or max(base.tolerance**2, 1e-12)
        # Tightest where a breach of `detect` beyond the line would be caught: after
        # n = 2 ln(1/alpha) variance / delta^2 observations, at V = n variance.
        delta = abs(base.effective_detect * base.tolerance) or math.sqrt(variance)
        design_time = 2.0 * math.log(1.0 / setup.alpha) * variance * variance / (delta * delta)
        self.rho_h = mixture_rho(design_time, setup.alpha)

    def fold(self, cand: Bools, bp: Ints, values: Values, ats: Sequence[datetime]) -> None:
        """Fold the candidate's observations (booleans count as 0/1)."""
        keep, y = numeric(values)
        self.rejected += int((~keep).sum())
        x = y[keep & cand]
        self.betting.fold(x)
        self.sums.fold(x)

    def verdict(self, g: Guardrail) -> Verdict:
        """Breach when the betting e-value for this stage's line reaches 1/alpha."""
        alpha = self.setup.alpha
        log_k = self.betting.log_e_value(g.tolerance)
        ci = self.sums.interval(alpha=alpha, rho=self.rho_h)
        evidence: dict[str, Any] = {
            "statistic": "mean",
            "n_candidate": self.sums.count,
            "mean_candidate": ci.estimate,
            "lower": ci.lower,
            "upper": ci.upper,
            "line": g.tolerance,
            "e_value": e_from_log(log_k),
            "e_value_threshold": 1.0 / alpha,
        }
        if log_k >= math.log(1.0 / alpha):
            reason = (
                f"{g.name}: the candidate's mean {g.metric} is {fmt(ci.estimate)}; e-value "
                f"{fmt(e_from_log(log_k))} >= {fmt(1 / alpha)} establishes it breaks the SLO "
                f"({g.describe()})."
            )
            return self._verdict(g, VerdictStatus.BREACH, reason, evidence)
        if self.sums.count < g.min_samples or ci.lower is None or ci.upper is None:
            counts = [0, self.sums.count]
            return self._verdict(
                g, VerdictStatus.INSUFFICIENT_DATA, too_few(g, counts, per_arm=False), evidence
            )
        better = ci.upper < g.tolerance if self.up else ci.lower > g.tolerance
        reason = (
            f"{g.name}: the candidate's mean {g.metric} {fmt(ci.estimate)} after "
            f"{self.sums.count} observations does not establish a breach of the SLO "
            f"({g.describe()})."
        )
        return self._verdict(g, VerdictStatus.PASS, reason, evidence, non_inferior=better)

    def state(self) -> dict[str, Any]:
        """Return the JSON-ready state."""
        return {
            "betting": self.betting.to_dict(),
            "sums": self.sums.to_dict(),
            "rejected": self.rejected,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output."""
        self.betting = BettingMeanProcess.from_dict(state["betting"])
        self.sums = OneSampleMeanProcess.from_dict(state["sums"])
        self.rejected = int(state["rejected"])
