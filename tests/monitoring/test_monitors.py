"""Monitors: events in, verdicts with evidence out, state that survives a restart."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from policy_canary.errors import InvalidMetricError, PlanError
from policy_canary.guardrails import Guardrail, GuardrailAction, ModelPrice
from policy_canary.monitoring import (
    Baseline,
    MonitorEvent,
    RolloutMonitor,
    StagePlan,
    VerdictStatus,
    preflight,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rule(**fields: Any) -> Guardrail:
    return Guardrail.from_mapping(fields)


def traffic(
    n: int,
    *,
    seed: int,
    share_bp: int = 1000,
    error: tuple[float, float] = (0.01, 0.01),
    latency_mu: tuple[float, float] = (7.0, 7.0),
    quality: tuple[float, float] = (0.8, 0.8),
    cost: tuple[float, float] = (0.02, 0.02),
) -> list[MonitorEvent]:
    """n requests split at ``share_bp``; tuples give (stable, candidate) parameters."""
    rng = np.random.default_rng(seed)
    cand = rng.random(n) < share_bp / 10_000
    arm = cand.astype(int)
    err = rng.random(n) < np.asarray(error)[arm]
    lat = np.exp(rng.normal(np.asarray(latency_mu)[arm], 0.5))
    q = np.clip(rng.normal(np.asarray(quality)[arm], 0.1), 0, 1)
    c = rng.gamma(2.0, np.asarray(cost)[arm] / 2)
    return [
        MonitorEvent(
            arm="candidate" if cand[i] else "stable",
            traffic_bp=share_bp,
            at=T0 + timedelta(seconds=i),
            latency_ms=float(lat[i]),
            error=bool(err[i]),
            quality=float(q[i]),
            cost_usd=float(c[i]),
        )
        for i in range(n)
    ]


BASELINE = Baseline.from_events(traffic(4000, seed=99, share_bp=0))


def by_name(monitor: RolloutMonitor, stage: str | None = None) -> dict[str, Any]:
    return {v.guardrail: v for v in monitor.verdicts(stage)}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"arm": "canary"}, "arm must be"),
        ({"traffic_bp": 10_001}, "traffic_bp"),
        ({"latency_ms": -1.0}, "latency_ms must be"),
        ({"latency_ms": math.nan}, "latency_ms must be"),
        ({"quality": 1.5}, "quality must lie"),
        ({"input_tokens": -3}, "input_tokens"),
        ({"metrics": {"score": math.inf}}, "metrics.score"),
    ],
)
def test_invalid_events_are_refused(fields: dict[str, Any], message: str) -> None:
    data: dict[str, Any] = {"arm": "stable", "traffic_bp": 100, "at": T0, **fields}
    with pytest.raises(InvalidMetricError, match=message):
        MonitorEvent(**data)


def test_baseline_freezes_stables_quantiles_and_rates() -> None:
    events = traffic(4000, seed=1, share_bp=0)
    # The caller picks events by version: one the stable version served as a candidate (before
    # its promotion) is its history too.
    events.append(MonitorEvent(arm="candidate", traffic_bp=100, at=T0, latency_ms=1e3))
    baseline = Baseline.from_events(events)
    latency = baseline.get("latency_ms")
    assert latency is not None
    assert latency.count == 4001
    assert latency.quantiles["p50"] == pytest.approx(math.exp(7.0), rel=0.05)
    assert latency.log_mean == pytest.approx(7.0, abs=0.03)
    error = baseline.get("error")
    assert error is not None
    assert error.rate == pytest.approx(0.01, abs=0.005)
    assert Baseline.from_dict(json.loads(json.dumps(baseline.to_dict()))) == baseline


def test_alpha_is_split_across_statistical_guardrails_only() -> None:
    monitor = RolloutMonitor(
        [
            rule(metric="error", max_increase="20%"),
            rule(metric="latency_ms", max_increase="10%"),
            rule(name="crit", metric="safety_flags", tripwire=True, flags=["critical"]),
        ],
        alpha=0.01,
        baseline=BASELINE,
    )
    assert monitor.alpha_per_guardrail == pytest.approx(0.005)


def test_few_samples_give_insufficient_data_not_pass() -> None:
    monitor = RolloutMonitor([rule(metric="error", max_increase="20%")], baseline=BASELINE)
    monitor.fold(traffic(500, seed=2))  # about 50 candidate requests < min_samples 100
    verdict = monitor.verdicts()[0]
    assert verdict.status is VerdictStatus.INSUFFICIENT_DATA
    assert "100 per arm are needed" in verdict.reason
    assert verdict.evidence["n_candidate"] < 100


def test_a_doubled_error_rate_breaches_with_evidence() -> None:
    monitor = RolloutMonitor(
        [rule(metric="error", max_increase="20%", detect="100%")], baseline=BASELINE
    )
    monitor.fold(traffic(60_000, seed=3, error=(0.01, 0.02)))
    verdict = monitor.verdicts()[0]
    assert verdict.status is VerdictStatus.BREACH
    assert verdict.action is GuardrailAction.ROLLBACK
    ev = verdict.evidence
    assert ev["e_value"] >= ev["e_value_threshold"] == pytest.approx(100.0)
    assert ev["threshold_ratio"] == pytest.approx(1.2)
    assert ev["rate_candidate"] == pytest.approx(0.02, abs=0.005)
    assert ev["ratio_lower"] > 1.2
    assert verdict.reason.startswith("error: error rate is ")
    assert "establishes a rise beyond 20%" in verdict.reason


def test_equal_arms_pass_and_become_non_inferior() -> None:
    monitor = RolloutMonitor(
        [rule(metric="latency_ms", max_increase="10%"), rule(metric="quality", max_decrease="5%")],
        baseline=BASELINE,
    )
    monitor.fold(traffic(40_000, seed=4))
    latency, quality = monitor.verdicts()
    assert latency.status is VerdictStatus.PASS
    assert latency.non_inferior
    assert latency.evidence["scale"] == "log1p"
    assert latency.evidence["upper"] < math.log(1.1)
    assert quality.status is VerdictStatus.PASS
    assert quality.non_inferior


def test_slower_candidate_breaches_mean_and_quantile_guardrails() -> None:
    monitor = RolloutMonitor(
        [
            rule(name="mean", metric="latency_ms", max_increase="5%", detect="20%"),
            rule(name="p95", metric="latency_ms", statistic="p95", max_increase="20%"),
            rule(name="slo", metric="latency_ms", statistic="p95", max=4000),
        ],
        baseline=BASELINE,
    )
    monitor.fold(traffic(30_000, seed=5, latency_mu=(7.0, 7.0 + math.log(1.3))))
    verdicts = by_name(monitor)
    assert verdicts["mean"].status is VerdictStatus.BREACH
    assert verdicts["p95"].status is VerdictStatus.BREACH
    assert verdicts["p95"].evidence["baseline_line"] == pytest.approx(
        BASELINE.metrics["latency_ms"].quantiles["p95"]
    )
    # exp(7.26 + 1.645 * 0.5) is about 3,200 ms: the candidate's p95 is still below 4000.
    assert verdicts["slo"].status is VerdictStatus.PASS


def test_stage_overrides_choose_the_threshold_without_restarting_the_test() -> None:
    monitor = RolloutMonitor(
        [rule(name="err", metric="error", max_increase="50%", detect="150%")],
        baseline=BASELINE,
        stages={"validation": {"err": {"max_increase": "10%"}}, "canary": {}},
    )
    monitor.fold(traffic(60_000, seed=6, error=(0.01, 0.015)))
    assert monitor.verdicts("canary")[0].status is VerdictStatus.PASS
    strict = monitor.verdicts("validation")[0]
    assert strict.evidence["threshold_ratio"] == pytest.approx(1.1)
    assert strict.evidence["e_value"] > monitor.verdicts("canary")[0].evidence["e_value"]
    # A stage without overrides reads the plan's own thresholds.
    assert monitor.verdicts("soak")[0].evidence["threshold_ratio"] == pytest.approx(1.5)


def test_a_tripwire_fires_on_the_first_flagged_candidate_request_only() -> None:
    monitor = RolloutMonitor(
        [rule(name="crit", metric="safety_flags", tripwire=True, flags=["critical"])]
    )
    stable_hit = MonitorEvent(arm="stable", traffic_bp=100, at=T0, safety_flags=("critical",))
    monitor.fold([stable_hit])
    first = monitor.verdicts()[0]
    assert first.status is VerdictStatus.PASS
    assert first.tripwire
    hit = MonitorEvent(
        arm="candidate", traffic_bp=100, at=T0 + timedelta(minutes=1), safety_flags=("critical",)
    )
    monitor.fold([hit])
    verdict = monitor.verdicts()[0]
    assert verdict.status is VerdictStatus.BREACH
    assert verdict.tripwire
    assert verdict.evidence["events"] == 1
    assert verdict.evidence["first_at"] == hit.at.isoformat()


def test_late_feedback_adds_quality_but_not_requests() -> None:
    monitor = RolloutMonitor(
        [rule(metric="error", max_increase="20%"), rule(metric="quality", min=0.5)]
    )
    request = MonitorEvent(arm="candidate", traffic_bp=500, at=T0, error=True)
    feedback = MonitorEvent(
        arm="candidate",
        traffic_bp=500,
        at=T0 + timedelta(minutes=5),
        quality=0.9,
        feedback=True,
        error=True,  # ignored: feedback never re-reports request metrics
    )
    monitor.fold([request, feedback])
    error, quality = monitor.verdicts()
    assert error.evidence["n_candidate"] == 1
    assert error.evidence["bad_candidate"] == 1
    assert quality.evidence["n_candidate"] == 1
    assert quality.evidence["mean_candidate"] == pytest.approx(0.9)


def test_custom_metrics_infer_rate_or_mean_from_their_values() -> None:
    monitor = RolloutMonitor(
        [
            rule(metric="metrics.resolved", max_decrease="10%"),
            rule(metric="metrics.steps", max_increase="20%"),
        ],
    )
    assert monitor.verdicts()[0].status is VerdictStatus.INSUFFICIENT_DATA
    rng = np.random.default_rng(8)
    events = [
        MonitorEvent(
            arm="candidate" if rng.random() < 0.2 else "stable",
            traffic_bp=2000,
            at=T0,
            metrics={"resolved": bool(rng.random() < 0.7), "steps": float(rng.poisson(4))},
        )
        for _ in range(3000)
    ]
    monitor.fold(events)
    resolved, steps = monitor.verdicts()
    assert resolved.evidence["statistic"] == "rate"
    assert steps.evidence["statistic"] == "mean"
    assert resolved.status is VerdictStatus.PASS
    assert steps.status is VerdictStatus.PASS


def test_cost_comes_from_tokens_and_the_price_table() -> None:
    prices = {"m": ModelPrice(input_usd_per_1m=1.0, output_usd_per_1m=4.0)}
    monitor = RolloutMonitor([rule(metric="cost_usd", max=0.01)], prices=prices)
    events = [
        MonitorEvent(
            arm="candidate", traffic_bp=500, at=T0, model="m", input_tokens=2000, output_tokens=500
        )
        for _ in range(200)
    ]
    monitor.fold(events)
    verdict = monitor.verdicts()[0]
    assert verdict.evidence["mean_candidate"] == pytest.approx(0.004)  # 2000*1e-6 + 500*4e-6
    assert verdict.status is VerdictStatus.PASS
    assert verdict.non_inferior


def test_a_costly_candidate_breaks_a_mean_cost_slo() -> None:
    monitor = RolloutMonitor([rule(metric="cost_usd", max=0.02)])
    monitor.fold(traffic(20_000, seed=9, cost=(0.02, 0.03)))
    verdict = monitor.verdicts()[0]
    assert verdict.status is VerdictStatus.BREACH
    assert "breaks the SLO" in verdict.reason


def test_state_survives_a_restart_and_continues_the_same_test() -> None:
    guardrails = [
        rule(metric="error", max_increase="20%"),
        rule(metric="latency_ms", statistic="p95", max_increase="20%"),
        rule(metric="latency_ms", max_increase="10%"),
        rule(metric="quality", min=0.7),
        rule(metric="cost_usd", max_increase="20%"),
        rule(name="crit", metric="safety_flags", tripwire=True, flags=["critical"]),
        rule(metric="metrics.resolved", max_decrease="10%"),
    ]
    stages = {"validation": {"error": {"max_increase": "10%"}, "cost_usd": {"max_increase": "10%"}}}
    events = traffic(8000, seed=10, error=(0.01, 0.03))
    whole = RolloutMonitor(guardrails, baseline=BASELINE, stages=stages)
    whole.fold(events)
    first = RolloutMonitor(guardrails, baseline=BASELINE, stages=stages)
    first.fold(events[:3000])
    restored = RolloutMonitor.from_json(first.to_json())
    restored.fold(events[3000:])
    for stage in (None, "validation"):
        for a, b in zip(whole.verdicts(stage), restored.verdicts(stage), strict=True):
            assert (a.guardrail, a.status, a.non_inferior) == (
                b.guardrail,
                b.status,
                b.non_inferior,
            )
            assert a.evidence.keys() == b.evidence.keys()
            for key, value in a.evidence.items():
                if isinstance(value, float):
                    # Running sums are added in a different order: equal up to rounding.
                    assert b.evidence[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
                else:
                    assert b.evidence[key] == value, key
    assert restored.events_folded == 8000
    # Verdicts go into incident bundles: they must be strict JSON.
    json.dumps([v.to_dict() for v in restored.verdicts("validation")], allow_nan=False)


def test_huge_values_from_the_store_are_rejected_not_folded() -> None:
    # The SDK refuses |x| > 1e15; rows written by other means must not overflow a test's
    # sums of squares, which would make the persisted state unwritable (non-finite JSON).
    events = [
        replace(e, metrics={"tokens": 1e300 if i % 7 == 0 else 5.0}, cost_usd=1e200)
        for i, e in enumerate(traffic(2000, seed=4))
    ]
    guardrails = [
        rule(metric="metrics.tokens", max_increase="10%"),
        rule(metric="cost_usd", max_increase="10%"),
        rule(metric="cost_usd", name="cost_slo", max=0.05),
    ]
    monitor = RolloutMonitor(guardrails, baseline=BASELINE)
    monitor.fold(events)
    verdicts = by_name(monitor)
    assert verdicts["metrics.tokens"].evidence["rejected_values"] == (2000 + 6) // 7
    assert verdicts["cost_usd"].evidence["rejected_values"] == 2000
    assert verdicts["cost_slo"].evidence["rejected_values"] == 2000
    RolloutMonitor.from_json(monitor.to_json())  # strict JSON, and it loads


def test_a_state_written_in_another_format_is_refused_with_what_to_do() -> None:
    state = RolloutMonitor([rule(metric="latency_ms", max_increase="10%")]).to_dict()
    state["format"] = 1
    with pytest.raises(PlanError, match=r"format 1 cannot be continued.*abort the rollout"):
        RolloutMonitor.from_dict(state)


def test_preflight_sizes_each_stage_and_warns_when_it_cannot_detect() -> None:
    guardrails = [
        rule(name="err", metric="error", max_increase="20%", detect="100%"),
        rule(name="crit", metric="safety_flags", tripwire=True, flags=["critical"]),
    ]
    stages = [
        StagePlan("canary", 100, timedelta(minutes=30), timedelta(hours=1)),
        StagePlan("validation", 1000, timedelta(hours=1), timedelta(hours=12)),
    ]
    rows = preflight(guardrails, stages, requests_per_second=10.0, baseline_rates={"error": 0.01})
    assert [(r.stage, r.guardrail) for r in rows] == [
        ("canary", "err"),
        ("canary", "crit"),
        ("validation", "err"),
        ("validation", "crit"),
    ]
    canary, tripwire, validation = rows[0], rows[1], rows[2]
    # alpha_m = 0.01 / 2: the tripwire takes no budget, the built-in outcomes_recorded
    # guardrail one share; Wald's floor for 1.2% vs 2% at that alpha is 1663.
    assert canary.wald_floor == pytest.approx(1662.6, abs=1)
    assert canary.expected_candidate_requests is not None
    # A power-one test pays ln(1/alpha) + ln(1/MAIN_WEIGHT) where Wald pays ~3.19: ~1.6x.
    assert 1.4 < canary.expected_candidate_requests / canary.wald_floor < 1.7
    assert canary.warning is not None
    assert "cannot detect err" in canary.warning
    assert validation.warning is None
    assert validation.expected_duration is not None
    assert validation.expected_duration < timedelta(hours=12)
    assert tripwire.expected_candidate_requests is None
    assert tripwire.note is not None


def test_bad_rollout_settings_raise_plan_errors() -> None:
    g = rule(metric="error", max_increase="20%")
    with pytest.raises(PlanError, match="alpha must lie in"):
        RolloutMonitor([g], alpha=0.0)
    with pytest.raises(PlanError, match="unknown guardrails latency"):
        RolloutMonitor([g], stages={"validation": {"latency": {"max_increase": "5%"}}})
    with pytest.raises(PlanError, match="two guardrails are named"):
        RolloutMonitor([g, g])


def test_a_quality_quantile_counts_requests_below_stables_frozen_quantile() -> None:
    monitor = RolloutMonitor(
        [rule(metric="quality", statistic="p50", max_increase="20%", detect="60%")],
        baseline=BASELINE,
    )
    monitor.fold(traffic(30_000, seed=12, quality=(0.8, 0.7)))
    verdict = monitor.verdicts()[0]
    assert verdict.status is VerdictStatus.BREACH
    # Half of stable's scores fall below its frozen median; about 84% of the candidate's do.
    assert verdict.evidence["rate_stable"] == pytest.approx(0.5, abs=0.03)
    assert verdict.evidence["rate_candidate"] == pytest.approx(0.84, abs=0.03)


def test_a_flag_count_is_a_flagged_request_but_fires_no_named_tripwire() -> None:
    from datetime import UTC, datetime

    from policy_canary.guardrails import Guardrail
    from policy_canary.monitoring import MonitorEvent, RolloutMonitor

    at = datetime(2026, 1, 1, tzinfo=UTC)
    rate = Guardrail.from_mapping({"name": "flags", "metric": "safety_flags", "max_increase": 0.25})
    named = Guardrail.from_mapping(
        {"name": "pii", "metric": "safety_flags", "max_increase": 0.25, "flags": ["pii"]}
    )
    trip = Guardrail.from_mapping(
        {"name": "critical", "metric": "safety_flags", "tripwire": True, "flags": ["critical"]}
    )
    monitor = RolloutMonitor([rate, named, trip])
    counted = [MonitorEvent(arm="candidate", traffic_bp=5000, at=at, flag_count=3)] * 40
    clean = [MonitorEvent(arm="stable", traffic_bp=5000, at=at)] * 40
    monitor.fold(counted + clean)
    verdicts = {v.guardrail: v for v in monitor.verdicts()}
    assert verdicts["flags"].status.is_breach()
    assert verdicts["flags"].evidence["bad_candidate"] == 40
    # A count cannot say whether 'pii' or 'critical' fired: not an observation for them.
    assert verdicts["pii"].evidence["n_candidate"] == 0
    assert not verdicts["critical"].status.is_breach()
    assert MonitorEvent(arm="stable", traffic_bp=0, at=at, safety_flags=("a", "b")).flag_count == 2
