"""The conditional rate e-process: hand-computed values, invariants, and seeded simulations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_canary.stats import (
    ConditionalRateProcess,
    RateMixture,
    candidate_share_of_bad,
    conditional_log_evalue,
)
from policy_canary.stats.edges import rejection_edge
from policy_canary.stats.rates import BPS, _scalar_log_evalue

WALD_2X = RateMixture(ratios=(2.0,), weights=(1.0,))


def test_share_of_bad_events_under_the_null() -> None:
    assert float(candidate_share_of_bad(0.5, 1.0)) == pytest.approx(0.5)
    assert float(candidate_share_of_bad(0.1, 2.0)) == pytest.approx(0.2 / 1.1)


def test_e_value_is_the_likelihood_ratio_by_hand() -> None:
    # rho = 0.5, r0 = 1, r1 = 2: q0 = 1/2, q1 = 2/3. Three candidate and one stable bad event:
    # K = (q1/q0)^3 ((1 - q1)/(1 - q0))^1 = (4/3)^3 (2/3) = 128/81.
    log_k = conditional_log_evalue([3], [1], [0.5], null_ratio=1.0, mixture=WALD_2X)
    assert math.exp(float(log_k)) == pytest.approx(128 / 81)


def test_mixture_averages_the_likelihood_ratios() -> None:
    mixture = RateMixture(ratios=(2.0, 3.0), weights=(0.5, 0.5))
    # r1 = 3: q1 = 3/4, K = 1.5^3 * 0.5 = 1.6875.
    log_k = conditional_log_evalue([3], [1], [0.5], null_ratio=1.0, mixture=mixture)
    assert math.exp(float(log_k)) == pytest.approx(0.5 * 128 / 81 + 0.5 * 1.6875)


def test_process_sums_strata_and_ignores_shares_without_information() -> None:
    process = ConditionalRateProcess()
    process.fold(
        candidate=[True, True, False, False, True, False],
        share_bp=[5000, 5000, 5000, 0, 10_000, 5000],
        bad=[True, True, True, True, True, False],
    )
    assert process.requests == [3, 3]
    assert process.bad_total == [2, 3]
    assert process.bad == {5000: [1, 2]}
    # (4/3)^2 (2/3) = 32/27
    log_k = process.log_e_value(null_ratio=1.0, mixture=WALD_2X)
    assert math.exp(log_k) == pytest.approx(32 / 27)


def test_state_round_trips_through_json() -> None:
    process = ConditionalRateProcess()
    process.fold(candidate=[True, False], share_bp=[100, 500], bad=[True, True])
    restored = ConditionalRateProcess.from_dict(json.loads(json.dumps(process.to_dict())))
    assert restored == process


def _fold_ratio(ratio: float, seed: int, n: int = 200_000) -> ConditionalRateProcess:
    rng = np.random.default_rng(seed)
    process = ConditionalRateProcess()
    cand = rng.random(n) < 0.1
    bad = rng.random(n) < np.where(cand, 0.01 * ratio, 0.01)
    process.fold(candidate=cand, share_bp=np.full(n, 1000), bad=bad)
    return process


def test_confidence_bounds_bracket_the_true_ratio() -> None:
    up = RateMixture.around(1.2, 2.0)
    down = RateMixture.away(pivot=1.2, null_ratio=1.2, detect_ratio=2.0)
    same = _fold_ratio(1.0, seed=7, n=2_000_000)
    upper = same.confidence_bound(alpha=0.01, mixture=down, upper=True)
    assert upper is not None
    assert 1.0 < upper < 1.2
    worse = _fold_ratio(3.0, seed=8)
    lower = worse.confidence_bound(alpha=0.01, mixture=up, upper=False)
    # A test tuned to alternatives <= 2 cannot reject ratios above them: the lower bound stops
    # at the nearest alternative, which is still far above the tolerance 1.2.
    assert lower == pytest.approx(math.sqrt(1.2 * 2.0))


strata = st.lists(
    st.tuples(st.integers(1, 9999), st.booleans(), st.booleans()),
    min_size=0,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(strata, st.integers(0, 60))
def test_folding_in_pieces_equals_folding_at_once(
    rows: list[tuple[int, bool, bool]], cut: int
) -> None:
    bps = [r[0] for r in rows]
    cand = [r[1] for r in rows]
    bad = [r[2] for r in rows]
    whole = ConditionalRateProcess()
    whole.fold(candidate=cand, share_bp=bps, bad=bad)
    parts = ConditionalRateProcess()
    parts.fold(candidate=cand[:cut], share_bp=bps[:cut], bad=bad[:cut])
    parts.fold(candidate=cand[cut:], share_bp=bps[cut:], bad=bad[cut:])
    assert parts == whole
    log_k = whole.log_e_value(null_ratio=1.2, mixture=RateMixture.around(1.2, 2.0))
    assert math.isfinite(log_k)  # K itself is exp(log_k) > 0: non-negative by construction


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 5000)),
        min_size=1,
        max_size=4,
    ),
    st.floats(1.0, 1.9),
    st.floats(0.3, 0.99),
)
def test_a_breach_at_one_tolerance_rejects_every_stricter_one(
    cells: list[tuple[int, int, int]], r0: float, shrink: float
) -> None:
    # The argument that lets stages tighten a threshold without splitting alpha.
    mixture = RateMixture.around(2.0, 2.5)
    cand = [c[0] for c in cells]
    stab = [c[1] for c in cells]
    shares = [c[2] / 10_000 for c in cells]
    at_r0 = float(conditional_log_evalue(cand, stab, shares, null_ratio=r0, mixture=mixture))
    stricter = float(
        conditional_log_evalue(cand, stab, shares, null_ratio=r0 * shrink, mixture=mixture)
    )
    if at_r0 >= math.log(100):
        assert stricter >= at_r0 - 1e-9


def _simulate(
    rng: np.random.Generator,
    *,
    runs: int,
    looks: int,
    per_look: np.ndarray,
    shares: np.ndarray,
    p_stable: np.ndarray,
    ratio: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (first look with ln K >= ln 100 or -1, candidate requests so far) per run."""
    n_cand = rng.binomial(per_look, shares, size=(runs, looks))
    bad_c = rng.binomial(n_cand, np.minimum(p_stable * ratio, 1.0))
    bad_s = rng.binomial(per_look - n_cand, p_stable)
    # One stratum per distinct share (as the monitor keeps them).
    keys, which = np.unique(shares, return_inverse=True)
    cum_c = np.zeros((runs, looks, keys.size))
    cum_s = np.zeros((runs, looks, keys.size))
    for k in range(keys.size):
        mask = which == k
        cum_c[..., k] = np.cumsum(np.where(mask, bad_c, 0), axis=1)
        cum_s[..., k] = np.cumsum(np.where(mask, bad_s, 0), axis=1)
    log_k = conditional_log_evalue(
        cum_c, cum_s, keys, null_ratio=1.2, mixture=RateMixture.around(1.2, 2.0)
    )
    hit = log_k >= math.log(100)
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    return first, np.cumsum(n_cand, axis=1)


def test_false_alarms_stay_below_alpha_with_swings_share_changes_and_incidents() -> None:
    rng = np.random.default_rng(20261127)
    looks = 400
    t = np.arange(looks)
    per_look = (400 * (1 + 0.5 * np.sin(2 * np.pi * t / 100))).astype(np.int64)
    shares = np.where(t < 100, 0.01, np.where(t < 250, 0.1, 0.5))
    p_stable = np.where((t % 100 > 40) & (t % 100 < 50), 0.06, 0.01)  # shared incidents
    runs = 3000
    first, _ = _simulate(
        rng,
        runs=runs,
        looks=looks,
        per_look=per_look,
        shares=shares,
        p_stable=p_stable,
        ratio=1.2,  # exactly on the null boundary: the hardest null case
    )
    rate = float((first >= 0).mean())
    assert rate <= 0.01 + 2 * math.sqrt(0.01 * 0.99 / runs)


def test_a_doubling_of_the_failure_rate_is_caught_near_walds_limit() -> None:
    rng = np.random.default_rng(3)
    looks = 300
    first, n_cand = _simulate(
        rng,
        runs=1000,
        looks=looks,
        per_look=np.full(looks, 400),
        shares=np.full(looks, 0.05),
        p_stable=np.full(looks, 0.01),
        ratio=2.0,
    )
    assert (first >= 0).mean() > 0.95
    detected = n_cand[np.arange(first.size), first][first >= 0]
    # Wald's floor for 1.2% vs 2% at alpha = 0.01, beta = 0.2 is 1417 candidate requests.
    assert 1400 < float(np.median(detected)) < 2300


cells = st.lists(
    st.tuples(st.integers(0, 400), st.integers(0, 400), st.integers(1, 9999)),
    min_size=1,
    max_size=6,
    unique_by=lambda c: c[2],
)


@settings(max_examples=120, deadline=None)
@given(cells, st.floats(-6.0, 6.0), st.sampled_from(["around", "around_down", "away"]))
def test_scalar_evalue_of_the_bounds_matches_the_vectorised_one(
    counts: list[tuple[int, int, int]], log_null: float, kind: str
) -> None:
    # confidence_bound() bisects on a float re-implementation of conditional_log_evalue();
    # both must give the same e-value for every null ratio it probes.
    mixture = {
        "around": RateMixture.around(1.2, 2.0),
        "around_down": RateMixture.around(1.2, 0.6),
        "away": RateMixture.away(pivot=1.2, null_ratio=1.2, detect_ratio=2.0),
    }[kind]
    cand = np.array([float(c) for c, _, _ in counts])
    stab = np.array([float(s) for _, s, _ in counts])
    shares = np.array([bp / BPS for _, _, bp in counts])
    null = math.exp(log_null)
    expected = float(conditional_log_evalue(cand, stab, shares, null_ratio=null, mixture=mixture))
    components = [(r, math.log(w)) for r, w in zip(mixture.ratios, mixture.weights, strict=True)]
    got = _scalar_log_evalue(
        [(float(c), float(s), bp / BPS) for c, s, bp in counts], null, components
    )
    if math.isinf(expected):
        assert got == expected
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


MIXTURES = {
    "around": (RateMixture.around(1.2, 2.0), False),
    "around_down": (RateMixture.around(0.8, 0.5), True),
    "away": (RateMixture.away(pivot=1.2, null_ratio=1.2, detect_ratio=2.0), True),
    "away_down": (RateMixture.away(pivot=0.8, null_ratio=0.8, detect_ratio=0.5), False),
}


def _state_of(counts: list[tuple[int, int, int]]) -> ConditionalRateProcess:
    """A process holding ``(candidate bad, stable bad, share bp)`` cells, empty ones left out."""
    return ConditionalRateProcess(bad={bp: [s, c] for c, s, bp in counts if (c, s) != (0, 0)})


@settings(max_examples=200, deadline=None)
@given(cells, st.sampled_from(sorted(MIXTURES)), st.sampled_from([0.01, 0.001]))
def test_a_bound_is_the_edge_the_unfactored_e_value_draws(
    counts: list[tuple[int, int, int]], kind: str, alpha: float
) -> None:
    # The bisection tests each null through the factored ln K = N - ln L0(null); bisecting on
    # the unfactored scalar e-value itself must find the same edge, up to rounding.
    mixture, upper = MIXTURES[kind]
    process = _state_of(counts)
    got = process.confidence_bound(alpha=alpha, mixture=mixture, upper=upper)
    components = [(r, math.log(w)) for r, w in zip(mixture.ratios, mixture.weights, strict=True)]
    state = [(float(c), float(s), bp / BPS) for bp, (s, c) in sorted(process.bad.items())]
    threshold = math.log(1.0 / alpha)

    def rejected(x: float) -> bool:
        return _scalar_log_evalue(state, math.exp(x), components) >= threshold

    if not process.bad:
        assert got is None
        return
    near = math.log(max(mixture.ratios) if upper else min(mixture.ratios))
    far = math.log(1e3 if upper else 1e-3)
    expected = rejection_edge(rejected, near, far)
    if expected is None or got is None:
        # Only a far end within rounding of the threshold may be judged apart.
        edge_value = _scalar_log_evalue(state, math.exp(far), components)
        assert expected is got or edge_value == pytest.approx(threshold, rel=1e-9)
        return
    assert math.log(got) == pytest.approx(expected, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(cells, st.floats(-6.0, 6.0), st.sampled_from(sorted(MIXTURES)))
def test_a_states_e_value_is_the_vectorised_formula_s(
    counts: list[tuple[int, int, int]], log_null: float, kind: str
) -> None:
    # log_e_value() takes the factored form N - ln L0(null); numpy's conditional_log_evalue
    # is the formula as written (each component's ratio of likelihoods).
    mixture, _ = MIXTURES[kind]
    process = _state_of(counts)
    null = math.exp(log_null)
    got = process.log_e_value(null_ratio=null, mixture=mixture)
    if not process.bad:
        assert got == 0.0
        return
    keys = sorted(process.bad)
    expected = float(conditional_log_evalue(
        [process.bad[k][1] for k in keys], [process.bad[k][0] for k in keys],
        [k / BPS for k in keys], null_ratio=null, mixture=mixture,
    ))  # fmt: skip
    if math.isinf(expected):
        assert got == expected
    else:
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # The memo of the numerator is keyed by the counts: new counts, a new value.
    process.fold(candidate=[True], share_bp=[keys[0]], bad=[True])
    again = process.log_e_value(null_ratio=null, mixture=mixture)
    fresh = ConditionalRateProcess.from_dict(process.to_dict())
    assert again == fresh.log_e_value(null_ratio=null, mixture=mixture)
