"""Smoke test of the controller benchmark: end to end at its --quick size, JSON checked.

Timings are not asserted (they depend on the machine); what each tick did is: every rollout
folded exactly its new events, none failed, all still hold, and the history really doubled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _bench_run import run_bench


@pytest.mark.slow
def test_bench_controller_smoke(tmp_path: Path) -> None:
    result: dict[str, Any] = run_bench("bench_controller.py", tmp_path, "--quick")
    rollouts, per_rollout = result["rollouts"], result["events_per_rollout"]
    assert (rollouts, per_rollout, result["history"]) == (20, 100, 5_000)
    backends = result["backends"]
    assert list(backends) == ["SQLite (file, WAL)", "PostgreSQL"]
    assert result["processes"] == [1, 2]
    per_block = (result["warm_ticks"] + result["ticks"]) * rollouts * per_rollout
    for backend in backends.values():
        assert "skipped" not in backend
        phases = backend["phases"]
        assert [p["processes"] for p in phases] == [1, 2, 1, 2]
        # Each row counts the events after its ticks; phase two stored the history again, and
        # two blocks of ticks came in between (two processes', then one's again).
        ticked = 2 * per_block
        assert phases[2]["history"] == phases[0]["history"] + result["history"] + ticked
        for phase in phases:
            assert len(phase["runs"]) == result["ticks"]
            for run in phase["runs"]:
                assert run["error_count"] == 0, run["errors"]
                assert run["rollouts"] == run["recorded"] == rollouts
                assert run["folded"] == rollouts * per_rollout
                assert run["actions"] == ["hold"]
                assert run["seconds"] > 0
                assert run["rss_mb"] > 0
                if phase["processes"] == 2:  # the child's memory is counted
                    assert run["children_rss_mb"] > 0
        assert set(backend["growth"]) == {"1", "2"}
        assert backend["still_running"] == rollouts
        assert backend["tracemalloc_peak_mb"] > 0
    assert len(result["load_before"]) == len(result["load_after"]) == 3
