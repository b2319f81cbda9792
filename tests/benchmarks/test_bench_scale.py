"""Smoke tests of the scale benchmarks (writers, retention): end to end, tiny sizes, JSON.

Timings are not asserted (they depend on the machine); the correctness evidence is: every
written event stored and read exactly once by a reader past the horizon, every old event
pruned under both ways of pruning.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _bench_run import run_bench


@pytest.mark.slow
def test_bench_writers_smoke(tmp_path: Path) -> None:
    result = run_bench("bench_writers.py", tmp_path, "--quick")
    runs = result["runs"]
    assert isinstance(runs, list)
    assert [(r["protocol"], r["writers"]) for r in runs] == [
        ("global lock", 1),
        ("floors", 1),
        ("global lock", 2),
        ("floors", 2),
    ]
    for run in runs:
        assert run["written"] > 0
        assert run["stored"] == run["written"]
        assert run["reader_seen"] == run["stored"]
        assert run["reader_duplicates"] == 0
    assert runs[0]["vs_one_writer"] == 1.0


@pytest.mark.slow
def test_bench_retention_smoke(tmp_path: Path) -> None:
    result = run_bench("bench_retention.py", tmp_path, "--quick")
    runs = result["runs"]
    assert isinstance(runs, list)
    assert [(r["backend"], r["mode"]) for r in runs] == [
        ("SQLite (file, WAL)", "one transaction"),
        ("SQLite (file, WAL)", "chunks of 10,000"),
        ("PostgreSQL", "one transaction"),
        ("PostgreSQL", "chunks of 10,000"),
    ]
    for run in runs:
        assert run["deleted"] == run["events"] == 20_000
        assert run["bytes_per_event"] > 0
        assert run["writes"] > 0
        assert run["ticks"] > 0


@pytest.mark.slow
def test_bench_sqlite_writers_smoke(tmp_path: Path) -> None:
    result = run_bench("bench_sqlite_writers.py", tmp_path, "--quick")
    runs = result["runs"]
    assert isinstance(runs, list)
    assert [(r["protocol"], r["writers"]) for r in runs] == [
        ("busy handler", 1),
        ("write queue", 1),
        ("busy handler", 2),
        ("write queue", 2),
    ]
    for run in runs:
        assert run["written"] > 0
        assert run["stored"] == run["written"]
        assert 0 < run["share_min"] <= run["share_max"] <= 1
        assert run["wait_p50_ms"] <= run["wait_p99_ms"] <= run["wait_max_ms"]
