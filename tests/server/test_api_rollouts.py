"""Rollout and plan endpoints: the library calls of 'rollout ...' and 'plan check'."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from _api_support import SPEC_V2, Api, push
from typer.testing import CliRunner

from _rollout_support import insert_events
from policy_canary.cli import app as cli_app
from policy_canary.plan import RolloutPlan

NAME = "support-agent"
BASE = f"/api/v1/policies/{NAME}"


def cli_json(api: Api, *args: str) -> Any:
    result = CliRunner().invoke(cli_app, ["--db", api.store.url, *args, "--json"])
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    return json.loads(result.stdout)


def _timeless(statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CLI runs on the wall clock, the app on a manual one: dwell differs, nothing else."""
    return [{k: v for k, v in s.items() if k != "dwell_seconds"} for s in statuses]


def _seed(api: Api) -> None:
    push(api)
    push(api, spec=SPEC_V2)


def test_start_with_the_default_plan_then_steer_it_by_hand(api: Api) -> None:
    _seed(api)
    started = api.post(f"{BASE}/rollouts", {"candidate": "v2", "reason": "ship"}, "operator")
    assert started.status_code == 201, started.text
    status = started.json()
    assert status["state"] == "running"
    assert status["actor"] == "operator-token"
    rollout_id = status["id"]
    assert _timeless(api.get("/api/v1/rollouts", "viewer").json()) == _timeless(
        cli_json(api, "rollout", "status")
    )
    assert api.get(f"/api/v1/rollouts/{rollout_id}", "viewer").json()["id"] == rollout_id
    paused = api.post(f"{BASE}/rollout/pause", {"reason": "look"}, "operator").json()
    assert paused["state"] == "paused"
    again = api.post(f"{BASE}/rollout/pause", {"reason": "look"}, "operator")
    assert again.status_code == 409
    assert again.json()["code"] == "conflict"
    resumed = api.post(f"{BASE}/rollout/resume", {"reason": "ok"}, "operator").json()
    assert resumed["state"] == "running"
    advanced = api.post(f"{BASE}/rollout/promote", {"reason": "fine"}, "operator").json()
    assert advanced["stage_number"] == 2
    rolled = api.post(f"{BASE}/rollout/rollback", {"reason": "bad"}, "operator").json()
    assert rolled["rollout"]["state"] == "rolled_back"
    assert _timeless(api.get(f"{BASE}/rollouts", "viewer").json()) == _timeless(
        cli_json(api, "rollout", "history", NAME)
    )
    actors = {a["actor"] for a in api.get("/api/v1/audit", "viewer").json()}
    assert "operator-token" in actors


def test_the_trace_lists_every_recorded_tick_oldest_first(api: Api) -> None:
    _seed(api)
    rollout_id = api.post(f"{BASE}/rollouts", {"candidate": "v2", "reason": "ship"}, "operator")
    rollout_id = rollout_id.json()["id"]
    api.post(f"{BASE}/rollout/pause", {"reason": "look <here>"}, "operator")
    trace = api.get(f"/api/v1/rollouts/{rollout_id}/trace", "viewer").json()
    assert [t["action"] for t in trace] == ["start", "pause"]
    assert [t["seq"] for t in trace] == [1, 2]
    assert trace[1]["inputs"]["actor"] == "operator-token"
    assert "look <here>" in trace[1]["message"]
    missing = api.get("/api/v1/rollouts/ro_missing/trace", "viewer")
    assert missing.status_code == 404


def test_start_with_a_yaml_plan_text_freezes_that_plan(api: Api) -> None:
    _seed(api)
    plan = RolloutPlan.default().to_dict()
    plan["stages"][0]["name"] = "tiny"
    text = yaml.safe_dump(plan, sort_keys=False)
    started = api.post(f"{BASE}/rollouts", {"candidate": "v2", "plan": text}, "operator")
    assert started.status_code == 201, started.text
    assert started.json()["stage"] == "tiny"
    aborted = api.post(f"{BASE}/rollout/abort", {"reason": "changed my mind"}, "operator")
    assert aborted.json()["state"] == "aborted"


def test_a_bad_plan_names_the_line_and_starts_nothing(api: Api) -> None:
    _seed(api)
    bad_plan = "stages:\n  - name: x\n    traffic: 2000%\n"
    response = api.post(f"{BASE}/rollouts", {"candidate": "v2", "plan": bad_plan}, "operator")
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_plan"
    assert "plan:" in response.json()["detail"]
    assert api.get("/api/v1/rollouts", "viewer").json() == []


def test_manual_transitions_require_a_reason(api: Api) -> None:
    _seed(api)
    api.post(f"{BASE}/rollouts", {"candidate": "v2"}, "operator")
    for verb in ("pause", "resume", "promote", "rollback", "abort"):
        response = api.post(f"{BASE}/rollout/{verb}", {}, "operator")
        assert response.status_code == 400, verb
        assert "reason" in response.json()["detail"]
    blank = api.post(f"{BASE}/rollout/abort", {"reason": ""}, "operator")
    assert blank.status_code == 400
    assert "--reason" in blank.json()["detail"] or "reason" in blank.json()["detail"]


def test_plan_check_matches_the_cli(api: Api, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(RolloutPlan.default().to_dict(), sort_keys=False))
    body = {"plan": plan_file.read_text(), "rps": 50, "baseline_rates": {"error": 0.01}}
    checked = api.post("/api/v1/plans/check", body, "viewer")
    assert checked.status_code == 200, checked.text
    expected = cli_json(
        api, "plan", "check", str(plan_file), "--rps", "50", "--baseline-rate", "error=0.01"
    )
    assert checked.json() == expected
    default = api.get("/api/v1/plans/default", "viewer").json()
    assert default == cli_json(api, "plan", "show-default")


def test_plan_check_and_start_report_metrics_coverage_and_can_require_it(api: Api) -> None:
    _seed(api)
    insert_events(api.store, rollout_id=None, stage=None, at=datetime.now(UTC), stable=30,
                  traffic_bp=0)  # fmt: skip
    plan = RolloutPlan.default().to_dict()
    checked = api.post("/api/v1/plans/check", {"plan": plan, "policy": NAME}, "viewer").json()
    coverage = {c["guardrail"]: c["covered"] for c in checked["metrics_coverage"]}
    assert coverage == {
        "error_rate": True,
        "safety_flag_rate": True,
        "critical_safety": True,
        "latency_p95": True,
        "cost": True,
        "quality": False,
    }
    refused = api.post(f"{BASE}/rollouts", {"candidate": "v2", "require_metrics": True}, "operator")
    assert refused.status_code == 409
    assert "quality: none of stable's 30 recent requests carried quality" in refused.text
    started = api.post(f"{BASE}/rollouts", {"candidate": "v2"}, "operator")
    assert started.status_code == 201, started.text
    (quality,) = [c for c in started.json()["metrics_coverage"] if c["guardrail"] == "quality"]
    assert quality["covered"] is False
    assert quality["requests"] == 30
