"""One-sample SLO e-processes: by hand, monotonicity in the line, simulated false alarms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_canary.stats import (
    BettingMeanProcess,
    IndicatorProcess,
    bernoulli_log_evalue,
    bernoulli_upper_bound,
    relative_bernoulli_log_evalue,
)


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


# --- the one-sample upper confidence bound (absolute route to non-inferiority) --------------


def test_relative_bernoulli_e_value_by_hand() -> None:
    # 2 bad of 2000, null 1%, alternative 0.5%: K = 0.5^2 (0.995/0.99)^1998, ln K = 8.679218
    log_k = relative_bernoulli_log_evalue(2, 1998, null_rate=0.01, fractions=(0.5,))
    assert log_k == pytest.approx(2 * math.log(0.5) + 1998 * math.log(0.995 / 0.99))
    assert log_k == pytest.approx(8.679218, abs=1e-6)
    # The "never bad" alternative is worth nothing once a bad event has happened.
    assert relative_bernoulli_log_evalue(1, 99, null_rate=0.01, fractions=(0.0,)) == -math.inf
    # Default mixture, clean record: ln((1/4) sum_c ((1 - c m)/(1 - m))^n) = 3.727822
    clean = relative_bernoulli_log_evalue(0, 5000, null_rate=0.001)
    assert clean == pytest.approx(3.727822, abs=1e-6)


def test_upper_bound_by_hand() -> None:
    # Only the "never bad" alternative: K = (1 - m)^-n = 1/alpha at m = 1 - alpha^(1/n).
    bound = bernoulli_upper_bound(0, 1000, alpha=0.001, fractions=(0.0,))
    assert bound == pytest.approx(1 - 0.001 ** (1 / 1000), rel=1e-8)
    assert bound == pytest.approx(0.0068840, abs=1e-7)
    # Default mixture: 5000 clean requests bound the rate below 0.1184% at alpha = 1%.
    assert bernoulli_upper_bound(0, 5000, alpha=0.01) == pytest.approx(0.00118423, rel=1e-5)
    assert bernoulli_upper_bound(0, 0, alpha=0.01) is None
    assert bernoulli_upper_bound(3, 3, alpha=0.01) is None


@given(
    bad=st.integers(0, 200),
    extra=st.integers(1, 20_000),
    alpha=st.sampled_from([0.001, 0.01, 0.1]),
)
@settings(max_examples=60, deadline=None)
def test_upper_bound_is_where_the_test_starts_rejecting(bad: int, extra: int, alpha: float) -> None:
    n = bad + extra
    bound = bernoulli_upper_bound(bad, n, alpha=alpha)
    if bound is None:
        return
    assert bound > bad / n  # never below the observed rate
    limit = math.log(1 / alpha)
    assert relative_bernoulli_log_evalue(bad, extra, null_rate=bound) >= limit
    below = bound * (1 - 1e-6)
    assert relative_bernoulli_log_evalue(bad, extra, null_rate=below) < limit + 1e-6
    # More bad events never tighten the bound.
    worse = bernoulli_upper_bound(bad + 1, n + 1, alpha=alpha)
    better = bernoulli_upper_bound(bad, n + 1, alpha=alpha)
    assert better is not None
    assert worse is None or worse >= better


def test_upper_bound_covers_the_true_rate_at_every_look() -> None:
    # 200 paths of 3000 requests at 2%, looked at every 100: a path whose bound ever drops
    # below 2% is a miss. Ville: misses <= alpha = 10% (expect far fewer).
    rng = np.random.default_rng(5)
    misses = 0
    for _ in range(200):
        counts = np.cumsum(rng.random(3000) < 0.02)[99::100]
        for i, bad in enumerate(counts.tolist()):
            bound = bernoulli_upper_bound(bad, 100 * (i + 1), alpha=0.1)
            if bound is not None and bound < 0.02:
                misses += 1
                break
    assert misses / 200 <= 0.1
