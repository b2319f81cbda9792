"""Neyman-Pearson median floors: the fewest observations any alpha-level test needs, half the time.

Wald's floor bounds the *expected* sample size of tests with both error rates fixed; it says
little about a power-one test's *median*. This floor does. Any sequential test whose false-alarm
probability is at most alpha and whose median detection time is n observations yields, through
the event {N <= n}, a fixed-sample test on n observations with size <= alpha and power >= 1/2.
By the Neyman-Pearson lemma no such test beats the most powerful level-alpha test of one null
distribution against the true alternative, so n is at least the smallest sample size at which
that test has power >= 1/2: the *median floor*.

The floors here use a simple null on the tolerance boundary and treat everything else (the
baseline, the noise) as known. A real test must keep its level over the whole composite null and
learn what it does not know, which only costs observations, so these stay lower bounds.

Every search relies on one fact: the most powerful test's power never falls as n grows (a test
on n + 1 observations may ignore the last one), so "power >= 1/2" is monotone in n and
galloping followed by bisection finds its first n.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from scipy import stats as sps

__all__ = [
    "MEDIAN_POWER",
    "binomial_median_floor",
    "binomial_np_power",
    "gamma_median_floor",
    "gaussian_median_floor",
]

#: The power a test must reach by n observations for n to be its median detection time.
MEDIAN_POWER = 0.5
_MAX_N = 2**40  # far beyond any rollout; stops the gallop on a degenerate input


def _check_alpha(alpha: float) -> None:
    # At alpha >= 1/2 a coin flip already has power 1/2 with no data: there is no floor.
    if not 0.0 < alpha < MEDIAN_POWER:
        raise ValueError(f"alpha must lie in (0, 0.5) for a median floor; got {alpha}")


def _first_n(ok: Callable[[int], bool]) -> int:
    """Return the smallest n >= 1 with ``ok(n)``, for ``ok`` monotone (False ... False True ...)."""
    lo, hi = 0, 1  # invariant: not ok(lo) (n = 0 never detects at alpha < 1/2), ok(hi) sought
    while not ok(hi):
        lo, hi = hi, 2 * hi
        if hi > _MAX_N:
            raise ValueError("no sample size reaches power 1/2; is the alternative a regression?")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def binomial_np_power(n: int, p0: float, p1: float, *, alpha: float) -> float:
    """Return the power at p1 of the exact randomised level-alpha binomial test of p0 (p1 > p0).

    The test rejects when the count X of n Bernoulli outcomes exceeds c, the smallest count with
    P0(X > c) <= alpha, and rejects with probability gamma when X = c, gamma chosen so the size
    is exactly alpha. Its power is P1(X > c) + gamma P1(X = c).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    if not (0.0 < p0 < p1 <= 1.0):
        raise ValueError(f"need 0 < p0 < p1 <= 1 (a regression beyond the null); got {p0}, {p1}")
    _check_alpha(alpha)
    null, alt = sps.binom(n, p0), sps.binom(n, p1)
    c = max(int(null.isf(alpha)), 0)
    # isf is a floating-point search; settle c on the definition itself.
    while null.sf(c) > alpha:
        c += 1
    while c > 0 and null.sf(c - 1) <= alpha:
        c -= 1
    gamma = (alpha - float(null.sf(c))) / float(null.pmf(c))
    return float(alt.sf(c)) + gamma * float(alt.pmf(c))


def binomial_median_floor(p0: float, p1: float, *, alpha: float) -> int:
    """Return the fewest Bernoulli observations at which a level-alpha test of p0 detects p1 half
    the time (the exact randomised Neyman-Pearson test)."""
    return _first_n(lambda n: binomial_np_power(n, p0, p1, alpha=alpha) >= MEDIAN_POWER)


def gaussian_median_floor(delta: float, sigma: float, *, alpha: float) -> int:
    """Return the fewest observations at which a level-alpha test detects a Gaussian mean shift
    ``delta`` at known noise ``sigma`` half the time: ceil((z_{1-alpha} sigma / delta)^2)."""
    if delta <= 0.0 or sigma <= 0.0:
        raise ValueError(f"delta and sigma must be positive; got delta={delta}, sigma={sigma}")
    _check_alpha(alpha)
    # Power is Phi(delta sqrt(n) / sigma - z), which is 1/2 exactly at the bound.
    z = float(sps.norm.isf(alpha))
    return max(math.ceil((z * sigma / delta) ** 2), 1)


def gamma_median_floor(shape: float, scale0: float, scale1: float, *, alpha: float) -> int:
    """Return the fewest Gamma(shape, scale) observations at which a level-alpha test of
    ``scale0`` detects ``scale1`` (> scale0) half the time.

    The sum of n observations is Gamma(n shape, scale) exactly and the Neyman-Pearson test
    rejects for large sums, so power >= 1/2 is Gamma(n shape, scale0)'s 1 - alpha quantile
    lying at or below Gamma(n shape, scale1)'s median.
    """
    if shape <= 0.0 or not (0.0 < scale0 < scale1):
        raise ValueError(f"need shape > 0 and 0 < scale0 < scale1; got {shape}, {scale0}, {scale1}")
    _check_alpha(alpha)

    def ok(n: int) -> bool:
        a = n * shape
        critical = float(sps.gamma.isf(alpha, a, scale=scale0))
        return critical <= float(sps.gamma.median(a, scale=scale1))

    return _first_n(ok)
