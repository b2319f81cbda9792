"""Quantile lines frozen late, unreported metrics, and what a passing verdict may claim."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_canary.guardrails import Guardrail
from policy_canary.monitoring import Baseline, MonitorEvent, RolloutMonitor, VerdictStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)
P95 = Guardrail.from_mapping(
    {"name": "latency_p95", "metric": "latency_ms", "statistic": "p95", "max_increase": "25%"}
)


def requests(
    n: int, *, seed: int, share_bp: int = 1000, slow: float = 1.0, start: int = 0
) -> list[MonitorEvent]:
    """n requests with lognormal latency; the candidate's ``slow`` times slower."""
    rng = np.random.default_rng(seed)
    cand = rng.random(n) < share_bp / 10_000
    lat = 200.0 * np.exp(rng.normal(0.0, 0.5, n)) * np.where(cand, slow, 1.0)
    return [
        MonitorEvent(
            arm="candidate" if cand[i] else "stable",
            traffic_bp=share_bp,
            at=T0 + timedelta(seconds=start + i),
            latency_ms=float(lat[i]),
            error=False,
        )
        for i in range(n)
    ]


def p95(monitor: RolloutMonitor) -> Any:
    (verdict,) = [v for v in monitor.verdicts() if v.guardrail == "latency_p95"]
    return verdict


def test_without_stable_history_the_line_is_frozen_from_stables_first_400_observations() -> None:
    # Given a rollout that starts with no stable history
    monitor = RolloutMonitor([P95])
    events = requests(3000, seed=1)
    monitor.fold(events[:100])
    waiting = p95(monitor)
    assert waiting.status is VerdictStatus.INSUFFICIENT_DATA
    assert waiting.evidence["line_observations"] == sum(not e.is_candidate for e in events[:100])
    assert "after 400 observations" in waiting.reason

    # When the stable arm reaches 400 observations
    monitor.fold(events[100:])

    # Then the line is their p95, and only the requests after that point are counted
    stable = [e for e in events if not e.is_candidate]
    cut = events.index(stable[399]) + 1
    line = float(np.quantile([e.latency_ms for e in stable[:400]], 0.95))
    verdict = p95(monitor)
    assert verdict.evidence["baseline_line"] == line
    assert verdict.evidence["line_source"] == "concurrent"
    later = events[cut:]
    assert verdict.evidence["n_candidate"] == sum(e.is_candidate for e in later)
    assert verdict.evidence["n_stable"] == sum(not e.is_candidate for e in later)
    assert verdict.evidence["bad_stable"] == sum(
        e.latency_ms > line for e in later if not e.is_candidate and e.latency_ms
    )
    assert "frozen from 400 of stable's concurrent observations" in verdict.reason


def test_a_short_stable_history_is_not_enough_for_a_line() -> None:
    # 100 stable requests hold about five beyond their p95: too few to freeze it from.
    short = Baseline.from_events(requests(100, seed=2, share_bp=0))
    monitor = RolloutMonitor([P95], baseline=short)
    monitor.fold(requests(50, seed=3))
    assert p95(monitor).evidence["line_source"] == "concurrent"
    enough = Baseline.from_events(requests(400, seed=2, share_bp=0))
    monitor = RolloutMonitor([P95], baseline=enough)
    monitor.fold(requests(50, seed=3))
    assert p95(monitor).evidence["line_source"] == "baseline"


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=1500), max_size=6), seed=st.integers(0, 9))
def test_batching_and_restarts_freeze_the_same_line_at_the_same_point(
    cuts: list[int], seed: int
) -> None:
    # Given the same events folded at once, or in batches with a restart between each
    events = requests(1500, seed=seed)
    whole = RolloutMonitor([P95])
    whole.fold(events)
    pieces = RolloutMonitor([P95])
    bounds = [0, *sorted(cuts), len(events)]
    for lo, hi in itertools.pairwise(bounds):
        pieces.fold(events[lo:hi])
        pieces = RolloutMonitor.from_json(pieces.to_json())
    # Then both states (and so both verdicts) are the same
    assert pieces.to_json() == whole.to_json()
    assert p95(pieces) == p95(whole)


def test_a_slow_candidate_breaches_a_late_frozen_line() -> None:
    monitor = RolloutMonitor([P95])
    monitor.fold(requests(6000, seed=4, slow=1.5))
    verdict = p95(monitor)
    assert verdict.status is VerdictStatus.BREACH
    assert verdict.evidence["line_source"] == "concurrent"


def test_a_metric_neither_arm_reports_is_named_with_the_request_count() -> None:
    quality = Guardrail.from_mapping({"name": "quality", "metric": "quality", "max_decrease": "5%"})
    monitor = RolloutMonitor([quality, P95])
    assert monitor.verdicts()[0].reason == "quality: no requests recorded on either arm yet."
    monitor.fold(requests(12_000, seed=5))
    verdict = monitor.verdicts()[0]
    assert verdict.status is VerdictStatus.INSUFFICIENT_DATA
    assert verdict.reason == (
        "quality: no observations on either arm after 12,000 requests; record quality or "
        "drop this guardrail."
    )
    assert verdict.evidence["unreported"] is True
    # The count survives a restart.
    again = RolloutMonitor.from_json(monitor.to_json())
    assert again.verdicts()[0].reason == verdict.reason


def flagged(n: int, *, stable_bad: int, cand_bad: int, cand_n: int) -> list[MonitorEvent]:
    rows = []
    for i in range(n):
        cand = i < cand_n
        bad = i < cand_bad if cand else i - cand_n < stable_bad
        rows.append(
            MonitorEvent(
                arm="candidate" if cand else "stable",
                traffic_bp=100,
                at=T0 + timedelta(seconds=i),
                safety_flags=("toxic",) if bad else (),
            )
        )
    return rows


def test_a_pass_without_evidence_of_absence_says_so_with_counts() -> None:
    # Given stable at exactly 0% and a candidate at 1% (tolerance +25%): no breach yet
    flags = Guardrail.from_mapping(
        {"name": "safety_flag_rate", "metric": "safety_flags", "max_increase": "25%",
         "min_samples": 50}
    )  # fmt: skip
    monitor = RolloutMonitor([flags])
    monitor.fold(flagged(10_100, stable_bad=0, cand_bad=1, cand_n=100))
    (verdict,) = monitor.verdicts()
    assert verdict.status is VerdictStatus.PASS
    # Then the reason neither claims "no rise" nor prints an undefined ratio
    assert "shows no rise" not in verdict.reason
    assert "xn/a" not in verdict.reason
    assert "1% (1 of 100) on the candidate vs 0% (0 of 10,000) on stable" in verdict.reason
    assert "a rise beyond 25% is not established" in verdict.reason


def test_a_pass_whose_estimate_is_past_the_tolerance_says_neither_is_established() -> None:
    errors = Guardrail.from_mapping(
        {"name": "error_rate", "metric": "safety_flags", "max_increase": "25%", "min_samples": 50}
    )
    monitor = RolloutMonitor([errors])
    monitor.fold(flagged(10_100, stable_bad=100, cand_bad=2, cand_n=100))
    (verdict,) = monitor.verdicts()
    assert verdict.status is VerdictStatus.PASS
    assert "(x2)" in verdict.reason
    assert "neither a breach nor its absence is established yet" in verdict.reason


def test_a_state_stored_before_late_lines_goes_on_with_the_line_it_counted_against() -> None:
    # Given a state written before lines were frozen late (no line in the judge's state)
    short = Baseline.from_events(requests(100, seed=6, share_bp=0))
    monitor = RolloutMonitor([P95], baseline=short)
    monitor.fold(requests(3000, seed=7))
    data = monitor.to_dict()
    old = data["judges"]["latency_p95"]
    data["judges"]["latency_p95"] = {k: old[k] for k in ("process", "rejected")}
    # Then it continues against the start's line, not a new one
    again = RolloutMonitor.from_dict(data)
    again.fold(requests(500, seed=8, start=3000))
    verdict = p95(again)
    assert verdict.evidence["line_source"] == "baseline"
    line = short.get("latency_ms")
    assert line is not None
    assert verdict.evidence["baseline_line"] == line.quantiles["p95"]
