"""Guardrail definitions: YAML-friendly values, defaults, overrides and clear PlanErrors."""

from __future__ import annotations

from typing import Any

import pytest

from policy_canary.errors import PlanError
from policy_canary.guardrails import (
    DEFAULT_NEGLIGIBLE,
    Direction,
    Guardrail,
    GuardrailAction,
    GuardrailKind,
    ModelPrice,
    Statistic,
    check_unique_names,
    price_of,
    resolve_stage_guardrails,
)


def test_percentages_and_fractions_read_the_same() -> None:
    a = Guardrail.from_mapping({"metric": "error", "max_increase": "20%"})
    b = Guardrail.from_mapping({"metric": "error", "max_increase": 0.2})
    assert a.max_increase == pytest.approx(0.2)
    assert a == b
    assert a.name == "error"
    assert a.kind is GuardrailKind.RELATIVE
    assert a.worse is Direction.UP


def test_defaults_follow_the_documented_rules() -> None:
    g = Guardrail.from_mapping({"metric": "error", "max_increase": "20%"})
    assert g.effective_detect == pytest.approx(0.4)  # twice the tolerance
    assert g.min_samples == 100
    assert g.action is GuardrailAction.ROLLBACK
    assert Guardrail.from_mapping({"metric": "error", "max_increase": 0}).effective_detect == 0.1
    slo = Guardrail.from_mapping({"metric": "safety_flags", "max": "0.5%"})
    assert slo.kind is GuardrailKind.SLO
    assert slo.tolerance == pytest.approx(0.005)
    assert slo.effective_detect == 0.5
    quality = Guardrail.from_mapping({"metric": "quality", "max_delta": 0.02})
    assert quality.worse is Direction.DOWN  # quality gets worse downwards


def test_quantile_slo_and_its_description() -> None:
    g = Guardrail.from_mapping({"metric": "latency_ms", "statistic": "p95", "max": 8000})
    assert g.name == "latency_ms_p95"
    assert g.statistic is Statistic.P95
    assert Statistic.P95.quantile == 0.95
    assert g.describe() == "latency_ms p95 <= 8000"


def test_tripwire_needs_flags_and_nothing_else() -> None:
    g = Guardrail.from_mapping(
        {"name": "critical", "metric": "safety_flags", "tripwire": True, "flags": "self_harm"}
    )
    assert g.kind is GuardrailKind.TRIPWIRE
    assert g.flags == ("self_harm",)
    with pytest.raises(PlanError, match="needs 'flags'"):
        Guardrail.from_mapping({"metric": "safety_flags", "tripwire": True})
    with pytest.raises(PlanError, match="no thresholds"):
        Guardrail.from_mapping(
            {"metric": "safety_flags", "tripwire": True, "flags": ["x"], "max": 0.1}
        )
    with pytest.raises(PlanError, match="watches safety_flags"):
        Guardrail.from_mapping({"metric": "error", "tripwire": True, "flags": ["x"]})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"metric": "errors", "max": 0.1}, "unknown metric 'errors'"),
        (
            {"metric": "error", "statistic": "p95", "max_increase": "10%"},
            "boolean, so it has no p95",
        ),
        ({"metric": "latency_ms", "statistic": "rate", "max": 10}, "numeric; use statistic"),
        ({"metric": "error", "max_increase": "abc"}, "is not a number"),
        ({"metric": "error", "max_increase": "2000%"}, r"must lie in \[0, 1000%\]"),
        ({"metric": "quality", "max_decrease": "100%"}, r"must lie in \[0, 100%\)"),
        ({"metric": "error", "max": "150%"}, "strictly between 0 and 1"),
        ({"metric": "error"}, "set exactly one of"),
        ({"metric": "error", "max": 0.1, "max_increase": 0.1}, "found: max_increase, max"),
        ({"metric": "error", "max_increase": "20%", "detect": "10%"}, "must exceed the tolerance"),
        ({"metric": "error", "max_increase": "20%", "colour": "red"}, "unknown field 'colour'"),
        ({"metric": "latency_ms", "min": 10, "direction": "down"}, "needs an upper bound"),
        ({"metric": "metrics.score", "max": 3}, "needs 'statistic: rate'"),
        ({"metric": "metrics.score", "statistic": "mean", "max": 3}, "needs bounds"),
        ({"metric": "error", "max_delta": 0}, "set 'detect'"),
        ({"metric": "latency_ms", "statistic": "p99", "max_delta": 10}, "not available for"),
        ({"metric": "error", "max_increase": 0.1, "flags": ["x"]}, "only applies to the safety"),
        ({"metric": "error", "max_increase": 0.1, "min_samples": 0}, "min_samples"),
        ({"name": "bad name!", "metric": "error", "max_increase": 0.1}, "must be 1-64"),
    ],
)
def test_mistakes_raise_plan_errors_that_say_what_to_fix(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(PlanError, match=message):
        Guardrail.from_mapping(data)


def test_stage_overrides_tighten_thresholds_and_keep_detect() -> None:
    base = Guardrail.from_mapping({"name": "err", "metric": "error", "max_increase": "20%"})
    strict = base.with_overrides({"max_increase": "10%", "action": "pause", "min_samples": 500})
    assert strict.max_increase == pytest.approx(0.1)
    assert strict.effective_detect == pytest.approx(0.4)  # pinned to the base's detect
    assert strict.action is GuardrailAction.PAUSE
    assert strict.min_samples == 500
    assert base.with_overrides({}) is base


def test_stage_overrides_cannot_change_what_the_test_measures() -> None:
    base = Guardrail.from_mapping({"name": "err", "metric": "error", "max_increase": "20%"})
    with pytest.raises(PlanError, match="cannot override detect"):
        base.with_overrides({"detect": "50%"})
    with pytest.raises(PlanError, match="not switch to max"):
        base.with_overrides({"max": 0.1})
    with pytest.raises(PlanError, match="must exceed the tolerance"):
        base.with_overrides({"max_increase": "50%"})
    slo = Guardrail.from_mapping({"metric": "latency_ms", "statistic": "p95", "max": 8000})
    with pytest.raises(PlanError, match="beyond the regression the test was sized"):
        slo.with_overrides({"max": 13000})


def test_resolve_stage_guardrails_applies_overrides_by_name() -> None:
    rules = [
        Guardrail.from_mapping({"name": "err", "metric": "error", "max_increase": "20%"}),
        Guardrail.from_mapping({"name": "lat", "metric": "latency_ms", "max_increase": "10%"}),
    ]
    resolved = resolve_stage_guardrails(rules, {"err": {"max_increase": "5%"}})
    assert resolved[0].max_increase == pytest.approx(0.05)
    assert resolved[1] is rules[1]
    with pytest.raises(PlanError, match="unknown guardrails nope"):
        resolve_stage_guardrails(rules, {"nope": {"max_increase": "5%"}})


def test_duplicate_names_are_refused() -> None:
    g = Guardrail.from_mapping({"metric": "error", "max_increase": "20%"})
    with pytest.raises(PlanError, match="two guardrails are named 'error'"):
        check_unique_names([g, g])


def test_guardrail_round_trips_through_its_yaml_form() -> None:
    g = Guardrail.from_mapping(
        {"name": "p95", "metric": "latency_ms", "statistic": "p95", "max": 8000, "detect": "30%"}
    )
    dumped = g.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["max"] == 8000
    assert Guardrail.from_mapping(dumped) == g


def test_tokens_are_priced_per_million() -> None:
    prices = {"gpt-x": ModelPrice(input_usd_per_1m=2.5, output_usd_per_1m=10.0)}
    assert price_of(prices, "gpt-x", 1000, 500) == pytest.approx(0.0075)
    assert price_of(prices, "other", 1000, 500) is None
    assert price_of(prices, "gpt-x", None, None) is None


def test_negligible_reads_like_a_rate_and_defaults_for_max_increase() -> None:
    g = Guardrail.from_mapping({"metric": "safety_flags", "max_increase": "25%"})
    assert g.negligible is None
    assert g.effective_negligible == pytest.approx(DEFAULT_NEGLIGIBLE) == pytest.approx(0.001)
    set_ = Guardrail.from_mapping(
        {"metric": "safety_flags", "max_increase": "25%", "negligible": "0.05%"}
    )
    assert set_.effective_negligible == pytest.approx(0.0005)
    off = Guardrail.from_mapping({"metric": "error", "max_increase": "20%", "negligible": 0})
    assert off.effective_negligible == 0.0
    p95 = Guardrail.from_mapping(
        {"metric": "latency_ms", "statistic": "p95", "max_increase": "20%", "negligible": "1%"}
    )
    assert p95.effective_negligible == pytest.approx(0.01)
    p99 = Guardrail.from_mapping({"metric": "latency_ms", "statistic": "p99", "max_increase": 0.2})
    assert p99.effective_negligible == 0.0  # exceedance rates are never rare: off by default
    # Only max_increase rates have the absolute route.
    down = Guardrail.from_mapping({"metric": "metrics.resolved", "max_decrease": "5%"})
    assert down.effective_negligible == 0.0
    # The field survives the YAML/JSON form.
    assert Guardrail.from_mapping(set_.model_dump(by_alias=True, exclude_none=True)) == set_


@pytest.mark.parametrize(
    "fields",
    [
        {"metric": "latency_ms", "max_increase": "10%", "negligible": "1%"},  # a mean
        {"metric": "error", "max": "2%", "negligible": "1%"},  # an SLO
        {"metric": "metrics.resolved", "max_decrease": "5%", "negligible": "1%"},
        {"metric": "error", "max_delta": 0.01, "negligible": "1%"},
        {"metric": "error", "max_increase": "20%", "negligible": "100%"},
        {"metric": "error", "max_increase": "20%", "negligible": "-1%"},
        {"metric": "safety_flags", "tripwire": True, "flags": ["x"], "negligible": "1%"},
    ],
)
def test_negligible_is_refused_where_it_means_nothing(fields: dict[str, Any]) -> None:
    with pytest.raises(PlanError, match=r"negligible|tripwire"):
        Guardrail.from_mapping(fields)


def test_a_stage_may_override_negligible() -> None:
    g = Guardrail.from_mapping({"metric": "safety_flags", "max_increase": "25%"})
    staged = g.with_overrides({"negligible": "0.02%"})
    assert staged.effective_negligible == pytest.approx(0.0002)
    assert staged.effective_detect == g.effective_detect
    (resolved,) = resolve_stage_guardrails([g], {"safety_flags": {"negligible": 0.0}})
    assert resolved.effective_negligible == 0.0
