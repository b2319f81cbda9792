"""Means: normal-mixture confidence sequences, one- and two-sample.

Two-sample (candidate against the concurrent baseline). Each observation i, served by the
candidate with probability rho_i, yields the augmented inverse-probability-weighted term

    phi_i = [A_i (Y_i - m_c) / rho_i + m_c] - c [(1 - A_i)(Y_i - m_s) / (1 - rho_i) + m_s]

with m_c, m_s the running arm means *before* observation i. Its conditional mean is
mu_c - c mu_s whatever the share or a drift shared by both arms, so the normal-mixture boundary
of Howard et al. (2021), with the empirical variance as in the time-uniform CLT of
Waudby-Smith et al., gives an (asymptotically) anytime-valid confidence sequence for
D(c) = mu_c - c mu_s:

    |S_t - t D| <= sqrt((V_t + rho) (ln(1 + V_t / rho) + 2 ln(1 / alpha))).

Running means are updated observation by observation (vectorised with exclusive cumulative
sums), so folding a batch at once or in pieces gives the same state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import log_ndtr

__all__ = [
    "ConfidenceInterval",
    "MeanDifferenceProcess",
    "OneSampleMeanProcess",
    "mixture_rho",
    "normal_mixture_radius",
    "one_sided_normal_mixture_radius",
]


_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def mixture_rho(intrinsic_time: float, alpha: float) -> float:
    """Return the mixture parameter that makes the boundary tightest at ``intrinsic_time``.

    Intrinsic time is the variance sum V the test is expected to reach; following Howard et al.
    (2021), rho = V / (-2 ln alpha + ln(-2 ln alpha + 1)). It tunes tightness, not validity.
    """
    if intrinsic_time <= 0.0:
        raise ValueError(f"intrinsic time must be positive; got {intrinsic_time}")
    two_log = -2.0 * math.log(alpha)
    return intrinsic_time / (two_log + math.log(two_log + 1.0))


def normal_mixture_radius(
    variance_sum: ArrayLike, *, rho: float, alpha: float
) -> NDArray[np.float64]:
    """Return sqrt((V + rho)(ln(1 + V/rho) + 2 ln(1/alpha))), the bound on |S_t - t D|."""
    v = np.maximum(np.asarray(variance_sum, dtype=np.float64), 0.0)
    return np.asarray(
        np.sqrt((v + rho) * (np.log1p(v / rho) + 2.0 * math.log(1.0 / alpha))), dtype=np.float64
    )


def one_sided_normal_mixture_radius(
    variance_sum: ArrayLike, *, rho: float, alpha: float
) -> NDArray[np.float64]:
    """Return the one-sided boundary b: P(exists t: S_t - t D >= b(V_t)) <= alpha.

    It mixes exp(lambda S - lambda^2 V / 2) over lambda >= 0 with a half-normal prior of
    precision rho, which gives M = 2 sqrt(rho/(V + rho)) exp(z^2/2) Phi(z) for
    z = S / sqrt(V + rho); b is where M = 1/alpha. About the two-sided boundary at 2 alpha,
    so one-sided decisions are ~10-15% quicker than with the two-sided formula.
    """
    v = np.maximum(np.asarray(variance_sum, dtype=np.float64), 0.0)
    target = math.log(1.0 / alpha) - math.log(2.0) - 0.5 * np.log(rho / (v + rho))
    # Newton on g(z) = z^2/2 + ln Phi(z) - target, convex and increasing for z > 0, started
    # right of the root at the two-sided z (where M > 1/alpha): the iterates fall monotonically.
    z = np.sqrt(np.log1p(v / rho) + 2.0 * math.log(1.0 / alpha))
    for _ in range(12):
        log_cdf = log_ndtr(z)
        slope = z + np.exp(-0.5 * z * z - _HALF_LOG_TWO_PI - log_cdf)
        z = z - (0.5 * z * z + log_cdf - target) / slope
    return np.asarray(z * np.sqrt(v + rho), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class ConfidenceInterval:
    """An estimate with anytime-valid lower and upper bounds (``None`` before any data).

    Each bound is one-sided at the requested alpha: a breach reads one side, non-inferiority
    the other, and each is a separate error with its own budget.
    """

    estimate: float | None
    lower: float | None
    upper: float | None
    count: int


def _exclusive_running_mean(
    values: NDArray[np.float64],
    mask: NDArray[np.bool_],
    *,
    prior_sum: float,
    prior_count: float,
) -> NDArray[np.float64]:
    """Mean of the masked values strictly before each position, seeded by a prior."""
    masked = np.where(mask, values, 0.0)
    sums = np.cumsum(masked) - masked
    counts = np.cumsum(mask, dtype=np.float64) - mask
    return (prior_sum + sums) / (prior_count + counts)


@dataclass(slots=True)
class MeanDifferenceProcess:
    """Sufficient statistics for confidence sequences on D(c) = mu_c - c mu_s, several c at once.

    ``prior_mean`` seeds both arms' running means (the frozen baseline mean is a good choice;
    it only affects efficiency, never validity) with the weight of one observation.
    """

    coefficients: tuple[float, ...] = (1.0,)
    prior_mean: float = 0.0
    count: list[int] = field(default_factory=lambda: [0, 0])
    total: list[float] = field(default_factory=lambda: [0.0, 0.0])
    total_sq: list[float] = field(default_factory=lambda: [0.0, 0.0])
    pairs: int = 0
    phi_sum: list[float] = field(default_factory=list)
    phi_sq: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.phi_sum:
            self.phi_sum = [0.0] * len(self.coefficients)
            self.phi_sq = [0.0] * len(self.coefficients)

    def fold(self, *, candidate: ArrayLike, share: ArrayLike, values: ArrayLike) -> None:
        """Fold observations in arrival order: arm flags, candidate shares in [0, 1], values."""
        is_cand = np.asarray(candidate, dtype=bool)
        rho = np.asarray(share, dtype=np.float64)
        y = np.asarray(values, dtype=np.float64)
        if y.size == 0:
            return
        m_c = _exclusive_running_mean(
            y, is_cand, prior_sum=self.prior_mean + self.total[1], prior_count=1.0 + self.count[1]
        )
        m_s = _exclusive_running_mean(
            y, ~is_cand, prior_sum=self.prior_mean + self.total[0], prior_count=1.0 + self.count[0]
        )
        # Shares of exactly 0 or 1 say nothing about the difference between arms.
        usable = (rho > 0.0) & (rho < 1.0)
        if usable.any():
            a = is_cand[usable]
            r = rho[usable]
            yy = y[usable]
            mc = m_c[usable]
            ms = m_s[usable]
            cand_part = np.where(a, (yy - mc) / r, 0.0) + mc
            stable_part = np.where(a, 0.0, (yy - ms) / (1.0 - r)) + ms
            for i, c in enumerate(self.coefficients):
                phi = cand_part - c * stable_part
                self.phi_sum[i] += float(phi.sum())
                self.phi_sq[i] += float((phi * phi).sum())
            self.pairs += int(usable.sum())
        for arm, mask in ((0, ~is_cand), (1, is_cand)):
            self.count[arm] += int(mask.sum())
            self.total[arm] += float(y[mask].sum())
            self.total_sq[arm] += float((y[mask] ** 2).sum())

    def arm_mean(self, arm: int) -> float | None:
        """Return the plain mean of arm 0 (stable) or 1 (candidate)."""
        return self.total[arm] / self.count[arm] if self.count[arm] else None

    def arm_variance(self, arm: int) -> float | None:
        """Return the sample variance of an arm (``None`` with fewer than two observations)."""
        n = self.count[arm]
        if n < 2:
            return None
        mean = self.total[arm] / n
        return max(self.total_sq[arm] / n - mean * mean, 0.0) * n / (n - 1)

    def interval(self, coefficient: float, *, alpha: float, rho: float) -> ConfidenceInterval:
        """Return the one-sided confidence bounds for D(coefficient), each at ``alpha``, now."""
        i = self.coefficients.index(coefficient)
        t = self.pairs
        if t == 0:
            return ConfidenceInterval(None, None, None, 0)
        s, q = self.phi_sum[i], self.phi_sq[i]
        variance_sum = max(q - s * s / t, 0.0)
        radius = float(one_sided_normal_mixture_radius(variance_sum, rho=rho, alpha=alpha))
        estimate = s / t
        return ConfidenceInterval(estimate, estimate - radius / t, estimate + radius / t, t)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "coefficients": list(self.coefficients),
            "prior_mean": self.prior_mean,
            "count": list(self.count),
            "total": list(self.total),
            "total_sq": list(self.total_sq),
            "pairs": self.pairs,
            "phi_sum": list(self.phi_sum),
            "phi_sq": list(self.phi_sq),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeanDifferenceProcess:
        """Rebuild the state from :meth:`to_dict` output."""
        return cls(
            coefficients=tuple(float(c) for c in data["coefficients"]),
            prior_mean=float(data["prior_mean"]),
            count=[int(x) for x in data["count"]],
            total=[float(x) for x in data["total"]],
            total_sq=[float(x) for x in data["total_sq"]],
            pairs=int(data["pairs"]),
            phi_sum=[float(x) for x in data["phi_sum"]],
            phi_sq=[float(x) for x in data["phi_sq"]],
        )


@dataclass(slots=True)
class OneSampleMeanProcess:
    """Running sums for a one-sample normal-mixture confidence sequence on a mean."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def fold(self, values: Sequence[float] | NDArray[np.float64]) -> None:
        """Fold a batch of observations."""
        y = np.asarray(values, dtype=np.float64)
        self.count += int(y.size)
        self.total += float(y.sum())
        self.total_sq += float((y * y).sum())

    def interval(self, *, alpha: float, rho: float) -> ConfidenceInterval:
        """Return the one-sided confidence bounds for the mean, each at ``alpha``, now."""
        n = self.count
        if n == 0:
            return ConfidenceInterval(None, None, None, 0)
        mean = self.total / n
        variance_sum = max(self.total_sq - self.total * mean, 0.0)
        radius = float(one_sided_normal_mixture_radius(variance_sum, rho=rho, alpha=alpha)) / n
        return ConfidenceInterval(mean, mean - radius, mean + radius, n)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"count": self.count, "total": self.total, "total_sq": self.total_sq}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OneSampleMeanProcess:
        """Rebuild the state from :meth:`to_dict` output."""
        return cls(
            count=int(data["count"]), total=float(data["total"]), total_sq=float(data["total_sq"])
        )
