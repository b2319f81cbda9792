"""Wald's limit: the expected sample number no sequential test can beat.

Wald and Wolfowitz showed that the SPRT minimises the expected number of observations among
all sequential tests with error rates (alpha, beta). Benchmarks and ``preflight`` report our
requests-to-detection next to this floor, so a plan author sees what a stage can and cannot
detect in its dwell time.
"""

from __future__ import annotations

import math

__all__ = [
    "bernoulli_kl",
    "gaussian_kl",
    "wald_bernoulli_floor",
    "wald_expected_samples",
    "wald_gaussian_floor",
]


def bernoulli_kl(p1: float, p0: float) -> float:
    """Return KL(Bernoulli(p1) || Bernoulli(p0)) in nats."""
    if not (0.0 < p0 < 1.0 and 0.0 <= p1 <= 1.0):
        raise ValueError(f"rates must lie in (0, 1); got p1={p1}, p0={p0}")
    total = 0.0
    if p1 > 0.0:
        total += p1 * math.log(p1 / p0)
    if p1 < 1.0:
        total += (1.0 - p1) * math.log((1.0 - p1) / (1.0 - p0))
    return total


def gaussian_kl(delta: float, sigma: float) -> float:
    """Return the KL divergence of a Gaussian mean shift ``delta`` at noise ``sigma``: d²/(2s²)."""
    if sigma <= 0.0:
        raise ValueError(f"sigma must be positive; got {sigma}")
    return delta * delta / (2.0 * sigma * sigma)


def wald_expected_samples(kl: float, *, alpha: float, beta: float) -> float:
    """Return Wald's E[N] ~ [(1-b)ln((1-b)/a) + b ln(b/(1-a))] / KL under the alternative."""
    if not (0.0 < alpha < 1.0 and 0.0 < beta < 1.0):
        raise ValueError(f"alpha and beta must lie in (0, 1); got alpha={alpha}, beta={beta}")
    if kl <= 0.0:
        return math.inf
    numerator = (1.0 - beta) * math.log((1.0 - beta) / alpha) + beta * math.log(
        beta / (1.0 - alpha)
    )
    return numerator / kl


def wald_bernoulli_floor(p0: float, p1: float, *, alpha: float, beta: float = 0.2) -> float:
    """Return Wald's floor (observations) for telling a Bernoulli rate p1 from p0."""
    return wald_expected_samples(bernoulli_kl(p1, p0), alpha=alpha, beta=beta)


def wald_gaussian_floor(delta: float, sigma: float, *, alpha: float, beta: float = 0.2) -> float:
    """Return Wald's floor (observations) for a Gaussian shift ``delta`` at noise ``sigma``."""
    return wald_expected_samples(gaussian_kl(delta, sigma), alpha=alpha, beta=beta)
