"""Rollout plans: YAML loading, validation with file:line:col, durations, the default, freezing."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _rollout_support import PLAN_YAML
from policy_canary.errors import PlanError
from policy_canary.plan import RolloutPlan, format_duration, parse_duration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plan.md"


def load(text: str) -> RolloutPlan:
    return RolloutPlan.loads(text, source="plan.yaml")


def test_small_plan_loads_with_normalised_values() -> None:
    plan = load(PLAN_YAML)
    assert [s.describe() for s in plan.stages] == ["canary 1%", "validation 10%", "soak 50%"]
    canary, validation, soak = plan.stages
    assert (canary.min_duration, canary.max_duration) == (
        timedelta(minutes=10),
        timedelta(hours=1),
    )
    assert validation.strict
    assert validation.guardrails == {"error_rate": {"max_increase": 0.1}}
    assert soak.max_duration is None
    assert soak.min_samples == 30
    assert [g.name for g in plan.guardrails] == ["error_rate", "critical", "quality"]
    assert plan.stage_guardrails(1)[0].max_increase == 0.1
    assert plan.stage_guardrails(0)[0].max_increase == 0.2


def test_default_plan_has_the_canonical_shape() -> None:
    plan = RolloutPlan.default()
    assert [(s.name, s.traffic_bp, s.strict) for s in plan.stages] == [
        ("canary", 100, False),
        ("validation", 1000, True),
        ("soak", 5000, False),
    ]
    assert plan.alpha == 0.01
    metrics = {g.metric for g in plan.guardrails}
    assert metrics == {"error", "safety_flags", "latency_ms", "cost_usd", "quality"}
    # Validation is tighter than canary; soak dwells longest.
    assert plan.stage_guardrails(1)[0].max_increase < plan.stage_guardrails(0)[0].max_increase
    assert plan.stages[2].min_duration == max(s.min_duration for s in plan.stages)


def test_frozen_form_round_trips_to_the_same_hash() -> None:
    plan = load(PLAN_YAML)
    again = RolloutPlan.from_frozen(plan.canonical())
    assert again == plan
    assert again.digest == plan.digest
    # Formatting and key order do not matter; content does.
    reordered = PLAN_YAML.replace("alpha: 0.01\n", "") + "alpha: 0.010\n"
    assert load(reordered).digest == plan.digest
    assert load(PLAN_YAML.replace("min_samples: 30", "min_samples: 31")).digest != plan.digest


def test_docs_example_is_a_valid_plan() -> None:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/plan.md shows a complete example"
    plan = RolloutPlan.loads(blocks[0], source="docs/plan.md")
    assert len(plan.stages) >= 3


def _refused_after(edit: tuple[str, str], message: str) -> None:
    """The example plan with one ``(old, new)`` edit is refused with ``message``."""
    old, new = edit
    assert old in PLAN_YAML
    with pytest.raises(PlanError, match=message):
        load(PLAN_YAML.replace(old, new, 1))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("  - {name: soak", "  - {nmae: x, name: soak"),
         r"plan.yaml:15:\d+: unknown key 'nmae' in a stage \(did you mean 'name'\?\)"),
        (("alpha: 0.01", "alpha: 0.01\nstagse: []"), r"plan.yaml:2:9: unknown key 'stagse'"),
        (("traffic: 50", "traffic: 5"),
         r"plan.yaml:15:\d+: stage 'soak' has traffic 5%, not more than the previous stage "
         r"'validation' \(10%\); traffic must increase"),
        (("max_duration: 1h", "max_duration: 5m"),
         r"plan.yaml:7:\d+: stage 'canary': max_duration 5m must be longer than min_duration 10m"),
        (("min_duration: 10m", "min_duration: ten minutes"),
         r"plan.yaml:7:\d+: cannot read duration 'ten minutes'"),
        (("max_increase: 20%", "max_increase: 2000%"),
         r"plan.yaml:3:5: guardrail 'error_rate': max_increase 20 must lie in \[0, 1000%\]"),
        (("traffic: 50", "traffic: 100"), r"plan.yaml:15:\d+: .*must be above 0 and below 100"),
        (("traffic: 1,", "traffic: 0.005,"), r"plan.yaml:7:\d+: .*finer than 0.01%"),
        (("alpha: 0.01", "alpha: 1.5"), r"plan.yaml:1:8: alpha 1.5 is out of range"),
        (("min_samples: 30", "min_samples: -1"), r"plan.yaml:15:\d+: .*min_samples must be"),
        (("{error_rate: {max_increase: 10%}}", "{nope: {max_increase: 10%}}"),
         r"plan.yaml:14:\d+: stage 'validation': stage overrides name unknown guardrails nope"),
        (("{error_rate: {max_increase: 10%}}", "{error_rate: {metric: latency_ms}}"),
         r"plan.yaml:14:\d+: .*cannot override metric"),
        (("metric: error,", "metric: errors,"), r"plan.yaml:3:5: .*unknown metric 'errors'"),
    ],
)  # fmt: skip
def test_invalid_plans_name_the_location(edit: tuple[str, str], message: str) -> None:
    _refused_after(edit, message)


def test_structural_mistakes_are_explained() -> None:
    with pytest.raises(PlanError, match="needs 'guardrails'"):
        load("stages: [{name: a, traffic: 1}]")
    with pytest.raises(PlanError, match="stages must be a non-empty list"):
        load("guardrails: [{metric: error, max_increase: 10%}]\nstages: []")
    with pytest.raises(PlanError, match="two stages are named 'a'"):
        load(
            "guardrails: [{metric: error, max_increase: 10%}]\n"
            "stages: [{name: a, traffic: 1}, {name: a, traffic: 2}]"
        )
    with pytest.raises(PlanError, match="duplicate key 'alpha'"):
        load("alpha: 0.01\nalpha: 0.02\n")


def test_load_reads_files_and_reports_missing_ones(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN_YAML, encoding="utf-8")
    assert RolloutPlan.load(path) == load(PLAN_YAML)
    with pytest.raises(PlanError, match="no such file"):
        RolloutPlan.load(tmp_path / "missing.yaml")
    path.write_text(PLAN_YAML.replace("traffic: 50", "traffic: 5"), encoding="utf-8")
    with pytest.raises(PlanError, match=rf"{re.escape(str(path))}:15:"):
        RolloutPlan.load(path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("45s", 45), (90, 90),
     ("0", 0), ("1.5h", 5400)],
)  # fmt: skip
def test_parse_duration(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "5", "m", "5x", "-5m", "1h-", True, None, -3])
def test_parse_duration_refuses_nonsense(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=90 * 86400))
def test_format_duration_round_trips(seconds: int) -> None:
    text = format_duration(timedelta(seconds=seconds))
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("min_samples: 30", "min_samples: 99999999999999999999999"),
         r"plan.yaml:15:\d+: stage 'soak': min_samples must be a whole number from 0 to "
         r"10,000,000 \(per arm\); got 99999999999999999999999"),
        (("min_samples: 30", "min_samples: 10000001"), r"plan.yaml:15:\d+: .*from 0 to 10,000,000"),
        (("traffic: 50", "traffic: " + "9" * 400),
         r"plan.yaml:15:\d+: .*must be above 0 and below"),
        (("max_increase: 20%", "max_increase: " + "9" * 400),
         r"plan.yaml:3:5: guardrail 'error_rate': max_increase must be finite"),
    ],
)  # fmt: skip
def test_numbers_beyond_their_documented_bounds_are_refused(
    edit: tuple[str, str], message: str
) -> None:
    _refused_after(edit, message)


def test_a_guardrails_min_samples_is_bounded_too() -> None:
    text = PLAN_YAML.replace(
        "metric: error,", "metric: error, min_samples: 99999999999999999999,", 1
    )
    with pytest.raises(PlanError, match=r"plan.yaml:3:5: .*min_samples.*10000000"):
        load(text)
    assert load(PLAN_YAML.replace("metric: error,", "metric: error, min_samples: 10000000,", 1))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("metric: error,", "metric: error, min_samples: true,"),
         r"plan.yaml:3:5: guardrail 'error_rate': min_samples: Input should be a valid integer"),
        (("metric: error,", "metric: error, min_samples: 5.0,"), r"min_samples: .*valid integer"),
        (("metric: error,", "metric: error, min_samples: '5',"), r"min_samples: .*valid integer"),
        (("tripwire: true", "tripwire: 1"), r"plan.yaml:4:5: .*tripwire: .*valid boolean"),
        (("tripwire: true", "tripwire: 'yes'"), r"tripwire: .*valid boolean"),
        (("{error_rate: {max_increase: 10%}}", "{error_rate: {min_samples: true}}"),
         r"stage 'validation': guardrail 'error_rate': min_samples: .*valid integer"),
        (("alpha: 0.01\n", "alpha: 0.01\nprices:\n  m: {input_usd_per_1m: '2.5', "
          "output_usd_per_1m: 10}\n"), r"price for model 'm': input_usd_per_1m: .*valid number"),
        (("alpha: 0.01\n", "alpha: 0.01\nprices:\n  m: {input_usd_per_1m: 1, "
          "output_usd_per_1m: true}\n"), r"price for model 'm': output_usd_per_1m: .*valid number"),
    ],
)  # fmt: skip
def test_guardrail_and_price_fields_of_the_wrong_type_are_refused_not_coerced(
    edit: tuple[str, str], message: str
) -> None:
    """Issue 10 item 17: YAML's ``true``, ``5.0`` or ``'5'`` is not read as the number 1 or 5."""
    _refused_after(edit, message)


def test_custom_metric_bounds_must_be_numbers() -> None:
    rule = "  - {name: score, metric: metrics.score, max_increase: 20%, bounds: [BOUNDS]}"
    text = PLAN_YAML.replace(_REVERSED, _REVERSED + "\n" + rule, 1)
    (score,) = [g for g in load(text.replace("BOUNDS", "0, 2")).guardrails if g.name == "score"]
    assert score.bounds == (0.0, 2.0)
    for bad in ("true, 2", "'0', '2'"):
        with pytest.raises(PlanError, match=r"guardrail 'score': bounds.0: .*valid number"):
            load(text.replace("BOUNDS", bad))


_REVERSED = "  - {name: error_rate, metric: error, max_increase: 20%}"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{name: e, metric: error, max_decrease: 10%}",
         r"plan.yaml:4:44: guardrail 'e': error gets worse going up, but max_decrease guards "
         r"against it going down, so the candidate would be rolled back for falling error; use "
         r"max_increase, or add 'direction: down'"),
        ("{name: q, metric: quality, max_increase: 10%}",
         r"plan.yaml:4:\d+: guardrail 'q': quality gets worse going down, .*use max_decrease"),
        ("{name: q, metric: quality, max: 0.9}", r"plan.yaml:4:\d+: .*quality gets worse going "
         r"down, but max guards against it going up.*use min"),
        ("{name: l, metric: latency_ms, statistic: p95, min: 100}",
         r"plan.yaml:4:\d+: .*latency_ms gets worse going up, but min .*use max"),
        ("{name: c, metric: cost_usd, max_decrease: 10%}", r"cost_usd gets worse going up"),
        ("{name: f, metric: safety_flags, max_decrease: 10%}", r"safety_flags gets worse going up"),
        ("{name: e, metric: error, max_increase: 20%, direction: down}",
         r"plan.yaml:4:\d+: guardrail 'e': direction down contradicts max_increase"),
    ],
)  # fmt: skip
def test_a_threshold_against_the_metrics_direction_is_refused_where_it_is_written(
    rule: str, message: str
) -> None:
    with pytest.raises(PlanError, match=message):
        load(PLAN_YAML.replace(_REVERSED, f"{_REVERSED}\n  - {rule}", 1))


def test_an_acknowledged_reversal_is_accepted_with_a_warning() -> None:
    extra = "\n  - {name: e, metric: error, max_decrease: 10%, direction: down}"
    plan = load(PLAN_YAML.replace(_REVERSED, _REVERSED + extra, 1))
    (rule,) = [g for g in plan.guardrails if g.name == "e"]
    assert rule.reversed_direction
    assert plan.warnings() == [
        "guardrail 'e' rolls back when error goes down, the opposite of its usual direction "
        "(acknowledged with 'direction:'); check that this is intended"
    ]
    assert load(PLAN_YAML).warnings() == []
    assert RolloutPlan.default().warnings() == []


def test_a_quantile_max_increase_watches_the_metrics_bad_side() -> None:
    # For quality, max_increase on p50 bounds the rate of falling below stable's median.
    extra = "\n  - {name: q, metric: quality, statistic: p50, max_increase: 20%, detect: 60%}"
    plan = load(PLAN_YAML.replace(_REVERSED, _REVERSED + extra, 1))
    assert plan.warnings() == []
    with pytest.raises(PlanError, match="'direction' does not apply to max_increase on a quantile"):
        load(PLAN_YAML.replace(_REVERSED, _REVERSED + extra.replace("}", ", direction: up}"), 1))


def test_every_guardrail_of_the_default_plan_rolls_back_on_a_breach() -> None:
    # A breach is evidence at the plan's alpha: by default it rolls back; pause/alert opt in.
    plan = RolloutPlan.default()
    assert {g.name: g.action.value for g in plan.guardrails} == {
        g.name: "rollback" for g in plan.guardrails
    }
    for index in range(len(plan.stages)):
        assert {g.action.value for g in plan.stage_guardrails(index)} == {"rollback"}
