"""``policy-canary demo``: the whole story, through the real SDK, store, monitors and controller."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policy_canary.cli import app
from policy_canary.simulate import V1, V3, SimulatedAgent


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_demo_promotes_the_good_change_and_rolls_back_the_bad_one(in_tmp: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--webhook", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    good, bad = report["chapters"]
    assert (good["candidate"], good["state"], good["stage"]) == ("v2", "promoted", "soak")
    assert good["incident_id"] is None
    assert (bad["candidate"], bad["state"], bad["stage"]) == ("v3", "rolled_back", "canary")
    assert "breached" in bad["reason"]
    assert bad["incident_id"].startswith("inc_")
    # Each rollout's candidate really served traffic, and v2's soak reached half of it.
    assert good["requests"]["candidate"] > 50_000
    assert 0 < bad["requests"]["candidate"] < bad["requests"]["stable"] / 20
    # Alerts went through the outbox to both sinks; the webhook receiver checked signatures.
    assert report["alerts_pending"] == 0
    assert report["webhook_received"] >= 2
    alert_lines = (in_tmp / "policy-canary-demo-alerts.jsonl").read_text().splitlines()
    kinds = {json.loads(line)["kind"] for line in alert_lines}
    assert {"promoted", "rollback"} <= kinds

    db = ["--db", "policy-canary-demo.db"]
    history = json.loads(
        runner.invoke(app, [*db, "policy", "history", "support-agent", "--json"]).stdout
    )
    assert [h["kind"] for h in history] == ["bootstrap", "promotion"]
    incident = runner.invoke(app, [*db, "incident", "show", bad["incident_id"], "--json"])
    assert incident.exit_code == 0, incident.stderr
    exported = in_tmp / "incident.json"
    assert (
        runner.invoke(
            app, [*db, "incident", "export", bad["incident_id"], "-o", str(exported)]
        ).exit_code
        == 0
    )
    replayed = runner.invoke(app, ["incident", "replay", str(exported), "--json"])
    assert replayed.exit_code == 0, replayed.stderr


def test_demo_refuses_a_database_that_already_holds_the_story(in_tmp: Path) -> None:
    runner = CliRunner()
    db = f"sqlite:///{in_tmp}/used.db"
    spec = in_tmp / "v1.json"
    spec.write_text(json.dumps(V1))
    assert (
        runner.invoke(app, ["--db", db, "policy", "push", "support-agent", str(spec)]).exit_code
        == 0
    )
    before = (in_tmp / "used.db").read_bytes()
    result = runner.invoke(app, ["demo", "--db", db])
    assert result.exit_code == 1
    assert "fresh database" in result.stderr
    assert (in_tmp / "used.db").read_bytes() == before


def test_simulated_agent_follows_its_spec() -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    safe = [SimulatedAgent(V1).request(rng) for _ in range(20_000)]
    risky = [SimulatedAgent(V3).request(rng) for _ in range(20_000)]
    error_rate = lambda outcomes: sum(o.error for o in outcomes) / len(outcomes)  # noqa: E731
    flagged = lambda outcomes: sum(bool(o.safety_flags) for o in outcomes) / len(outcomes)  # noqa: E731
    assert 0.008 < error_rate(safe) < 0.016
    assert error_rate(risky) > 2.5 * error_rate(safe)
    assert flagged(safe) == 0
    assert 0.002 < flagged(risky) < 0.01
    assert all(o.cost_usd > 0 and o.latency_ms > 0 and 0 < o.quality < 1 for o in safe[:500])
