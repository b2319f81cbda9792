"""Anytime-valid sequential statistics for canary guardrails: pure functions over aggregates.

Nothing here does I/O, reads a clock or draws random numbers. Every state object folds new
observations in O(new observations) and round-trips through a JSON-ready dict, so a restarted
controller continues the same test. See ``docs/statistics.md`` for the methods and formulas.
"""

from __future__ import annotations

from policy_canary.stats.means import (
    ConfidenceInterval,
    MeanDifferenceProcess,
    OneSampleMeanProcess,
    ShiftMixture,
    mixture_rho,
    normal_mixture_radius,
    one_sided_normal_mixture_radius,
)
from policy_canary.stats.rates import (
    BPS,
    LIMIT_WEIGHT,
    MAIN_WEIGHT,
    RATE_DETECT_WEIGHT,
    ConditionalRateProcess,
    RateMixture,
    candidate_share_of_bad,
    conditional_log_evalue,
)
from policy_canary.stats.slo import (
    BETTING_GRID,
    UPPER_BOUND_FRACTIONS,
    BettingMeanProcess,
    IndicatorProcess,
    bernoulli_log_evalue,
    bernoulli_upper_bound,
    relative_bernoulli_log_evalue,
)
from policy_canary.stats.wald import (
    bernoulli_kl,
    gaussian_kl,
    wald_bernoulli_floor,
    wald_expected_samples,
    wald_gaussian_floor,
)

__all__ = [
    "BETTING_GRID",
    "BPS",
    "LIMIT_WEIGHT",
    "MAIN_WEIGHT",
    "RATE_DETECT_WEIGHT",
    "UPPER_BOUND_FRACTIONS",
    "BettingMeanProcess",
    "ConditionalRateProcess",
    "ConfidenceInterval",
    "IndicatorProcess",
    "MeanDifferenceProcess",
    "OneSampleMeanProcess",
    "RateMixture",
    "ShiftMixture",
    "bernoulli_kl",
    "bernoulli_log_evalue",
    "bernoulli_upper_bound",
    "candidate_share_of_bad",
    "conditional_log_evalue",
    "gaussian_kl",
    "mixture_rho",
    "normal_mixture_radius",
    "one_sided_normal_mixture_radius",
    "relative_bernoulli_log_evalue",
    "wald_bernoulli_floor",
    "wald_expected_samples",
    "wald_gaussian_floor",
]
