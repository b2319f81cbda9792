"""Wald's limit helpers against hand-computed values."""

from __future__ import annotations

import math

import pytest

from policy_canary.stats import (
    bernoulli_kl,
    gaussian_kl,
    wald_bernoulli_floor,
    wald_expected_samples,
    wald_gaussian_floor,
)


def test_bernoulli_kl_matches_the_formula() -> None:
    expected = 0.02 * math.log(2.0) + 0.98 * math.log(0.98 / 0.99)
    assert bernoulli_kl(0.02, 0.01) == pytest.approx(expected, rel=1e-12)
    assert bernoulli_kl(0.02, 0.01) == pytest.approx(0.0039136, abs=1e-7)
    assert bernoulli_kl(0.3, 0.3) == 0.0


def test_design_example_needs_about_814_candidate_requests() -> None:
    # design.md section 6: 1% -> 2% at alpha = 0.01, beta = 0.2.
    assert wald_bernoulli_floor(0.01, 0.02, alpha=0.01, beta=0.2) == pytest.approx(814.0, abs=0.5)


def test_gaussian_floor_by_hand() -> None:
    # numerator = 0.9 ln(18) + 0.1 ln(0.1 / 0.95) = 2.37619; KL = 0.1^2 / 2 = 0.005.
    assert gaussian_kl(0.1, 1.0) == pytest.approx(0.005)
    assert wald_gaussian_floor(0.1, 1.0, alpha=0.05, beta=0.1) == pytest.approx(475.24, abs=0.01)


def test_no_information_means_no_finite_floor() -> None:
    assert wald_expected_samples(0.0, alpha=0.01, beta=0.2) == math.inf


@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 0.2), (0.01, 1.0), (1.5, 0.1)])
def test_out_of_range_error_rates_are_refused(alpha: float, beta: float) -> None:
    with pytest.raises(ValueError, match="alpha and beta"):
        wald_expected_samples(0.01, alpha=alpha, beta=beta)
