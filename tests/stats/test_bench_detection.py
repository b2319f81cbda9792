"""The detection benchmark cannot rot: its core runs on a tiny config in CI."""

from __future__ import annotations

import importlib.util
import math
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from policy_canary.guardrails import Guardrail
from policy_canary.monitors import MonitorEvent, RolloutMonitor
from policy_canary.stats import RateMixture, conditional_log_evalue

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_detection.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_detection", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_detection"] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_core_runs_on_a_tiny_config(bench: ModuleType) -> None:
    names = ("aa_stationary_error", "failure_1_to_2pct", "latency_plus_10pct")
    result = bench.run_benchmark(runs=40, seed=1, names=names)
    by_name = {s["scenario"]: s for s in result["scenarios"]}
    assert set(by_name) == set(names)
    for scenario in by_name.values():
        assert {"ours", "naive", "z/t-every-look", "kayenta@0.01"} <= set(scenario["methods"])
    assert by_name["aa_stationary_error"]["methods"]["ours"]["false_rollback"] <= 0.05
    ours = by_name["failure_1_to_2pct"]["methods"]["ours"]
    assert ours["rollback_rate"] > 0.9
    assert ours["wald_floor"] == pytest.approx(1416.5, abs=1)
    assert 1.0 < ours["ratio_to_floor"] < 2.5
    assert by_name["latency_plus_10pct"]["methods"]["ours"]["rollback_rate"] > 0.9
    table = bench.render(result)
    assert "failure_1_to_2pct" in table
    assert "x Wald" in table


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
