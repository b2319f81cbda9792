"""Absolute SLOs: one-sample e-processes on the candidate's own observations.

Indicators ("safety-flag rate <= 0.5%", "p95 <= 8000 ms" read as "at most 5% of requests above
8000 ms"): K = prod (p1/p)^Y ((1 - p1)/(1 - p))^(1 - Y), Wald's likelihood ratio mixed over a
couple of fixed alternatives p1. Bounded or non-negative values ("mean cost <= 0.04"): the
betting e-process K = prod (1 + lambda (X - m)) with lambda = c / (m - lo), which needs only a
lower bound ``lo`` on X (0 for latency and cost), mixed over a small grid of c.

Both are non-negative supermartingales under the null, so "breach when K >= 1/alpha" has false
alarm probability <= alpha at any stopping time (Ville). Both are also monotone in the
threshold (see ``docs/statistics.md``), which is why a stage may tighten a threshold without
spending extra budget.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from policy_canary.stats.edges import rejection_edge

__all__ = [
    "BETTING_GRID",
    "UPPER_BOUND_FRACTIONS",
    "BettingMeanProcess",
    "IndicatorProcess",
    "bernoulli_log_evalue",
    "bernoulli_upper_bound",
    "relative_bernoulli_log_evalue",
]

#: Alternatives of the one-sample upper confidence bound, as fractions c of the null rate m
#: (alternative c*m): c = 0 is "no bad events at all" and is what a clean record earns
#: fastest; the others keep power when a few bad events occur. Equal weights.
UPPER_BOUND_FRACTIONS = (0.0, 0.5, 0.75, 0.875)

_LOG_TWO = math.log(2.0)


def bernoulli_log_evalue(
    n_bad: float,
    n_good: float,
    *,
    null_rate: float,
    alternatives: Sequence[float],
    weights: Sequence[float],
) -> float:
    """Return ln of the mixture likelihood ratio of Bernoulli alternatives against ``null_rate``."""
    if not 0.0 < null_rate < 1.0:
        raise ValueError(f"the null rate must lie in (0, 1); got {null_rate}")
    parts = [
        math.log(w)
        + n_bad * math.log(p1 / null_rate)
        + n_good * math.log((1 - p1) / (1 - null_rate))
        for p1, w in zip(alternatives, weights, strict=True)
    ]
    return float(np.logaddexp.reduce(np.asarray(parts)))


def relative_bernoulli_log_evalue(
    n_bad: float,
    n_good: float,
    *,
    null_rate: float,
    fractions: Sequence[float] = UPPER_BOUND_FRACTIONS,
) -> float:
    """Return ln K for the null "rate >= ``null_rate``" against alternatives ``c * null_rate``.

    Equal-weight mixture of the likelihood ratios of Bernoulli(c m) against Bernoulli(m), c in
    ``fractions`` (each in [0, 1)). Under any rate >= m every component is a non-negative
    supermartingale, so K >= 1/alpha rejects the null at level alpha at any stopping time. ln K
    rises with m (each component does), so the rates rejected form an interval [bound, 1).
    """
    if not 0.0 < null_rate < 1.0:
        raise ValueError(f"the null rate must lie in (0, 1); got {null_rate}")
    if not fractions or any(not 0.0 <= c < 1.0 for c in fractions):
        raise ValueError("fractions must be a non-empty sequence in [0, 1)")
    log_w = -math.log(len(fractions))
    parts = []
    for c in fractions:
        p1 = c * null_rate
        if p1 == 0.0:
            # Alternative "never bad": the ratio is 0 after any bad event.
            if n_bad > 0:
                continue
            parts.append(log_w - n_good * math.log1p(-null_rate))
            continue
        parts.append(
            log_w + n_bad * math.log(c) + n_good * (math.log1p(-p1) - math.log1p(-null_rate))
        )
    if not parts:
        return -math.inf
    # numpy's logaddexp.reduce folds left to right with these branches (npy_logaddexp), so
    # plain floats give its value without an array per call (the bound bisects ~35 times).
    total = parts[0]
    for part in parts[1:]:
        if total == part:
            total = total + _LOG_TWO
        else:
            tmp = total - part
            if tmp > 0:
                total = total + math.log1p(math.exp(-tmp))
            elif tmp <= 0:
                total = part + math.log1p(math.exp(tmp))
            else:
                total = tmp  # nan
    return total


def bernoulli_upper_bound(
    n_bad: int,
    n: int,
    *,
    alpha: float,
    fractions: Sequence[float] = UPPER_BOUND_FRACTIONS,
) -> float | None:
    """Anytime-valid upper confidence bound on a Bernoulli rate from ``n_bad`` of ``n``.

    The smallest rate m whose null "rate >= m" the :func:`relative_bernoulli_log_evalue` test
    rejects at level ``alpha`` (to 1e-9 relative precision, rounded up). With probability
    >= 1 - alpha the bound stays above the true rate at every n simultaneously. ``None`` when
    no rate below 1 is rejected yet (for instance, before any observation).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
    if isinstance(fractions, tuple):
        return _remembered_upper_bound(n_bad, n, alpha, fractions)
    return _upper_bound(n_bad, n, alpha, fractions)


@functools.lru_cache(maxsize=4096, typed=True)
def _remembered_upper_bound(
    n_bad: int, n: int, alpha: float, fractions: tuple[float, ...]
) -> float | None:
    """:func:`_upper_bound`, remembered: a rate judge asks for the same counts on every tick
    that brought its arm no new observation, and each answer costs ~35 evaluations."""
    return _upper_bound(n_bad, n, alpha, fractions)


def _upper_bound(n_bad: int, n: int, alpha: float, fractions: Sequence[float]) -> float | None:
    """:func:`bernoulli_upper_bound` once its alpha is checked."""
    if n <= 0 or n_bad >= n:
        return None
    threshold = math.log(1.0 / alpha)
    n_good = n - n_bad

    def rejected(rate: float) -> bool:
        value = relative_bernoulli_log_evalue(n_bad, n_good, null_rate=rate, fractions=fractions)
        return value >= threshold

    low, high = 1e-12, 1.0 - 1e-12
    if not rejected(high):
        return None
    if rejected(low):
        return low
    # Bisect on the log scale: rates span many orders of magnitude.
    for _ in range(80):
        middle = math.sqrt(low * high)
        if rejected(middle):
            high = middle
        else:
            low = middle
        if high / low < 1.0 + 1e-9:
            break
    return high


@dataclass(slots=True)
class IndicatorProcess:
    """Counts of candidate observations and of those that were bad (above the SLO's line)."""

    count: int = 0
    bad: int = 0

    def fold(self, bad: ArrayLike) -> None:
        """Fold a batch of bad flags."""
        flags = np.asarray(bad, dtype=bool)
        self.count += int(flags.size)
        self.bad += int(flags.sum())

    def log_e_value(
        self, *, null_rate: float, alternatives: Sequence[float], weights: Sequence[float]
    ) -> float:
        """Return ln K for the null "rate is on the safe side of ``null_rate``"."""
        return bernoulli_log_evalue(
            self.bad,
            self.count - self.bad,
            null_rate=null_rate,
            alternatives=alternatives,
            weights=weights,
        )

    def confidence_bound(
        self,
        *,
        alpha: float,
        alternatives: Sequence[float],
        weights: Sequence[float],
        upper: bool,
    ) -> float | None:
        """Return the edge of the rates rejected by tests against ``alternatives``.

        Alternatives above the rates of interest (``upper=False``) give a lower bound,
        alternatives below (``upper=True``) an upper bound; ``None`` when nothing is rejected.
        """
        threshold = math.log(1.0 / alpha)
        if self.count == 0:
            return None
        near = max(alternatives) if upper else min(alternatives)
        far = 1.0 - 1e-9 if upper else 1e-9

        def rejected(rate: float) -> bool:
            value = self.log_e_value(null_rate=rate, alternatives=alternatives, weights=weights)
            return value >= threshold

        return rejection_edge(rejected, near, far)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"count": self.count, "bad": self.bad}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IndicatorProcess:
        """Rebuild the state from :meth:`to_dict` output."""
        return cls(count=int(data["count"]), bad=int(data["bad"]))


#: Betting fractions c (lambda = c / (m - lo)), as multiples of the guardrail's ``detect``.
BETTING_GRID = (1.0, 0.5, 0.25)


@dataclass(slots=True)
class BettingMeanProcess:
    """Betting e-processes for "mean <= m" (``upper=True``) or "mean >= m", one per threshold.

    ``bound`` is the side of the support the bet needs: a lower bound on X for ``upper`` tests
    (0 for latency or cost), an upper bound otherwise (1 for a quality score). Wealth is kept
    per threshold and per betting fraction, so every stage's threshold runs from the start.
    """

    thresholds: tuple[float, ...]
    fractions: tuple[float, ...]
    upper: bool = True
    bound: float = 0.0
    count: int = 0
    log_wealth: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for m in self.thresholds:
            if (self.upper and m <= self.bound) or (not self.upper and m >= self.bound):
                raise ValueError(f"threshold {m} must lie strictly inside the bound {self.bound}")
        if any(not 0.0 < c < 1.0 for c in self.fractions):
            raise ValueError("betting fractions must lie in (0, 1)")
        if not self.log_wealth:
            self.log_wealth = [[0.0] * len(self.fractions) for _ in self.thresholds]

    def fold(self, values: ArrayLike) -> None:
        """Fold a batch of observations (clipped to the declared bound)."""
        x = np.asarray(values, dtype=np.float64)
        if x.size == 0:
            return
        x = np.maximum(x, self.bound) if self.upper else np.minimum(x, self.bound)
        self.count += int(x.size)
        for i, m in enumerate(self.thresholds):
            # (X - m) / (m - lo) >= -1 for an upper test, so every factor stays positive.
            scaled = (x - m) / (m - self.bound) if self.upper else (m - x) / (self.bound - m)
            for j, c in enumerate(self.fractions):
                self.log_wealth[i][j] += float(np.log1p(c * scaled).sum())

    def log_e_value(self, threshold: float) -> float:
        """Return ln K (equal-weight mixture over the betting fractions) for one threshold."""
        row = self.log_wealth[self.thresholds.index(threshold)]
        return float(np.logaddexp.reduce(np.asarray(row)) - math.log(len(row)))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "thresholds": list(self.thresholds),
            "fractions": list(self.fractions),
            "upper": self.upper,
            "bound": self.bound,
            "count": self.count,
            "log_wealth": [list(row) for row in self.log_wealth],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BettingMeanProcess:
        """Rebuild the state from :meth:`to_dict` output."""
        return cls(
            thresholds=tuple(float(m) for m in data["thresholds"]),
            fractions=tuple(float(c) for c in data["fractions"]),
            upper=bool(data["upper"]),
            bound=float(data["bound"]),
            count=int(data["count"]),
            log_wealth=[[float(v) for v in row] for row in data["log_wealth"]],
        )
