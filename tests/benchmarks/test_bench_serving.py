"""Smoke tests of the serving benchmarks (route, ingest, start-up): end to end, tiny N, JSON.

Timings are not asserted (they depend on the machine); the structure and the correctness
evidence (realized shares, every event stored) are.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _bench_run import run_bench

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.mark.slow
def test_bench_route_smoke(tmp_path: Path) -> None:
    result = run_bench("bench_route.py", tmp_path, "--n", "2000", "--repeats", "1", timeout=300)
    assert result["n"] == 2000
    assert result["share_bp"] == 500
    rows = {row["name"]: row for row in result["results"]}  # type: ignore[attr-defined]
    route = rows["policy-canary Gate.route()"]
    floor = rows["floor: sha256 hash-and-compare"]
    assert route["median_us"] > 0
    # Same scheme, same keys: the gate and the floor agree exactly.
    assert route["realized_share"] == floor["realized_share"]
    assert 0.02 < route["realized_share"] < 0.08
    assert len(rows) == 9
    assert rows["route() without routed counters"]["median_us"] > 0
    # Span annotation off and on, outside any span and inside a recording one.
    for name in ("False, recording span", "True, no span", "True, recording span"):
        assert rows[f"route() trace_spans={name}"]["median_us"] > 0
    for row in rows.values():
        assert row["status"] == "ok" or row["status"].startswith("unavailable")
        if row["status"] == "ok" and row["realized_share"] is not None:
            assert 0.02 < row["realized_share"] < 0.08
    assert set(result["verdict"]) >= {"route_us", "speedup_vs_fastest_sdk"}  # type: ignore[arg-type]


@pytest.mark.slow
def test_bench_ingest_smoke(tmp_path: Path) -> None:
    result = run_bench("bench_ingest.py", tmp_path, "--n", "500", "--repeats", "1", timeout=300)
    operations = [row["operation"] for row in result["caller"]]  # type: ignore[attr-defined]
    assert operations[0] == "record(): 7 fields"
    assert len(operations) == 3
    backends = result["throughput"]
    assert isinstance(backends, list)
    assert [b["backend"] for b in backends] == ["SQLite (file, WAL)", "PostgreSQL"]
    sqlite = backends[0]
    assert sqlite["status"] == "ok"
    assert sqlite["all_stored"] is True
    assert sqlite["dropped"] == 0
    assert [run["stored"] for run in sqlite["runs"]] == [500]


@pytest.mark.slow
def test_bench_startup_smoke(tmp_path: Path) -> None:
    result = run_bench("bench_startup.py", tmp_path, "--repeats", "1", timeout=300)
    rows = {row["name"]: row for row in result["results"]}  # type: ignore[attr-defined]
    ours = rows["(a) from policy_canary import Canary"]
    opened = rows["(b) (a) + Canary.open(sqlite).gate()"]
    assert ours["status"] == opened["status"] == "ok"
    assert ours["cpu_ms"] > 0
    assert opened["modules"] > ours["modules"]  # the store and its driver loaded
    assert set(result["verdict"]) >= {"import_vs_growthbook", "open_vs_growthbook"}  # type: ignore[arg-type]


@pytest.mark.slow
def test_bench_server_smoke(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:  # the load generator is Debian's, not pip's
        message = "wrk is not installed: apt-get install -y wrk (.ci/run does)"
        if IN_CI:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    result = run_bench("bench_server.py", tmp_path, "--quick", timeout=300)
    events = result["events_sqlite"]
    assert isinstance(events, dict)
    # wrk posts batches of 1,000 for a second: every acknowledged one is stored (a batch in
    # flight when wrk stops may land unacknowledged), none refused.
    assert events["acked"] > 0
    assert events["acked"] % 1_000 == 0
    assert events["stored"] >= events["acked"]
    assert events["errors"] == 0
    assert result["ofrep"]["errors"] == 0  # type: ignore[index]
    assert result["ofrep_8"]["errors"] == 0  # type: ignore[index]  # the 8-connection row
    otlp = result["otlp"]
    assert otlp["accepted"] == 4 * 1_000  # type: ignore[index]  # 4 exports of 1,000 spans
    assert otlp["stored"] == otlp["requests"] == 1_000  # type: ignore[index]  # 4 spans each
    poll = result["poll"]
    assert isinstance(poll, dict)
    # Both ways of answering an unchanged poll were timed, every answer a 304.
    assert poll["fast"]["errors"] == poll["full"]["errors"] == 0
    assert poll["fast"]["requests"] > 0
    assert poll["full"]["requests"] > 0
    assert poll["cpu_ratio"] > 0
    assert result["propagation_sqlite"]["rounds"] == 3  # type: ignore[index]
    assert result["workers"] == 1
    assert len(result["load_before"]) == len(result["load_after"]) == 3  # type: ignore[arg-type]
    ratios = result["ratios"]
    assert isinstance(ratios, dict)
    assert ratios["ofrep_rps"] > 0
    assert ratios["events_sqlite"] > 0


@pytest.mark.slow
def test_bench_agents_smoke(tmp_path: Path) -> None:
    result = run_bench("bench_agents.py", tmp_path, "--quick", "--backend", "sqlite", timeout=300)
    (run,) = result["runs"]  # type: ignore[misc]
    assert run["agents"] == 4
    # Every event the remote agents recorded reached the store through the server.
    assert run["recorded"] > 0
    assert run["dropped"] == 0
    assert run["stored"] == run["recorded"]
    # Two changes (a start and a rollback), each seen by all four agents.
    assert run["propagation_samples"] == 2 * 4
    assert run["propagation_max_ms"] >= run["propagation_p50_ms"] > 0
    assert run["server_cores"] > 0
    assert len(run["bare_stream_ms"]) == 2  # the bare reader saw both changes too
    assert run["marginal_cores_per_1000_agents"] is None  # no smaller count to compare with
