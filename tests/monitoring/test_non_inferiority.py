"""Non-inferiority of rate guardrails: the ratio route, the absolute (rare-event) route."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from policy_canary.guardrails import Guardrail
from policy_canary.monitoring import MonitorEvent, RolloutMonitor, Verdict, VerdictStatus
from policy_canary.stats import bernoulli_upper_bound

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rule(**fields: Any) -> Guardrail:
    return Guardrail.from_mapping(fields)


def requests(
    n: int, *, seed: int, share_bp: int, error: tuple[float, float], flag: tuple[float, float]
) -> list[MonitorEvent]:
    """n requests at ``share_bp``; (stable, candidate) error and safety-flag rates."""
    rng = np.random.default_rng(seed)
    cand = rng.random(n) < share_bp / 10_000
    arm = cand.astype(int)
    err = rng.random(n) < np.asarray(error)[arm]
    flagged = rng.random(n) < np.asarray(flag)[arm]
    return [
        MonitorEvent(
            arm="candidate" if cand[i] else "stable",
            traffic_bp=share_bp,
            at=T0 + timedelta(seconds=i),
            error=bool(err[i]),
            safety_flags=("pii_leak",) if flagged[i] else (),
        )
        for i in range(n)
    ]


def by_name(verdicts: list[Verdict]) -> dict[str, Verdict]:
    return {v.guardrail: v for v in verdicts}


def test_zero_events_in_both_arms_become_non_inferior_through_the_absolute_route() -> None:
    flags = rule(name="flags", metric="safety_flags", max_increase="25%", negligible="0.5%")
    monitor = RolloutMonitor([flags], alpha=0.01)
    # 1,500 clean candidate requests: the bound (alpha/2 = 0.5%) is about 0.42%.
    monitor.fold(requests(3000, seed=1, share_bp=5000, error=(0, 0), flag=(0, 0)))
    (verdict,) = monitor.verdicts()
    ev = verdict.evidence
    n_cand = ev["n_candidate"]
    assert verdict.status is VerdictStatus.PASS
    assert verdict.non_inferior
    assert ev["non_inferiority_route"] == "absolute"
    assert ev["non_inferiority_alpha"] == pytest.approx(0.005)
    assert ev["negligible"] == pytest.approx(0.005)
    assert ev["rate_candidate_upper"] == pytest.approx(
        bernoulli_upper_bound(0, n_cand, alpha=0.005)
    )
    assert ev["non_inferiority_bound"] == ev["rate_candidate_upper"] < 0.005
    assert ev["ratio_upper"] is None  # no bad event: the ratio cannot be bounded at all
    assert "within the negligible 0.5%" in verdict.reason


def test_the_absolute_route_needs_enough_clean_requests_and_can_be_turned_off() -> None:
    flags = rule(name="flags", metric="safety_flags", max_increase="25%")  # default 0.1%
    stages = {"strict": {"flags": {"negligible": 0}}}
    monitor = RolloutMonitor([flags], alpha=0.01, stages=stages)
    monitor.fold(requests(3000, seed=2, share_bp=5000, error=(0, 0), flag=(0, 0)))
    default, off = monitor.verdicts()[0], monitor.verdicts("strict")[0]
    # ~1,500 clean requests bound the rate near 0.45%, not below the default 0.1%.
    assert default.status is VerdictStatus.PASS
    assert not default.non_inferior
    assert default.evidence["rate_candidate_upper"] > 0.001
    assert default.evidence["non_inferiority_route"] is None
    assert not off.non_inferior
    assert off.evidence["rate_candidate_upper"] is None
    assert off.evidence["non_inferiority_alpha"] == pytest.approx(0.01)  # no split when off
    # ~10,000 clean candidate requests: below 0.1% (needs about ln(800)/0.001 = 6,700).
    monitor.fold(requests(17_000, seed=3, share_bp=5000, error=(0, 0), flag=(0, 0)))
    default, off = monitor.verdicts()[0], monitor.verdicts("strict")[0]
    assert default.non_inferior
    assert default.evidence["non_inferiority_route"] == "absolute"
    assert not off.non_inferior


def test_a_frequent_rate_uses_the_ratio_route() -> None:
    error = rule(metric="error", max_increase="50%")
    monitor = RolloutMonitor([error], alpha=0.01)
    monitor.fold(requests(60_000, seed=4, share_bp=5000, error=(0.05, 0.05), flag=(0, 0)))
    (verdict,) = monitor.verdicts()
    ev = verdict.evidence
    assert verdict.non_inferior
    assert ev["non_inferiority_route"] == "ratio"
    assert ev["non_inferiority_bound"] == ev["ratio_upper"] < 1.5
    assert ev["rate_candidate_upper"] > ev["negligible"]  # 5% is not negligible
    assert "the ratio is below" in verdict.reason


@pytest.mark.parametrize(
    ("stable", "candidate", "negligible"),
    [
        ((0.01, 0.0), (0.03, 0.0), None),  # 3x the failures
        ((0.002, 0.0), (0.006, 0.0), "0.5%"),  # 3x, below a generous negligible's reach
        ((0.0, 0.0), (0.0, 0.006), None),  # flags where stable has none (the bad agent)
    ],
)
@pytest.mark.parametrize("seed", [11, 12])
def test_a_materially_worse_candidate_is_never_non_inferior(
    stable: tuple[float, float], candidate: tuple[float, float], negligible: str | None, seed: int
) -> None:
    extra = {} if negligible is None else {"negligible": negligible}
    guardrails = [
        rule(name="errors", metric="error", max_increase="20%", **extra),
        rule(name="flags", metric="safety_flags", max_increase="25%"),
    ]
    stages = {"validation": {"errors": {"max_increase": "10%"}}}
    monitor = RolloutMonitor(guardrails, alpha=0.01, stages=stages)
    rng = np.random.default_rng(seed)
    worse = "errors" if candidate[0] > stable[0] else "flags"
    for look in range(12):
        monitor.fold(
            requests(
                5000,
                seed=int(rng.integers(1 << 30)),
                share_bp=1000,
                error=(stable[0], candidate[0]),
                flag=(stable[1], candidate[1]),
            )
        )
        for stage in (None, "validation"):
            verdict = by_name(monitor.verdicts(stage))[worse]
            assert not verdict.non_inferior, (look, stage, verdict.evidence)
    final = by_name(monitor.verdicts())[worse]
    if stable[0] >= 0.01:
        assert final.status is VerdictStatus.BREACH  # 6,000 candidate requests: plenty for 3x
    else:
        assert final.evidence["rate_candidate_upper"] > final.evidence["negligible"]


def test_new_evidence_survives_a_json_round_trip() -> None:
    guardrails = [
        rule(name="flags", metric="safety_flags", max_increase="25%", negligible="0.2%"),
        rule(metric="error", max_increase="30%"),
    ]
    stages = {"validation": {"flags": {"negligible": "0.3%"}, "error": {"max_increase": "20%"}}}
    events = requests(20_000, seed=7, share_bp=1000, error=(0.02, 0.02), flag=(0, 0))
    whole = RolloutMonitor(guardrails, alpha=0.01, stages=stages)
    whole.fold(events)
    first = RolloutMonitor(guardrails, alpha=0.01, stages=stages)
    first.fold(events[:8000])
    text = first.to_json()
    assert json.loads(text)["guardrails"][0]["negligible"] == pytest.approx(0.002)
    restored = RolloutMonitor.from_json(text)
    restored.fold(events[8000:])
    for stage in (None, "validation"):
        for a, b in zip(whole.verdicts(stage), restored.verdicts(stage), strict=True):
            assert (a.status, a.non_inferior, a.reason) == (b.status, b.non_inferior, b.reason)
            for key in ("non_inferiority_route", "non_inferiority_bound", "negligible"):
                x, y = a.evidence[key], b.evidence[key]
                assert x == y or (isinstance(x, float) and math.isclose(x, y))
    flags = by_name(whole.verdicts("validation"))["flags"]
    assert flags.evidence["negligible"] == pytest.approx(0.003)
