"""The detection benchmark cannot rot: its core runs on a tiny config in CI.

Its floors are checked against hand-computed values and against invariants that hold for any
most powerful test, so a reader can trust "no method gets below this".
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import math
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from policy_canary.guardrails import Guardrail
from policy_canary.monitoring import MonitorEvent, RolloutMonitor
from policy_canary.stats import RateMixture, candidate_share_of_bad, conditional_log_evalue

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_detection.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_detection", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_detection"] = module
    with pytest.MonkeyPatch.context() as mp:
        # The script imports its sibling ``_floors`` as it would when run from benchmarks/.
        mp.syspath_prepend(str(BENCH.parent))
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def floors(bench: ModuleType) -> ModuleType:
    return importlib.import_module("_floors")  # loaded (and cached) by the bench fixture


TINY = ("aa_stationary_error", "failure_1_to_2pct", "latency_plus_10pct")


@pytest.fixture(scope="module")
def tiny(bench: ModuleType) -> dict[str, Any]:
    result: dict[str, Any] = bench.run_benchmark(runs=40, seed=1, names=TINY)
    return result


def test_benchmark_core_runs_on_a_tiny_config(bench: ModuleType, tiny: dict[str, Any]) -> None:
    by_name = {s["scenario"]: s for s in tiny["scenarios"]}
    assert set(by_name) == set(TINY)
    for scenario in by_name.values():
        assert {"ours", "naive", "z/t-every-look", "kayenta@0.01"} <= set(scenario["methods"])
    assert by_name["aa_stationary_error"]["methods"]["ours"]["false_rollback"] <= 0.05
    ours = by_name["failure_1_to_2pct"]["methods"]["ours"]
    assert ours["rollback_rate"] > 0.9
    assert ours["wald_floor"] == pytest.approx(1416.5, abs=1)
    assert 1.0 < ours["ratio_to_floor"] < 2.5
    assert by_name["latency_plus_10pct"]["methods"]["ours"]["rollback_rate"] > 0.9
    # The SPRT told the true ratio is a reference on rate scenarios: never slower than ours,
    # whose mixture hedges over ratios it does not know.
    oracle = by_name["failure_1_to_2pct"]["methods"][bench.ORACLE]
    assert oracle["median_requests"] <= ours["median_requests"]
    assert "ratio_to_floor" in oracle
    assert bench.ORACLE not in by_name["latency_plus_10pct"]["methods"]
    assert "ratio_to_floor" in by_name["failure_1_to_2pct"]["methods"][bench.CHECKPOINT]
    assert "ratio_to_floor" in by_name["failure_1_to_2pct"]["methods"][bench.AT_DETECT]
    table = bench.render(tiny)
    assert "failure_1_to_2pct" in table
    assert "x Wald" in table


def test_benchmark_reports_the_median_floor_and_the_best_harm_ratio(
    bench: ModuleType, tiny: dict[str, Any]
) -> None:
    # Given a tiny run with an A/A rate scenario (so kayenta-matched exists for rates)
    by_name = {s["scenario"]: s for s in tiny["scenarios"]}
    # Then ours carries the floors and its ratio to the median floor
    rate = by_name["failure_1_to_2pct"]
    ours = rate["methods"]["ours"]
    assert ours["median_floor"] == 1215  # p0 = 1.2%, p1 = 2%: see the binomial floor tests
    assert ours["harm_floor"] == pytest.approx(0.02 * 1215)
    assert ours["ratio_to_median_floor"] == pytest.approx(ours["median_requests"] / 1215)
    # ... and the scenario the largest harm ratio any alpha-level method could reach
    kayenta_harmed = rate["methods"]["kayenta-matched"]["median_harmed"]
    assert rate["best_harm_ratio_vs_kayenta_matched"] == pytest.approx(
        kayenta_harmed / ours["harm_floor"]
    )
    latency = by_name["latency_plus_10pct"]["methods"]["ours"]
    assert latency["median_floor"] == 313
    assert latency["harm_floor"] == 313  # every candidate request served is harmed
    assert "median_floor" not in by_name["aa_stationary_error"]["methods"]["ours"]
    # And the targets table has one row per detection scenario, within 110 characters
    table = bench.render_targets(tiny)
    rows = [line.split()[0] for line in table.splitlines()[2:4]]
    assert rows == ["failure_1_to_2pct", "latency_plus_10pct"]
    assert "best x" in table.splitlines()[0]
    assert max(len(line) for line in table.splitlines()) <= 110


def test_every_detection_scenario_has_its_floors(bench: ModuleType) -> None:
    expected = {
        "failure_1_to_2pct": 1215,
        "failure_1_to_1.5pct": 7700,
        "failure_1_to_4pct_gross": 137,
        "safety_0.1_to_0.3pct": 2864,
        "latency_plus_10pct": 313,
        "quality_minus_0.02_late": 700,  # 350 scores, half the requests give one
        "cost_plus_30pct": 92,
        "failure_1_to_30pct": 5,
        "safety_0.01_to_1pct": 69,
    }
    floors = {sc.name: bench.detection_floors(sc) for sc in bench.SCENARIOS if not sc.null}
    # A known zero baseline has no floor to quote: one bad event would prove the regression.
    assert {name for name, f in floors.items() if f is None} == {
        "safety_0_to_2pct_zero",
        "safety_0_to_2pct_zero_5%",
    }
    assert {name: f.median for name, f in floors.items() if f is not None} == expected
    for sc in bench.SCENARIOS:
        f = floors.get(sc.name)
        if f is None:
            continue
        per_request = sc.p_candidate if sc.metric in ("error", "safety") else 1.0
        assert f.harm == pytest.approx(per_request * f.median)


def test_catastrophes_are_caught_within_the_first_few_bad_events(bench: ModuleType) -> None:
    # Given the catastrophic scenarios of issue 12 on a small run
    names = ("failure_1_to_30pct", "safety_0_to_2pct_zero", "safety_0.01_to_1pct")
    result = bench.run_benchmark(runs=120, seed=3, names=names)
    by_name = {s["scenario"]: s for s in result["scenarios"]}
    # Then ours rolls back after as many candidate bad events as the SPRT told the truth, or
    # one more, and the zero baseline after two flagged requests at the 1% canary share
    zero = by_name["safety_0_to_2pct_zero"]
    assert zero["stable_rate"] == 0.0
    assert zero["true_ratio"] is None
    assert zero["methods"]["ours"]["median_harmed"] == 2
    assert zero["median_over_told_truth"] <= 1.3
    for scenario in by_name.values():
        ours, truth = scenario["methods"]["ours"], scenario["methods"][bench.ORACLE]
        assert ours["rollback_rate"] == 1.0
        assert ours["median_harmed"] <= truth["median_harmed"] + 1
    # And the truth table shows requests and bad events against the SPRT told the truth
    table = bench.render_truth(result)
    assert "x truth" in table.splitlines()[0]
    assert any(
        line.startswith("safety_0_to_2pct_zero ") and " inf " in line for line in table.splitlines()
    )
    assert max(len(line) for line in bench.render_targets(result).splitlines()) <= 110


def test_only_runs_the_named_scenarios_and_refuses_unknown_names(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two scenario names (one rate scenario, one late-frozen line)
    out = tmp_path / "only.json"
    names = ["safety_0_to_2pct_zero", "aa_late_p95"]
    # When the benchmark runs with --only
    argv = ["--runs", "40", "--seed", "5", "--only", *names, "--json-out", str(out)]
    assert bench.main(argv) == 0
    # Then only those ran, and the rate scenario kept its own random stream
    result = json.loads(out.read_text())
    assert [s["scenario"] for s in result["scenarios"]] == ["safety_0_to_2pct_zero"]
    assert [s["scenario"] for s in result["late_lines"]] == ["aa_late_p95"]
    alone = bench.run_benchmark(runs=40, seed=5, names=("safety_0_to_2pct_zero",))
    assert result["scenarios"][0]["methods"]["ours"] == alone["scenarios"][0]["methods"]["ours"]
    capsys.readouterr()
    # And an unknown name is refused with the known ones listed
    with pytest.raises(SystemExit):
        bench.main(["--only", "failure_1_to_3pct"])
    err = capsys.readouterr().err
    assert "unknown scenario(s) failure_1_to_3pct" in err
    assert "failure_1_to_4pct_gross" in err


# --- the median floors ----------------------------------------------------------------------


def test_binomial_floor_matches_a_hand_computed_case(floors: ModuleType) -> None:
    # p0 = 0.5 against p1 = 0.8 at alpha = 0.1.
    # n = 4: P0(X = 4) = 1/16 <= 0.1 < P0(X >= 3) = 5/16, so c = 3 and the test rejects at
    #   X = 3 with gamma = (0.1 - 1/16) / (4/16) = 0.15. Power = P1(4) + 0.15 P1(3)
    #   = 0.4096 + 0.15 x 0.4096 = 0.47104 < 1/2.
    # n = 5: P0(X = 5) = 1/32 <= 0.1 < P0(X >= 4) = 6/32, so c = 4, gamma = (0.1 - 1/32) / (5/32)
    #   = 0.44. Power = P1(5) + 0.44 P1(4) = 0.32768 + 0.44 x 0.4096 = 0.507904 >= 1/2.
    assert floors.binomial_np_power(4, 0.5, 0.8, alpha=0.1) == pytest.approx(0.47104)
    assert floors.binomial_np_power(5, 0.5, 0.8, alpha=0.1) == pytest.approx(0.507904)
    assert floors.binomial_median_floor(0.5, 0.8, alpha=0.1) == 5
    # p1 = 0.9: n = 3 has c = 3, gamma = 0.1 / (1/8) = 0.8, power 0.8 x 0.729 = 0.5832;
    # n = 2 has c = 2, gamma = 0.1 / (1/4) = 0.4, power 0.4 x 0.81 = 0.324.
    assert floors.binomial_np_power(3, 0.5, 0.9, alpha=0.1) == pytest.approx(0.5832)
    assert floors.binomial_median_floor(0.5, 0.9, alpha=0.1) == 3


def test_binomial_test_has_size_alpha(floors: ModuleType) -> None:
    # Power against p1 = p0 + tiny is the size: exactly alpha thanks to the randomisation.
    assert floors.binomial_np_power(200, 0.1, 0.1 + 1e-12, alpha=0.05) == pytest.approx(0.05)


def test_binomial_floor_is_where_the_power_crosses_one_half(floors: ModuleType) -> None:
    n = floors.binomial_median_floor(0.012, 0.02, alpha=0.01)
    assert n == 1215
    assert floors.binomial_np_power(n, 0.012, 0.02, alpha=0.01) >= 0.5
    assert floors.binomial_np_power(n - 1, 0.012, 0.02, alpha=0.01) < 0.5
    # The normal approximation z^2 p0 (1 - p0) / (p1 - p0)^2 = 1,003 ignores the skew.
    assert 1003 < n < 1.25 * 1003


rates = st.floats(0.02, 0.5)
gaps = st.floats(0.12, 0.45)
alphas = st.floats(0.005, 0.2)


@settings(max_examples=30, deadline=None)
@given(p0=rates, gap=gaps, alpha=alphas)
def test_binomial_floor_is_the_first_n_a_linear_scan_finds(
    floors: ModuleType, p0: float, gap: float, alpha: float
) -> None:
    # The search gallops and bisects, which is right only if the power never falls with n.
    p1 = min(p0 + gap, 1.0)
    n = floors.binomial_median_floor(p0, p1, alpha=alpha)
    powers = [floors.binomial_np_power(k, p0, p1, alpha=alpha) for k in range(1, n + 1)]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(powers))
    assert powers[-1] >= 0.5
    assert all(p < 0.5 for p in powers[:-1])


@settings(max_examples=40, deadline=None)
@given(p0=st.floats(0.001, 0.3), ratio=st.floats(1.2, 3.0), alpha=alphas, more=st.floats(1, 4))
def test_binomial_floor_falls_as_alpha_grows_or_p1_leaves_p0(
    floors: ModuleType, p0: float, ratio: float, alpha: float, more: float
) -> None:
    p1 = min(p0 * ratio, 1.0)
    n = floors.binomial_median_floor(p0, p1, alpha=alpha)
    # A level-alpha test is also a level-(larger alpha) test.
    assert floors.binomial_median_floor(p0, p1, alpha=min(alpha * more, 0.49)) <= n
    # The most powerful test does not depend on p1 (monotone likelihood ratio), and its power
    # grows with p1.
    assert floors.binomial_median_floor(p0, min(p1 * more, 1.0), alpha=alpha) <= n


@settings(max_examples=40, deadline=None)
@given(p0=st.floats(0.001, 0.3), ratio=st.floats(1.2, 3.0), alpha=alphas)
def test_binomial_floor_respects_the_information_bound(
    floors: ModuleType, p0: float, ratio: float, alpha: float
) -> None:
    # Data processing: n KL(p1 || p0) >= KL(Bernoulli(power) || Bernoulli(size)), and at
    # power >= 1/2 > alpha >= size that is at least KL(Bernoulli(1/2) || Bernoulli(alpha)).
    p1 = min(p0 * ratio, 1.0)
    n = floors.binomial_median_floor(p0, p1, alpha=alpha)
    kl = p1 * math.log(p1 / p0) + ((1 - p1) * math.log((1 - p1) / (1 - p0)) if p1 < 1 else 0.0)
    needed = 0.5 * math.log(0.5 / alpha) + 0.5 * math.log(0.5 / (1 - alpha))
    assert n * kl >= needed * (1 - 1e-9)


def test_gaussian_floor_is_the_closed_form(floors: ModuleType) -> None:
    # z_0.99 = 2.3263; (2.3263 x 0.5 / 0.1)^2 = 135.3, so 136 observations.
    assert floors.gaussian_median_floor(0.1, 0.5, alpha=0.01) == 136
    # Power Phi(delta sqrt(n) / sigma - z) crosses 1/2 between 135 and 136.
    z = sps.norm.isf(0.01)
    assert sps.norm.cdf(0.1 * math.sqrt(136) / 0.5 - z) >= 0.5
    assert sps.norm.cdf(0.1 * math.sqrt(135) / 0.5 - z) < 0.5
    # latency_plus_10pct: delta = ln 1.1 - ln 1.03 = 0.06575 at sigma 0.5 -> 312.96 -> 313.
    assert floors.gaussian_median_floor(math.log(1.1 / 1.03), 0.5, alpha=0.01) == 313


def test_gamma_floor_for_cost_is_checked_by_simulation(floors: ModuleType) -> None:
    # cost_plus_30pct: Gamma(2, 0.02 x m / 2) per request, null m = 1.1, alternative 1.3.
    scale0, scale1 = 0.011, 0.013
    n = floors.gamma_median_floor(2.0, scale0, scale1, alpha=0.01)
    assert n == 92
    # The normal approximation z^2 (scale0 / (scale1 - scale0))^2 / shape = 81.9 ignores the
    # right skew of the sum, which pushes the null's 99% quantile further out.
    assert 81.9 < n < 1.2 * 81.9
    # Minimal: one request fewer and the alternative's median is below the critical value.
    assert sps.gamma.isf(0.01, 2 * (n - 1), scale=scale0) > sps.gamma.median(
        2 * (n - 1), scale=scale1
    )
    # Drawing requests the way the benchmark does: size alpha and power 1/2 at the floor.
    rng = np.random.default_rng(7)
    critical = sps.gamma.isf(0.01, 2 * n, scale=scale0)
    runs = 100_000
    size = (rng.gamma(2.0, scale0, size=(runs, n)).sum(axis=1) > critical).mean()
    power = (rng.gamma(2.0, scale1, size=(runs, n)).sum(axis=1) > critical).mean()
    assert size == pytest.approx(0.01, abs=4 * math.sqrt(0.01 * 0.99 / runs))
    exact = sps.gamma.sf(critical, 2 * n, scale=scale1)
    assert exact >= 0.5
    assert power == pytest.approx(exact, abs=4 * math.sqrt(0.25 / runs))


@settings(max_examples=40, deadline=None)
@given(shape=st.floats(0.5, 5), ratio=st.floats(1.05, 2.0), alpha=alphas, more=st.floats(1, 4))
def test_gamma_floor_falls_as_alpha_grows_or_the_alternative_leaves_the_null(
    floors: ModuleType, shape: float, ratio: float, alpha: float, more: float
) -> None:
    n = floors.gamma_median_floor(shape, 1.0, ratio, alpha=alpha)
    assert floors.gamma_median_floor(shape, 1.0, ratio, alpha=min(alpha * more, 0.49)) <= n
    assert floors.gamma_median_floor(shape, 1.0, 1 + (ratio - 1) * more, alpha=alpha) <= n


def test_floors_reject_an_alternative_that_is_no_regression(floors: ModuleType) -> None:
    with pytest.raises(ValueError, match="p0 < p1"):
        floors.binomial_median_floor(0.02, 0.01, alpha=0.01)
    with pytest.raises(ValueError, match="positive"):
        floors.gaussian_median_floor(-0.1, 0.5, alpha=0.01)
    with pytest.raises(ValueError, match="scale0 < scale1"):
        floors.gamma_median_floor(2.0, 1.0, 1.0, alpha=0.01)
    with pytest.raises(ValueError, match="alpha"):
        floors.gaussian_median_floor(0.1, 0.5, alpha=0.5)


def test_the_benchmarks_vectorised_rate_test_is_the_monitors_test() -> None:
    # The benchmark calls the stats function on counts; the controller calls the monitor on
    # events. Both must give the same e-value for the same traffic.
    rng = np.random.default_rng(4)
    n = 20_000
    cand = rng.random(n) < 0.05
    bad = rng.random(n) < np.where(cand, 0.02, 0.01)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        MonitorEvent(
            arm="candidate" if cand[i] else "stable",
            traffic_bp=500,
            at=t0 + timedelta(seconds=i),
            error=bool(bad[i]),
        )
        for i in range(n)
    ]
    g = Guardrail.from_mapping({"metric": "error", "max_increase": "20%", "detect": "100%"})
    monitor = RolloutMonitor([g])
    monitor.fold(events)
    verdict = monitor.verdicts()[0]
    direct = conditional_log_evalue(
        [int((bad & cand).sum())],
        [int((bad & ~cand).sum())],
        [0.05],
        null_ratio=1.2,
        mixture=RateMixture.around(1.2, 2.0),
    )
    assert verdict.evidence["e_value"] == pytest.approx(math.exp(float(direct)))


def test_the_checkpoint_is_sized_where_its_test_fires_with_the_stated_power(
    bench: ModuleType,
) -> None:
    # Failures 1% -> 2% against a 20% tolerance at a 5% share: bad events per candidate
    # request (0.05 * 0.02 + 0.95 * 0.01) / 0.05 = 0.21.
    q0, q1 = (float(candidate_share_of_bad(0.05, r)) for r in (1.2, 2.0))
    alpha = bench.CHECKPOINT_SPEND * bench.ALPHA
    n1 = bench.checkpoint_size(q0, q1, 0.21, alpha)
    assert bench.checkpoint_size(q0, float(candidate_share_of_bad(0.05, 3.0)), 0.21, alpha) < n1
    rng = np.random.default_rng(2)
    runs = 4000
    total = rng.poisson(n1 * 0.21, runs)
    critical = sps.binom.isf(alpha, total, q0)
    critical = np.where(sps.binom.sf(critical, total, q0) > alpha, critical + 1, critical)
    fired = rng.binomial(total, q1) > critical
    assert fired.mean() == pytest.approx(bench.CHECKPOINT_POWER, abs=0.03)
    # ... and with the null's share of bad events it fires at most alpha of the time.
    assert (rng.binomial(total, q0) > critical).mean() <= alpha + 3 * math.sqrt(alpha / runs)


def test_late_frozen_lines_keep_alpha_on_aa_and_still_detect(bench: ModuleType) -> None:
    # Given the late-line scenarios at a CI size
    names = ("aa_late_p95", "aa_late_p95_frozen_in_incident", "late_p95_latency_x1.5")
    results = bench.run_late_lines(runs=200, seed=3, alpha=bench.ALPHA, per_look=400, names=names)
    by_name = {r["scenario"]: r for r in results}
    assert set(by_name) == set(names)
    # Then A/A rollouts (one whose line froze during a shared incident too) stay within alpha
    for aa in ("aa_late_p95", "aa_late_p95_frozen_in_incident"):
        assert by_name[aa]["methods"]["late line"]["false_rollback"] <= bench.ALPHA
    # And a 1.5x slower candidate is still caught, nearly as fast as with a line known at start
    slow = by_name["late_p95_latency_x1.5"]
    assert slow["methods"]["late line"]["rollback_rate"] > 0.95
    assert slow["late_over_known"] < 1.5
    assert slow["line_observations"] == 400
    table = bench.render_late_lines(results, alpha=bench.ALPHA)
    assert "late_p95_latency_x1.5" in table
    assert max(len(line) for line in table.splitlines()) <= 110
