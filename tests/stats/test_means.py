"""Sequential tests on means: by hand, invariants, simulated coverage."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from policy_canary.stats import (
    MAIN_WEIGHT,
    MeanDifferenceProcess,
    OneSampleMeanProcess,
    ShiftMixture,
    mixture_rho,
    normal_mixture_radius,
    one_sided_normal_mixture_radius,
)
from policy_canary.stats.means import PRIOR_WEIGHT
from policy_canary.stats.rates import FAR_WEIGHT, MID_WEIGHT


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


LATENCY_10PCT = ShiftMixture.around(math.log(1.1))


def test_shift_mixture_by_hand() -> None:
    single = ShiftMixture(shifts=(0.5,), weights=(1.0,))
    # 0.5 * 10 - 0.5^2 * 8 / 2 = 4
    assert single.log_e_value(10.0, 8.0) == pytest.approx(4.0)
    # A single likelihood ratio reaches 1/alpha at (ln(1/alpha) + a^2 V / 2) / a.
    assert single.crossing(8.0, alpha=0.01) == pytest.approx((math.log(100) + 1.0) / 0.5)
    assert single.design_time(0.01) == pytest.approx(2 * math.log(100) / 0.25)
    mix = ShiftMixture.around(0.2)
    assert mix.shifts == pytest.approx((0.2, 0.1, 0.6))
    assert mix.weights == (MAIN_WEIGHT, MID_WEIGHT, FAR_WEIGHT)
    terms = zip(mix.shifts, mix.weights, strict=True)
    expected = math.log(sum(w * math.exp(a * 3.0 - a * a * 50.0 / 2) for a, w in terms))
    assert mix.log_e_value(3.0, 50.0) == pytest.approx(expected)


@pytest.mark.parametrize("variance_sum", [0.0, 1.0, 100.0, 1e4, 1e7])
def test_crossing_is_where_the_mixture_reaches_one_over_alpha(variance_sum: float) -> None:
    excess = LATENCY_10PCT.crossing(variance_sum, alpha=0.002)
    assert LATENCY_10PCT.log_e_value(excess, variance_sum) == pytest.approx(math.log(500), abs=1e-9)


@pytest.mark.parametrize(
    ("shifts", "weights"),
    [((), ()), ((0.1,), (0.5, 0.5)), ((0.0,), (1.0,)), ((0.1, 0.2), (0.5, 0.6))],
)
def test_a_malformed_shift_mixture_is_refused(
    shifts: tuple[float, ...], weights: tuple[float, ...]
) -> None:
    with pytest.raises(ValueError, match="mixture"):
        ShiftMixture(shifts=shifts, weights=weights)


def test_weighted_aipw_sums_by_hand() -> None:
    # prior mean 0 (weight 1), prior variance 1 (weight 2), share 1/2.
    # Candidate y=2: m_c = m_s = 0, v_c = v_s = 1, sigma^2 = 1/0.5 + 1/0.5 = 4, u = 1/4, phi = 4.
    # Stable y=1: m_c = 1, m_s = 0; v_c = (2*1 + 0)/(2 + 0) = 1, v_s = 1: u = 1/4;
    # phi = 1 - (1 - 0)/0.5 = -1.
    process = MeanDifferenceProcess(coefficients=(1.0,), prior_mean=0.0, prior_variance=1.0)
    process.fold(candidate=[True, False], share=[0.5, 0.5], values=[2.0, 1.0])
    assert process.pairs == 2
    assert process.sums[0] == pytest.approx([0.5, 0.75, 0.125, 0.1875, 1.0625])
    # estimate 0.75/0.5 = 1.5; V = sum u^2 (phi - 1.5)^2 = (6.25 + 6.25)/16 = 0.78125
    interval = process.interval(1.0, alpha=0.05, rho=1.0, mixture=LATENCY_10PCT)
    assert interval.estimate == pytest.approx(1.5)
    crossing = LATENCY_10PCT.crossing(0.78125, alpha=0.05)
    assert interval.lower == pytest.approx(1.5 - crossing / 0.5)
    radius = float(one_sided_normal_mixture_radius(0.78125, rho=1.0, alpha=0.05))
    assert interval.upper == pytest.approx(1.5 + radius / 0.5)
    # Worse downwards: the mixture bounds the upper side, the half-normal the lower.
    down = process.interval(1.0, alpha=0.05, rho=1.0, mixture=LATENCY_10PCT, worse_up=False)
    assert down.upper == pytest.approx(1.5 + crossing / 0.5)
    assert down.lower == pytest.approx(1.5 - radius / 0.5)
    assert process.log_e_value(1.0, null=0.0, mixture=LATENCY_10PCT) == pytest.approx(
        LATENCY_10PCT.log_e_value(0.5 * 1.5, 0.78125)
    )


def test_running_variances_shrink_to_the_prior_and_set_the_weights() -> None:
    # Candidates 0, 2, 4 at share 1/2, prior variance 1 (weight 2). Before the third:
    # n = 2, sum of squares about the mean 2, v_c = (2 + 2)/(2 + 1) = 4/3; v_s = 1 (no data),
    # so sigma^2 = (4/3)/0.5 + 1/0.5 = 14/3. The first two see v_c = 1: sigma^2 = 4.
    process = MeanDifferenceProcess(prior_variance=1.0)
    process.fold(candidate=[True, True, True], share=[0.5] * 3, values=[0.0, 2.0, 4.0])
    assert process.sums[0][0] == pytest.approx(0.25 + 0.25 + 3 / 14)


def test_a_relative_contrast_weighs_by_stable_s_running_mean() -> None:
    # Stable y=4 first (m_s = 0 before it: weight 0), then a candidate sees m_s = (0 + 4)/2 = 2.
    process = MeanDifferenceProcess(coefficients=(1.1,), prior_variance=1.0, relative=True)
    process.fold(candidate=[False, True], share=[0.5, 0.5], values=[4.0, 5.0])
    # v_c = 1; v_s after one value = (2 + 0)/2 = 1; sigma^2 = 2 + 1.21 * 2 = 4.42.
    assert process.sums[0][0] == pytest.approx(2.0 / 4.42)


def test_a_breach_at_one_threshold_is_a_breach_at_every_stricter_one() -> None:
    rng = np.random.default_rng(5)
    cand = rng.random(3000) < 0.2
    y = rng.normal(7.0, 0.5, 3000) + np.where(cand, 0.08, 0.0)
    process = MeanDifferenceProcess(prior_mean=7.0, prior_variance=0.25)
    process.fold(candidate=cand, share=np.full(3000, 0.2), values=y)
    nulls = np.linspace(-0.2, 0.2, 81)
    values = [process.log_e_value(1.0, null=b, mixture=LATENCY_10PCT) for b in nulls]
    assert all(a >= b for a, b in itertools.pairwise(values))
    # The lower bound is the threshold at which the e-value crosses 1/alpha.
    lower = process.interval(1.0, alpha=0.01, rho=1.0, mixture=LATENCY_10PCT).lower
    assert lower is not None
    assert process.log_e_value(1.0, null=lower, mixture=LATENCY_10PCT) == pytest.approx(
        math.log(100), abs=1e-6
    )


def test_a_non_positive_prior_variance_is_refused() -> None:
    with pytest.raises(ValueError, match="prior_variance"):
        MeanDifferenceProcess(prior_variance=0.0)


def test_shares_of_zero_or_one_carry_no_comparison() -> None:
    process = MeanDifferenceProcess()
    process.fold(candidate=[False, True], share=[0.0, 1.0], values=[1.0, 5.0])
    assert process.pairs == 0
    assert process.count == [1, 1]
    assert process.interval(1.0, alpha=0.05, rho=1.0, mixture=LATENCY_10PCT).estimate is None
    assert process.log_e_value(1.0, null=0.0, mixture=LATENCY_10PCT) == 0.0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 99), st.floats(-50, 50, allow_nan=False)),
        max_size=40,
    ),
    st.integers(0, 40),
    st.booleans(),
)
def test_folding_in_pieces_equals_folding_at_once(
    rows: list[tuple[bool, int, float]], cut: int, relative: bool
) -> None:
    cand = [r[0] for r in rows]
    share = [r[1] / 100 for r in rows]
    values = [r[2] for r in rows]
    kwargs = {"coefficients": (1.0, 1.1), "prior_mean": 3.0, "relative": relative}
    whole = MeanDifferenceProcess(**kwargs)  # type: ignore[arg-type]
    whole.fold(candidate=cand, share=share, values=values)
    parts = MeanDifferenceProcess(**kwargs)  # type: ignore[arg-type]
    parts.fold(candidate=cand[:cut], share=share[:cut], values=values[:cut])
    parts.fold(candidate=cand[cut:], share=share[cut:], values=values[cut:])
    assert parts.pairs == whole.pairs
    for got, want in zip(parts.sums, whole.sums, strict=True):
        assert got == pytest.approx(want, rel=1e-7, abs=1e-9)


def test_state_round_trips_through_json() -> None:
    process = MeanDifferenceProcess(
        coefficients=(1.0, 1.2), prior_mean=7.0, prior_variance=0.3, relative=True
    )
    process.fold(candidate=[True, False, False], share=[0.1, 0.1, 0.1], values=[7.2, 6.9, 7.1])
    restored = MeanDifferenceProcess.from_dict(json.loads(json.dumps(process.to_dict())))
    assert restored == process
    one = OneSampleMeanProcess()
    one.fold([1.0, 2.0])
    assert OneSampleMeanProcess.from_dict(one.to_dict()) == one


def test_a_a_log_latency_rarely_breaches_through_stage_shares_when_watched_continuously() -> None:
    # 400 A/A runs through shares 1% -> 5% -> 25%, checked every 500 requests for 30,000.
    rng = np.random.default_rng(11)
    runs, n, alpha = 400, 30_000, 0.01
    share = np.repeat([0.01, 0.05, 0.25], n // 3)
    misses = 0
    for _ in range(runs):
        cand = rng.random(n) < share
        y = rng.normal(7.0, 0.5, n)
        process = MeanDifferenceProcess(prior_mean=7.0, prior_variance=0.25)
        for start in range(0, n, 500):
            sl = slice(start, start + 500)
            process.fold(candidate=cand[sl], share=share[sl], values=y[sl])
            ci = process.interval(1.0, alpha=alpha, rho=1.0, mixture=LATENCY_10PCT)
            assert ci.lower is not None
            if process.count[1] >= 100 and ci.lower > 0.0:
                misses += 1
                break
    assert misses / runs <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / runs)


def test_a_ten_percent_latency_rise_is_detected() -> None:
    rng = np.random.default_rng(12)
    n = 40_000
    cand = rng.random(n) < 0.1
    y = rng.normal(7.0, 0.5, n) + np.where(cand, math.log(1.1), 0.0)
    process = MeanDifferenceProcess(prior_mean=7.0, prior_variance=0.25)
    process.fold(candidate=cand, share=np.full(n, 0.1), values=y)
    ci = process.interval(1.0, alpha=0.01, rho=1.0, mixture=LATENCY_10PCT)
    assert ci.lower is not None
    assert ci.lower > 0.0
    assert ci.estimate == pytest.approx(math.log(1.1), abs=0.03)


def test_a_a_skewed_costs_on_the_null_boundary_rarely_breach() -> None:
    # Gamma(2) costs, both arms equal, judged as "candidate <= 1.0 x stable" (zero tolerance,
    # the null's boundary) with the relative contrast, at 5%, every 400 requests for 40,000.
    rng = np.random.default_rng(13)
    runs, n, alpha = 400, 40_000, 0.01
    shift = ShiftMixture.around(0.2)
    misses = 0
    for _ in range(runs):
        cand = rng.random(n) < 0.05
        y = rng.gamma(2.0, 0.01, n)
        process = MeanDifferenceProcess(prior_mean=0.02, prior_variance=0.0002, relative=True)
        for start in range(0, n, 400):
            sl = slice(start, start + 400)
            process.fold(candidate=cand[sl], share=np.full(cand[sl].size, 0.05), values=y[sl])
            if process.count[1] >= 100 and process.log_e_value(
                1.0, null=0.0, mixture=shift
            ) >= math.log(1 / alpha):
                misses += 1
                break
    assert misses / runs <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / runs)


def _fold_by_the_definitions(
    rows: list[tuple[bool, float, float]], process: MeanDifferenceProcess
) -> tuple[int, list[list[float]], list[int]]:
    """The class docstring's sums, one event at a time, in plain floats: the fold's oracle."""
    n, s1, s2 = [0, 0], [0.0, 0.0], [0.0, 0.0]
    sums = [[0.0] * 5 for _ in process.coefficients]
    pairs = 0
    for cand, rho, y in rows:
        mean = [(process.prior_mean + s1[k]) / (1 + n[k]) for k in (0, 1)]
        var = [
            (PRIOR_WEIGHT * process.prior_variance + (max(s2[k] - s1[k] ** 2 / n[k], 0.0)
             if n[k] else 0.0)) / (PRIOR_WEIGHT + max(n[k] - 1, 0))
            for k in (0, 1)
        ]  # fmt: skip
        if 0.0 < rho < 1.0:
            cand_part = (y - mean[1]) / rho + mean[1] if cand else mean[1]
            stable_part = mean[0] if cand else (y - mean[0]) / (1 - rho) + mean[0]
            scale = abs(mean[0]) if process.relative else 1.0
            for i, c in enumerate(process.coefficients):
                phi = cand_part - c * stable_part
                sigma2 = max(
                    var[1] / rho + c * c * var[0] / (1 - rho), 1e-9 * process.prior_variance
                )
                u = scale / sigma2
                for j, term in enumerate((u, u * phi, u * u, u * u * phi, u * u * phi * phi)):
                    sums[i][j] += term
            pairs += 1
        arm = int(cand)
        n[arm], s1[arm], s2[arm] = n[arm] + 1, s1[arm] + y, s2[arm] + y * y
    return pairs, sums, n


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from([0.0, 0.01, 0.1, 0.37, 0.5, 0.9, 1.0]),
            st.floats(-50, 50, allow_nan=False),
        ),
        max_size=60,
    ),
    st.lists(st.sampled_from([0.8, 0.95, 1.0, 1.15, 1.25]), min_size=1, max_size=3, unique=True),
    st.booleans(),
    st.integers(0, 60),
)
def test_the_batch_fold_sums_what_the_definitions_sum_event_by_event(
    rows: list[tuple[bool, float, float]], coefficients: list[float], relative: bool, cut: int
) -> None:
    # Two batches (the second starts from the first's counts), with shares of 0 and 1 among
    # usable ones, against a per-event loop over the definitions.
    process = MeanDifferenceProcess(
        coefficients=tuple(coefficients), prior_mean=2.0, prior_variance=0.5, relative=relative
    )
    for part in (rows[:cut], rows[cut:]):
        process.fold(
            candidate=[r[0] for r in part], share=[r[1] for r in part], values=[r[2] for r in part]
        )
    pairs, sums, counts = _fold_by_the_definitions(rows, process)
    assert (process.pairs, process.count) == (pairs, counts)
    for got, want in zip(process.sums, sums, strict=True):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
