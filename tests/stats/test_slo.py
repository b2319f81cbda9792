"""One-sample SLO e-processes: by hand, monotonicity in the line, simulated false alarms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_canary.stats import BettingMeanProcess, IndicatorProcess, bernoulli_log_evalue


def test_indicator_e_value_by_hand() -> None:
    # 2 of 10 bad, null 10%, alternative 20%: K = 2^2 (0.8/0.9)^8 = 1.558977
    process = IndicatorProcess()
    process.fold([True, True] + [False] * 8)
    log_k = process.log_e_value(null_rate=0.1, alternatives=(0.2,), weights=(1.0,))
    assert math.exp(log_k) == pytest.approx(4 * (8 / 9) ** 8)
    assert math.exp(log_k) == pytest.approx(1.558977, abs=1e-6)


def test_betting_e_value_by_hand() -> None:
    # line 1, lower bound 0, fraction 0.5 -> lambda = 0.5; X = 2, 0, 3: 1.5 * 0.5 * 2.0 = 1.5
    process = BettingMeanProcess(thresholds=(1.0,), fractions=(0.5,), upper=True, bound=0.0)
    process.fold([2.0, 0.0, 3.0])
    assert math.exp(process.log_e_value(1.0)) == pytest.approx(1.5)


def test_betting_for_a_minimum_uses_the_upper_bound() -> None:
    # "mean >= 0.8" on [0, 1]: lambda = 0.5 / 0.2 = 2.5; X = 0.6 -> 1 + 2.5 * 0.2 = 1.5
    process = BettingMeanProcess(thresholds=(0.8,), fractions=(0.5,), upper=False, bound=1.0)
    process.fold([0.6])
    assert math.exp(process.log_e_value(0.8)) == pytest.approx(1.5)


def test_a_line_outside_the_support_is_refused() -> None:
    with pytest.raises(ValueError, match="inside the bound"):
        BettingMeanProcess(thresholds=(0.0,), fractions=(0.5,), upper=True, bound=0.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=30), st.floats(0.5, 20))
def test_betting_wealth_falls_as_the_line_rises(values: list[float], line: float) -> None:
    # This monotonicity lets a stage tighten a mean SLO without spending more alpha.
    process = BettingMeanProcess(
        thresholds=(line, line * 1.5), fractions=(0.5, 0.25), upper=True, bound=0.0
    )
    process.fold(values)
    assert process.log_e_value(line) >= process.log_e_value(line * 1.5) - 1e-9


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 500), st.integers(0, 500))
def test_bernoulli_e_value_is_finite_and_non_negative(bad: int, good: int) -> None:
    log_k = bernoulli_log_evalue(
        bad, good, null_rate=0.05, alternatives=(0.1, 0.07), weights=(0.9, 0.1)
    )
    assert math.isfinite(log_k)


def test_indicator_slo_false_alarms_stay_below_alpha_at_the_line() -> None:
    rng = np.random.default_rng(5)
    runs, n = 4000, 4000
    bad = rng.random((runs, n)) < 0.005  # exactly at the SLO line
    cum_bad = np.cumsum(bad, axis=1)
    cum_good = np.arange(1, n + 1) - cum_bad
    alts, weights = (0.0075, math.sqrt(0.005 * 0.0075)), (0.9, 0.1)
    log_k = np.logaddexp(
        math.log(weights[0])
        + cum_bad * math.log(alts[0] / 0.005)
        + cum_good * math.log((1 - alts[0]) / 0.995),
        math.log(weights[1])
        + cum_bad * math.log(alts[1] / 0.005)
        + cum_good * math.log((1 - alts[1]) / 0.995),
    )
    # The vectorised formula is the same as the process's.
    process = IndicatorProcess()
    process.fold(bad[0])
    assert process.log_e_value(null_rate=0.005, alternatives=alts, weights=weights) == (
        pytest.approx(float(log_k[0, -1]))
    )
    rate = float((log_k >= math.log(100)).any(axis=1).mean())
    assert rate <= 0.01 + 2 * math.sqrt(0.01 * 0.99 / runs)
