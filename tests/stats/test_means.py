"""Normal-mixture confidence sequences on means: by hand, invariants, simulated coverage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from policy_canary.stats import (
    MeanDifferenceProcess,
    OneSampleMeanProcess,
    mixture_rho,
    normal_mixture_radius,
    one_sided_normal_mixture_radius,
)


def test_radius_by_hand() -> None:
    # sqrt((100 + 10)(ln 11 + 2 ln 20)) = sqrt(110 * 8.38936) = 30.3782
    assert float(normal_mixture_radius(100.0, rho=10.0, alpha=0.05)) == pytest.approx(
        30.3782, abs=1e-4
    )


@pytest.mark.parametrize("variance_sum", [0.0, 10.0, 1e3, 1e6])
def test_one_sided_radius_is_where_the_half_normal_mixture_reaches_one_over_alpha(
    variance_sum: float,
) -> None:
    rho, alpha = 100.0, 0.01
    b = float(one_sided_normal_mixture_radius(variance_sum, rho=rho, alpha=alpha))
    z = b / math.sqrt(variance_sum + rho)
    mixture = 2 * math.sqrt(rho / (variance_sum + rho)) * math.exp(z * z / 2) * norm.cdf(z)
    assert mixture == pytest.approx(1 / alpha, rel=1e-9)
    # Between the two-sided boundaries at 2 alpha and at alpha.
    assert float(normal_mixture_radius(variance_sum, rho=rho, alpha=2 * alpha)) <= b + 1e-9
    assert b < float(normal_mixture_radius(variance_sum, rho=rho, alpha=alpha))


def test_mixture_rho_by_hand() -> None:
    two_log = -2 * math.log(0.01)
    assert mixture_rho(1000.0, 0.01) == pytest.approx(1000 / (two_log + math.log(two_log + 1)))


def test_aipw_terms_by_hand() -> None:
    # prior 0 (weight 1), share 1/2. Candidate y=2: m_c = m_s = 0, phi = 2/0.5 = 4.
    # Stable y=1: m_c = (0 + 2)/2 = 1, m_s = 0, phi = 1 - (1 - 0)/0.5 = -1.
    process = MeanDifferenceProcess(coefficients=(1.0,), prior_mean=0.0)
    process.fold(candidate=[True, False], share=[0.5, 0.5], values=[2.0, 1.0])
    assert process.pairs == 2
    assert process.phi_sum == [pytest.approx(3.0)]
    assert process.phi_sq == [pytest.approx(17.0)]
    interval = process.interval(1.0, alpha=0.05, rho=1.0)
    radius = float(one_sided_normal_mixture_radius(17.0 - 9.0 / 2, rho=1.0, alpha=0.05))
    assert interval.estimate == pytest.approx(1.5)
    assert interval.lower == pytest.approx(1.5 - radius / 2)


def test_shares_of_zero_or_one_carry_no_comparison() -> None:
    process = MeanDifferenceProcess()
    process.fold(candidate=[False, True], share=[0.0, 1.0], values=[1.0, 5.0])
    assert process.pairs == 0
    assert process.count == [1, 1]
    assert process.interval(1.0, alpha=0.05, rho=1.0).estimate is None


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 99), st.floats(-50, 50, allow_nan=False)),
        max_size=40,
    ),
    st.integers(0, 40),
)
def test_folding_in_pieces_equals_folding_at_once(
    rows: list[tuple[bool, int, float]], cut: int
) -> None:
    cand = [r[0] for r in rows]
    share = [r[1] / 100 for r in rows]
    values = [r[2] for r in rows]
    whole = MeanDifferenceProcess(coefficients=(1.0, 1.1), prior_mean=3.0)
    whole.fold(candidate=cand, share=share, values=values)
    parts = MeanDifferenceProcess(coefficients=(1.0, 1.1), prior_mean=3.0)
    parts.fold(candidate=cand[:cut], share=share[:cut], values=values[:cut])
    parts.fold(candidate=cand[cut:], share=share[cut:], values=values[cut:])
    assert parts.pairs == whole.pairs
    assert parts.phi_sum == pytest.approx(whole.phi_sum, rel=1e-9, abs=1e-6)
    assert parts.phi_sq == pytest.approx(whole.phi_sq, rel=1e-9, abs=1e-6)


def test_state_round_trips_through_json() -> None:
    process = MeanDifferenceProcess(coefficients=(1.0, 1.2), prior_mean=7.0)
    process.fold(candidate=[True, False, False], share=[0.1, 0.1, 0.1], values=[7.2, 6.9, 7.1])
    restored = MeanDifferenceProcess.from_dict(json.loads(json.dumps(process.to_dict())))
    assert restored == process
    one = OneSampleMeanProcess()
    one.fold([1.0, 2.0])
    assert OneSampleMeanProcess.from_dict(one.to_dict()) == one


def test_a_a_log_latency_rarely_leaves_zero_even_when_watched_continuously() -> None:
    # 400 A/A runs at a 10% share, checked every 50 requests for 20,000 requests.
    rng = np.random.default_rng(11)
    runs, n, alpha = 400, 20_000, 0.01
    misses = 0
    for _ in range(runs):
        cand = rng.random(n) < 0.1
        y = rng.normal(7.0, 0.5, n)
        process = MeanDifferenceProcess(prior_mean=7.0)
        rho = mixture_rho(2000 / 0.1 * 0.25 * (1 / 0.1 + 1 / 0.9), alpha)
        for start in range(0, n, 500):
            sl = slice(start, start + 500)
            process.fold(candidate=cand[sl], share=np.full(cand[sl].size, 0.1), values=y[sl])
            ci = process.interval(1.0, alpha=alpha, rho=rho)
            assert ci.lower is not None
            assert ci.upper is not None
            if process.count[1] >= 100 and ci.lower > 0.0:
                misses += 1
                break
    assert misses / runs <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / runs)


def test_a_ten_percent_latency_rise_is_detected() -> None:
    rng = np.random.default_rng(12)
    n = 40_000
    cand = rng.random(n) < 0.1
    y = rng.normal(7.0, 0.5, n) + np.where(cand, math.log(1.1), 0.0)
    process = MeanDifferenceProcess(prior_mean=7.0)
    process.fold(candidate=cand, share=np.full(n, 0.1), values=y)
    ci = process.interval(1.0, alpha=0.01, rho=mixture_rho(2000 / 0.1 * 0.25 * 11.1, 0.01))
    assert ci.lower is not None
    assert ci.lower > 0.0
    assert ci.estimate == pytest.approx(math.log(1.1), abs=0.03)
