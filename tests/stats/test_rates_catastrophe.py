"""Catastrophes are caught within the first few bad events, and the mixture stays a test.

The rate mixture reaches from just above the tolerance out to the limit "stable never shows
it" (an infinite ratio). These tests pin the validity of that e-process exactly, by
enumerating every path of a few bad events, and its speed on large ratios.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_canary.stats import (
    LIMIT_WEIGHT,
    ConditionalRateProcess,
    RateMixture,
    candidate_share_of_bad,
    conditional_log_evalue,
)

ALPHA = 0.01


def _paths_log_k(
    paths: np.ndarray, shares: list[float], null_ratio: float, mixture: RateMixture
) -> np.ndarray:
    """ln K after each event of every path (one stratum per event, as distinct shares are)."""
    steps = [
        conditional_log_evalue(
            paths[:, :n], 1.0 - paths[:, :n], shares[:n], null_ratio=null_ratio, mixture=mixture
        )
        for n in range(1, paths.shape[1] + 1)
    ]
    return np.stack(steps, axis=1)


@settings(max_examples=40, deadline=None)
@given(
    shares=st.lists(st.floats(0.005, 0.6), min_size=1, max_size=10),
    tolerance=st.floats(0.0, 0.5),
    detect_gap=st.floats(0.05, 2.0),
    truth_below=st.floats(0.0, 1.0),
)
def test_the_mixture_is_a_test_supermartingale_by_exact_enumeration(
    shares: list[float], tolerance: float, detect_gap: float, truth_below: float
) -> None:
    # Every path of n bad events with predictable (here: arbitrary, fixed) shares. Under the
    # null boundary (true ratio = r0) E[K_n] = 1 exactly, and below it E[K_n] <= 1; Ville's
    # inequality then bounds P(sup_k K_k >= 1/alpha) by alpha, which we also check exactly.
    r0 = 1.0 + tolerance
    mixture = RateMixture.around(r0, r0 + detect_gap)
    assert math.inf in mixture.ratios
    n = len(shares)
    paths = np.asarray(list(itertools.product((0.0, 1.0), repeat=n)))
    logs = _paths_log_k(paths, shares, r0, mixture)
    for truth in (r0, r0 * (1.0 - 0.9 * truth_below)):
        q = candidate_share_of_bad(shares, truth)
        probability = np.prod(np.where(paths == 1.0, q, 1.0 - q), axis=1)
        expectation = float((probability * np.exp(logs[:, -1])).sum())
        crossing = float(probability[logs.max(axis=1) >= math.log(1.0 / ALPHA)].sum())
        assert expectation <= 1.0 + 1e-9
        if truth == r0:
            assert expectation == pytest.approx(1.0, rel=1e-9)
        assert crossing <= ALPHA + 1e-12


@settings(max_examples=60, deadline=None)
@given(share=st.floats(0.003, 0.05), tolerance=st.floats(0.0, 0.5), gap=st.floats(0.1, 2.0))
def test_with_stable_at_zero_a_breach_needs_only_the_events_the_limit_pays_for(
    share: float, tolerance: float, gap: float
) -> None:
    # Stable never shows the bad event: each candidate one multiplies the limit component by
    # 1/q0, so the breach comes by the k-th event with k ln(1/q0) >= ln(1/alpha) + ln(1/w).
    r0 = 1.0 + tolerance
    mixture = RateMixture.around(r0, r0 + gap)
    q0 = float(candidate_share_of_bad(share, r0))
    k = math.ceil((math.log(1 / ALPHA) + math.log(1 / LIMIT_WEIGHT)) / math.log(1 / q0))
    log_k = conditional_log_evalue([k], [0], [share], null_ratio=r0, mixture=mixture)
    assert float(log_k) >= math.log(1 / ALPHA)


def test_two_flags_against_a_flawless_stable_breach_at_the_canary_share() -> None:
    # The case: the default plan's safety guardrail (+25%, detect 50%), a 1% canary
    # share, stable with no flag at all. Two flagged candidate requests are enough (the SPRT
    # told "stable never flags" needs two as well: one gives ln(1/q0) = 4.39 < ln 100).
    process = ConditionalRateProcess()
    mixture = RateMixture.around(1.25, 1.5)
    process.fold(candidate=[False] * 50 + [True], share_bp=[100] * 51, bad=[False] * 50 + [True])
    assert process.log_e_value(null_ratio=1.25, mixture=mixture) < math.log(1 / ALPHA)
    process.fold(candidate=[True], share_bp=[100], bad=[True])
    assert process.log_e_value(null_ratio=1.25, mixture=mixture) >= math.log(1 / ALPHA)


def test_a_thirtyfold_failure_rate_is_caught_within_a_few_candidate_failures() -> None:
    # Failures 1% -> 30% at a 5% share: each bad event is the candidate's with q = 0.61 instead
    # of q0 = 0.059. Seeded runs, event by event: rolled back after a median of at most 5
    # candidate failures (ours before this change: 6; the SPRT told the ratio: 3).
    rng = np.random.default_rng(30)
    mixture = RateMixture.around(1.2, 2.0)
    q = float(candidate_share_of_bad(0.05, 30.0))
    needed = []
    for _ in range(400):
        y = rng.random(60) < q
        cand = np.cumsum(y)
        stab = np.cumsum(~y)
        log_k = conditional_log_evalue(
            cand[:, None], stab[:, None], [0.05], null_ratio=1.2, mixture=mixture
        )
        first = int(np.argmax(log_k >= math.log(1 / ALPHA)))
        needed.append(int(cand[first]))
    assert float(np.median(needed)) <= 5


def _exact_median_events(mixture: RateMixture, ratio: float, *, share: float, r0: float) -> int:
    """The exact median number of bad events (both arms) before ln K first reaches ln(1/alpha).

    K depends on the events only through the counts per arm, so the probability of every
    (candidate, stable) cell not yet stopped is propagated one event at a time; no sampling.
    """
    q = float(candidate_share_of_bad(share, ratio))
    n = 400
    cand = np.arange(n + 1, dtype=np.float64)[:, None] * np.ones((1, n + 1))
    log_k = conditional_log_evalue(
        cand[..., None], cand.T[..., None], [share], null_ratio=r0, mixture=mixture
    )
    stops = log_k >= math.log(1 / ALPHA)
    alive = np.zeros((n + 1, n + 1))
    alive[0, 0] = 1.0
    stopped = 0.0
    for events in range(1, n + 1):
        step = np.zeros_like(alive)
        step[1:, :] += alive[:-1, :] * q
        step[:, 1:] += alive[:, :-1] * (1.0 - q)
        stopped += float(step[stops].sum())
        step[stops] = 0.0
        alive = step
        if stopped >= 0.5:
            return events
    raise AssertionError(f"not stopped within {n} events in half the paths")


def test_a_fourfold_failure_rate_is_caught_within_1_3x_of_the_sprt_told_the_ratio() -> None:
    # Failures 1% -> 4% under a 20% tolerance and detect 100%, at a 5% share. Computed exactly:
    # the SPRT told the ratio stops after a median of 52 bad events (both arms), ours after 67
    # (1.29x); the format-3 mixture, whose first doubling had 0.127 of the prior, needed 70.
    mixture = RateMixture.around(1.2, 2.0)
    ours = _exact_median_events(mixture, 4.0, share=0.05, r0=1.2)
    truth = _exact_median_events(RateMixture((4.0,), (1.0,)), 4.0, share=0.05, r0=1.2)
    assert truth == 52
    assert ours <= 1.3 * truth


def test_the_limit_of_a_decrease_is_a_candidate_that_never_shows_the_event() -> None:
    # max_decrease: alternatives below r0, halving, down to a zero ratio.
    mixture = RateMixture.around(0.95, 0.9)
    assert mixture.ratios[-1] == 0.0
    assert all(r < 0.95 for r in mixture.ratios)
    # Stable resolves 300 requests at a 5% share, the candidate none: only the lower
    # alternatives (down to zero) can explain it, and the test rejects "ratio >= 0.95".
    log_k = conditional_log_evalue([0], [300], [0.05], null_ratio=0.95, mixture=mixture)
    assert float(log_k) >= math.log(1 / ALPHA)
    # One candidate event ends the limit component, not the test.
    assert math.isfinite(
        float(conditional_log_evalue([1], [300], [0.05], null_ratio=0.95, mixture=mixture))
    )


def test_limits_are_accepted_and_nonsense_is_not() -> None:
    assert float(candidate_share_of_bad(0.3, math.inf)) == 1.0
    assert float(candidate_share_of_bad(0.3, 0.0)) == 0.0
    mixture = RateMixture.around(1.2, 2.0)
    assert sum(mixture.weights) == pytest.approx(1.0)
    assert mixture.weights[-1] == LIMIT_WEIGHT
    # detect, the midpoint, the doubling tail beyond detect, the limit
    assert mixture.ratios[:3] == (2.0, pytest.approx(math.sqrt(2.4)), 4.0)
    # detect, the midpoint and the first doubling carry most of the prior
    assert mixture.weights[:3] == (0.52, 0.20, 0.21)
    assert mixture.ratios[-2] == 2.0 * 2**12
    assert all(r > 1.2 for r in mixture.ratios)
    with pytest.raises(ValueError, match=">= 0"):
        RateMixture(ratios=(math.nan,), weights=(1.0,))
    with pytest.raises(ValueError, match=">= 0"):
        RateMixture(ratios=(-1.0,), weights=(1.0,))
