"""Judges: one sequential test per guardrail, turned into a verdict with evidence.

Private to :mod:`policy_canary.monitors`. Each judge folds one guardrail's observations (arm,
share, value), keeps a JSON-ready state, and judges it against a stage's version of the
guardrail. The reason sentences live here, in one place, so alerts and incidents stay
consistent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .guardrails import Direction, Guardrail, GuardrailKind, Statistic
from .stats import (
    BETTING_GRID,
    MAIN_WEIGHT,
    BettingMeanProcess,
    ConditionalRateProcess,
    IndicatorProcess,
    MeanDifferenceProcess,
    OneSampleMeanProcess,
    RateMixture,
    bernoulli_upper_bound,
    mixture_rho,
)
from .verdict import Verdict, VerdictStatus

if TYPE_CHECKING:
    from .monitors import Baseline

Bools = NDArray[np.bool_]
Ints = NDArray[np.int64]
#: Observations of one metric: a list from events, or a float array (fast path).
Values = Sequence[Any] | NDArray[np.float64]

_MAX_LOG = 700.0  # exp() of more overflows a float; such e-values are "astronomically large"


@dataclass(frozen=True, slots=True)
class Setup:
    """What every judge needs besides its guardrail: its alpha share and the sizing inputs."""

    alpha: float
    baseline: Baseline
    design_samples: int
    design_share: float


def _fmt(value: float | None, *, pct: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.3g}%" if pct else f"{value:.4g}"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _e(log_value: float) -> float:
    return math.exp(min(log_value, _MAX_LOG))


def _too_few(g: Guardrail, counts: Sequence[int], *, per_arm: bool = True) -> str:
    if not per_arm:
        return (
            f"{g.name}: {counts[1]} candidate observations so far; {g.min_samples} are needed "
            "before it can pass."
        )
    return (
        f"{g.name}: {counts[1]} candidate and {counts[0]} stable observations so far; "
        f"{g.min_samples} per arm are needed before it can pass."
    )


class Judge:
    """Base class of the per-guardrail tests."""

    base: Guardrail
    setup: Setup
    rejected: int = 0

    def fold(self, cand: Bools, bp: Ints, values: Values, ats: Sequence[datetime]) -> None:
        """Fold observations in arrival order."""
        raise NotImplementedError

    def verdict(self, g: Guardrail) -> Verdict:
        """Judge the evidence against ``g``, the stage's version of the base guardrail."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """Return the JSON-ready state (the configuration is rebuilt from the plan)."""
        raise NotImplementedError

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output."""
        raise NotImplementedError

    def _verdict(
        self,
        g: Guardrail,
        status: VerdictStatus,
        reason: str,
        evidence: Mapping[str, Any],
        *,
        non_inferior: bool = False,
        tripwire: bool = False,
    ) -> Verdict:
        full = {"kind": g.kind.value, "alpha": self.setup.alpha, **evidence}
        if self.rejected:
            full["rejected_values"] = self.rejected
        return Verdict(
            guardrail=g.name,
            metric=g.metric,
            status=status,
            action=g.action,
            reason=reason,
            evidence=full,
            non_inferior=non_inferior and status is VerdictStatus.PASS,
            tripwire=tripwire,
        )


def _numbers(values: Sequence[Any] | NDArray[np.float64]) -> tuple[Bools, NDArray[np.float64]]:
    """Keep numeric (or boolean-as-0/1) values; return the keep mask and the floats."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        # Already validated floats (the benchmark's fast path): nothing to filter.
        return np.ones(values.size, dtype=bool), values.astype(np.float64)
    keep = np.asarray([isinstance(v, int | float) for v in values], dtype=bool)
    floats = np.asarray([float(v) if k else 0.0 for v, k in zip(values, keep, strict=True)])
    return keep, floats.astype(np.float64)


# --- relative rates and quantile exceedances -----------------------------------------------


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


# --- relative means (and absolute deltas) ---------------------------------------------------


class MeanJudge(Judge):
    """Difference of means against the concurrent baseline: normal-mixture CS on AIPW terms.

    Latency with a relative tolerance is compared on ln(1 + ms), where a +10% tolerance is an
    absolute shift of ln(1.1). Other relative tolerances compare mu_c with (1 +/- t) mu_s, one
    confidence sequence per distinct tolerance with alpha split between them. ``max_delta``
    compares mu_c - mu_s with the delta.
    """

    def __init__(
        self, base: Guardrail, variants: Sequence[Guardrail], statistic: Statistic, setup: Setup
    ) -> None:
        self.base, self.setup, self.statistic = base, setup, statistic
        self.sign = 1.0 if base.worse is Direction.UP else -1.0
        relative = base.tolerance_field in ("max_increase", "max_decrease")
        self.log_scale = relative and base.metric == "latency_ms"
        self.ratio_scale = relative and not self.log_scale
        self.coefficients = tuple(sorted({self._coefficient(v) for v in variants}))
        self.test_alpha = setup.alpha / len(self.coefficients)
        snapshot = setup.baseline.get(base.metric)
        prior, variance = 0.0, None
        if snapshot is not None:
            prior = (snapshot.log_mean if self.log_scale else snapshot.mean) or 0.0
            variance = snapshot.log_variance if self.log_scale else snapshot.variance
        if not variance:
            variance = 0.25 if base.is_boolean or base.metric == "quality" else max(prior**2, 1.0)
        rho = setup.design_share
        self.rho_h = {
            c: mixture_rho(
                setup.design_samples / rho * variance * (1.0 / rho + c * c / (1.0 - rho)),
                self.test_alpha,
            )
            for c in self.coefficients
        }
        self.process = MeanDifferenceProcess(coefficients=self.coefficients, prior_mean=prior)

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
        keep, y = _numbers(values)
        self.rejected += int((~keep).sum())
        if self.log_scale:
            y = np.log1p(np.maximum(y, 0.0))
        self.process.fold(candidate=cand[keep], share=bp[keep] / 10_000.0, values=y[keep])

    def verdict(self, g: Guardrail) -> Verdict:
        """Breach when the whole confidence sequence lies beyond the tolerance."""
        p = self.process
        c = self._coefficient(g)
        b = self._bound(g)
        ci = p.interval(c, alpha=self.test_alpha, rho=self.rho_h[c])
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
            "test_alpha": self.test_alpha,
        }
        enough = min(p.count) >= g.min_samples
        if ci.lower is None or ci.upper is None:
            return self._verdict(g, VerdictStatus.INSUFFICIENT_DATA, _too_few(g, p.count), evidence)
        worse = ci.lower > b if self.sign > 0 else ci.upper < b
        better = ci.upper < b if self.sign > 0 else ci.lower > b
        tol = g.describe()
        relative = self.log_scale or self.ratio_scale
        shown = f"change {_fmt(change, pct=relative)}"
        # The mean sequence is asymptotic (time-uniform CLT), so it may not act before
        # min_samples per arm, unlike the exact e-processes.
        if worse and enough:
            reason = (
                f"{g.name}: the candidate's mean {g.metric} {shown} is "
                f"beyond the tolerance ({tol}) with the whole confidence sequence "
                f"[{_fmt(ci.lower)}, {_fmt(ci.upper)}] past {_fmt(b)}."
            )
            return self._verdict(g, VerdictStatus.BREACH, reason, evidence)
        if not enough:
            return self._verdict(g, VerdictStatus.INSUFFICIENT_DATA, _too_few(g, p.count), evidence)
        reason = (
            f"{g.name}: mean {g.metric} {shown} is not established beyond "
            f"the tolerance ({tol}); confidence sequence [{_fmt(ci.lower)}, {_fmt(ci.upper)}]."
        )
        return self._verdict(g, VerdictStatus.PASS, reason, evidence, non_inferior=better)

    def state(self) -> dict[str, Any]:
        """Return the JSON-ready state."""
        return {"process": self.process.to_dict(), "rejected": self.rejected}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output."""
        self.process = MeanDifferenceProcess.from_dict(state["process"])
        self.rejected = int(state["rejected"])


# --- absolute SLOs ------------------------------------------------------------------------


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
            "e_value": _e(log_k),
            "e_value_non_inferiority": _e(log_ni),
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
                f"{g.name}: {what} is {_fmt(rate, pct=True)} on the candidate; e-value "
                f"{_fmt(_e(log_k))} >= {_fmt(1 / alpha)} establishes it breaks the SLO "
                f"({_fmt(null, pct=True)} {'at most' if up else 'at least'})."
            )
            return self._verdict(g, VerdictStatus.BREACH, reason, evidence)
        if p.count < g.min_samples:
            return self._verdict(
                g,
                VerdictStatus.INSUFFICIENT_DATA,
                _too_few(g, [0, p.count], per_arm=False),
                evidence,
            )
        reason = (
            f"{g.name}: {what} {_fmt(rate, pct=True)} after {p.count} candidate observations "
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
        scale = variance or max(base.tolerance**2, 1e-12)
        self.rho_h = mixture_rho(setup.design_samples * scale, setup.alpha)

    def fold(self, cand: Bools, bp: Ints, values: Values, ats: Sequence[datetime]) -> None:
        """Fold the candidate's observations (booleans count as 0/1)."""
        keep, y = _numbers(values)
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
            "e_value": _e(log_k),
            "e_value_threshold": 1.0 / alpha,
        }
        if log_k >= math.log(1.0 / alpha):
            reason = (
                f"{g.name}: the candidate's mean {g.metric} is {_fmt(ci.estimate)}; e-value "
                f"{_fmt(_e(log_k))} >= {_fmt(1 / alpha)} establishes it breaks the SLO "
                f"({g.describe()})."
            )
            return self._verdict(g, VerdictStatus.BREACH, reason, evidence)
        if self.sums.count < g.min_samples or ci.lower is None or ci.upper is None:
            counts = [0, self.sums.count]
            return self._verdict(
                g, VerdictStatus.INSUFFICIENT_DATA, _too_few(g, counts, per_arm=False), evidence
            )
        better = ci.upper < g.tolerance if self.up else ci.lower > g.tolerance
        reason = (
            f"{g.name}: the candidate's mean {g.metric} {_fmt(ci.estimate)} after "
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


# --- tripwires ------------------------------------------------------------------------------


class TripwireJudge(Judge):
    """A candidate event carrying a listed safety flag breaches at once, with no statistics."""

    def __init__(self, base: Guardrail, setup: Setup) -> None:
        self.base, self.setup = base, setup
        self.count = 0
        self.first_at: str | None = None
        self.seen: set[str] = set()

    def fold(self, cand: Bools, bp: Ints, values: Values, ats: Sequence[datetime]) -> None:
        """Count candidate events whose flags intersect the tripwire's."""
        for is_cand, flags, at in zip(cand.tolist(), values, ats, strict=True):
            if is_cand and flags:
                self.count += 1
                self.seen.update(flags)
                if self.first_at is None:
                    self.first_at = at.isoformat()

    def verdict(self, g: Guardrail) -> Verdict:
        """Breach once any candidate event tripped it; otherwise pass."""
        evidence = {
            "flags": sorted(self.seen),
            "events": self.count,
            "first_at": self.first_at,
            "watched": list(g.flags),
        }
        if self.count:
            reason = (
                f"{g.name}: the candidate served {self.count} request(s) flagged "
                f"{', '.join(sorted(self.seen))} (first at {self.first_at}); tripwires act at once."
            )
            return self._verdict(g, VerdictStatus.BREACH, reason, evidence, tripwire=True)
        reason = f"{g.name}: no candidate request carried {', '.join(g.flags)}."
        return self._verdict(
            g, VerdictStatus.PASS, reason, evidence, non_inferior=True, tripwire=True
        )

    def state(self) -> dict[str, Any]:
        """Return the JSON-ready state."""
        return {"count": self.count, "first_at": self.first_at, "seen": sorted(self.seen)}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output."""
        self.count = int(state["count"])
        self.first_at = state["first_at"]
        self.seen = set(state["seen"])


def build_judge(
    base: Guardrail, variants: Sequence[Guardrail], statistic: Statistic | None, setup: Setup
) -> Judge:
    """Pick the test for a guardrail (``statistic`` already resolved, ``None`` for tripwires)."""
    if base.kind is GuardrailKind.TRIPWIRE or statistic is None:
        return TripwireJudge(base, setup)
    if base.kind is GuardrailKind.SLO:
        if statistic is Statistic.MEAN:
            return MeanSLOJudge(base, variants, statistic, setup)
        return IndicatorSLOJudge(base, variants, statistic, setup)
    if base.tolerance_field == "max_delta" or statistic is Statistic.MEAN:
        return MeanJudge(base, variants, statistic, setup)
    return RateJudge(base, variants, statistic, setup)
