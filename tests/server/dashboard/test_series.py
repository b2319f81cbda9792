"""Guardrail series built from decision-trace entries (pure: no store, no server)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from policy_canary.server.dashboard import build_series
from policy_canary.server.dashboard._views import side_by_side, worst_verdict


def _rate(
    seq: int, ratio: float | None, lower: float, upper: float | None, e: float
) -> dict[str, Any]:
    evidence = {
        "kind": "relative",
        "statistic": "rate",
        "ratio": ratio,
        "ratio_lower": lower,
        "ratio_upper": upper,
        "threshold_ratio": 1.2,
        "e_value": e,
        "e_value_threshold": 200.0,
        "n_candidate": 10 * seq,
        "n_stable": 40 * seq,
    }
    return {
        "guardrail": "error_rate",
        "metric": "error",
        "status": "pass",
        "reason": "ok",
        "evidence": evidence,
    }


def _tick(seq: int, stage: int, *verdicts: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": seq,
        "at": f"2026-01-01T00:{seq:02d}:00+00:00",
        "stage_index": stage,
        "action": "hold",
        "verdicts": list(verdicts),
    }


def test_a_rate_guardrail_is_its_ratio_band_tolerance_and_e_value() -> None:
    trace = [
        _tick(1, 0, _rate(1, 1.1, 0.5, 2.0, 1.5)),
        _tick(2, 1, _rate(2, 3.0, 1.3, None, 250.0)),
    ]
    (series,) = build_series(trace, ["canary", "validation"])
    assert series.shape is not None
    assert series.shape.kind == "ratio"
    assert series.tolerance == 1.2
    assert series.threshold == 200.0
    assert [p.estimate for p in series.points] == [1.1, 3.0]
    assert [p.stage for p in series.points] == ["canary", "validation"]
    assert series.points[1].upper is None  # unbounded: the table says so
    figure = series.figure()
    names = [t["name"] for t in figure["data"]]
    assert names == [
        "upper bound",
        "anytime-valid band",
        "estimate",
        "tolerance",
        "e-value",
        "breach threshold",
    ]
    assert figure["data"][0]["y"][1] > 3.0  # the unbounded band is drawn to the chart's top
    assert figure["layout"]["yaxis2"]["type"] == "log"


def test_a_mean_guardrail_is_its_contrast_against_zero() -> None:
    evidence = {
        "statistic": "mean",
        "contrast": "mu_c - 1.25 * mu_s",
        "estimate": -0.2,
        "lower": -0.5,
        "upper": 0.1,
        "threshold": 0.0,
        "e_value": 0.9,
    }
    verdict = {
        "guardrail": "latency",
        "metric": "latency_ms",
        "status": "pass",
        "evidence": evidence,
    }
    (series,) = build_series([_tick(1, 0, verdict)], ["canary"])
    assert series.shape is not None
    assert series.shape.kind == "difference"
    assert series.label == "candidate - 1.25 * stable"
    assert series.tolerance == 0.0
    assert series.drawable


def test_a_tripwire_draws_no_chart() -> None:
    verdict = {
        "guardrail": "critical",
        "metric": "safety_flags",
        "status": "pass",
        "evidence": {"kind": "tripwire", "events": 0},
    }
    (series,) = build_series([_tick(1, 0, verdict)], ["canary"])
    assert series.shape is None
    assert not series.drawable


@given(st.integers(min_value=0, max_value=400), st.integers(min_value=2, max_value=50))
def test_a_long_trace_is_thinned_but_keeps_its_last_tick(ticks: int, most: int) -> None:
    trace = [_tick(i + 1, 0, _rate(i + 1, 1.0, 0.5, 1.5, 1.0)) for i in range(ticks)]
    found = build_series(trace, ["canary"], most=most)
    if ticks == 0:
        assert found == []
        return
    (series,) = found
    assert len(series.points) == min(ticks, most)
    assert series.points[-1].seq == ticks
    seqs = [p.seq for p in series.points]
    assert seqs == sorted(set(seqs))


def test_the_worst_verdict_is_a_breach_then_missing_data() -> None:
    verdicts = [{"status": "pass"}, {"status": "insufficient_data"}, {"status": "breach"}]
    assert worst_verdict(verdicts) == {"status": "breach"}
    assert worst_verdict(verdicts[:2]) == {"status": "insufficient_data"}
    assert worst_verdict([]) is None


@given(
    st.lists(st.sampled_from("abcde"), max_size=12), st.lists(st.sampled_from("abcde"), max_size=12)
)
def test_a_side_by_side_diff_keeps_both_texts_in_order(a: list[str], b: list[str]) -> None:
    rows = side_by_side("\n".join(a), "\n".join(b))
    assert [r.left for r in rows if r.left is not None] == a
    assert [r.right for r in rows if r.right is not None] == b
