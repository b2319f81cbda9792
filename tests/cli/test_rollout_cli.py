"""``policy-canary rollout|rollback|controller|incident|plan``: JSON output and exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from _rollout_support import PLAN_YAML, insert_events
from policy_canary.canonical import digest
from policy_canary.store import Store

Cli = Callable[..., Any]  # the `cli` fixture of tests/cli/conftest.py


@pytest.fixture
def pushed(cli: Cli, tmp_path: Path) -> Path:
    """support-agent v1 (stable) and v2; returns a plan file."""
    for n in (1, 2):
        spec = tmp_path / f"v{n}.yaml"
        spec.write_text(f"prompt: version {n}\n")
        assert cli("policy", "push", "support-agent", str(spec)).code == 0
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN_YAML)
    return plan


def test_start_status_pause_resume_promote(cli: Cli, pushed: Path) -> None:
    started = cli("rollout", "start", "support-agent", "--candidate", "v2", "--plan", str(pushed),
                  "--reason", "ship v2", "--json")  # fmt: skip
    assert started.code == 0, started.stderr
    data = started.json()
    assert (data["state"], data["stage"], data["traffic_percent"]) == ("running", "canary", 1)
    assert (data["candidate"], data["baseline"]) == ("v2", "v1")

    again = cli("rollout", "start", "support-agent", "--candidate", "v2", "--plan", str(pushed))
    assert again.code == 1
    assert "already has an active rollout" in again.stderr

    (status,) = cli("rollout", "status", "--json").json()
    assert status["id"] == data["id"]
    assert status["samples"] == {"candidate": 0, "stable": 0}
    assert cli("rollout", "status", "support-agent").code == 0

    paused = cli("rollout", "pause", "support-agent", "--reason", "lunch", "--json").json()
    assert paused["state"] == "paused"
    resumed = cli("rollout", "resume", "support-agent", "--reason", "back", "--json").json()
    assert resumed["state"] == "running"
    advanced = cli("rollout", "promote", "support-agent", "--reason", "ok", "--json").json()
    assert (advanced["stage"], advanced["traffic_percent"]) == ("validation", 10)
    promoted = cli("rollout", "promote", "support-agent", "--full", "--reason", "go", "--json")
    assert promoted.json()["state"] == "promoted"
    history = cli("policy", "history", "support-agent", "--json").json()
    assert [e["kind"] for e in history] == ["bootstrap", "promotion"]

    # After a promotion, `rollback` restores the previous stable from the history.
    back = cli("rollback", "support-agent", "--reason", "prod regression", "--json")
    assert back.code == 0, back.stderr
    assert back.json()["release"]["kind"] == "rollback"
    assert cli("policy", "show", "support-agent", "--json").json()["label"] == "v1"


def test_manual_rollback_writes_an_incident_that_replays(
    cli: Cli, pushed: Path, tmp_path: Path
) -> None:
    cli("rollout", "start", "support-agent", "--candidate", "v2", "--plan", str(pushed))
    once = cli("controller", "--once", "--no-alerts", "--json")
    assert once.code == 0, once.stderr
    assert once.json()["outcomes"][0]["action"]["kind"] == "hold"
    rolled = cli("rollout", "rollback", "support-agent", "--reason", "bad vibes", "--json")
    assert rolled.json()["rollout"]["state"] == "rolled_back"

    (incident,) = cli("incident", "list", "--json").json()
    assert incident["kind"] == "manual_rollback"
    shown = cli("incident", "show", incident["id"], "--json").json()
    assert shown["bundle"]["versions"]["candidate"]["label"] == "v2"
    assert cli("incident", "show", incident["id"]).code == 0

    out = tmp_path / "incident.json"
    assert cli("incident", "export", incident["id"], "-o", str(out)).code == 0
    replayed = cli("incident", "replay", str(out), "--json")
    assert replayed.code == 0
    assert replayed.json()["ok"] is True

    doc = json.loads(out.read_text())
    doc["bundle"]["decision"]["message"] = "edited"
    out.write_text(json.dumps(doc))
    tampered = cli("incident", "replay", str(out))
    assert tampered.code == 1
    assert "does not hash" in tampered.stdout

    refused = cli("rollout", "start", "support-agent", "--candidate", "v2", "--plan", str(pushed))
    assert refused.code == 1
    assert "--force --reason" in refused.stderr
    forced = cli("rollout", "start", "support-agent", "--candidate", "v2", "--plan", str(pushed),
                 "--force", "--reason", "fixed the prompt", "--json")  # fmt: skip
    assert forced.code == 0
    assert forced.json()["state"] == "running"
    aborted = cli("rollout", "abort", "support-agent", "--reason", "enough", "--json")
    assert aborted.json()["state"] == "aborted"
    history = cli("rollout", "history", "support-agent", "--json").json()
    assert [h["state"] for h in history] == ["aborted", "rolled_back"]
    assert history[1]["end_reason"].endswith(": bad vibes")
    assert cli("rollout", "history", "support-agent").code == 0


def test_incident_exports_are_signed_and_verified_with_the_environment_key(
    cli: Cli, pushed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("rollout", "start", "support-agent", "--candidate", "v2", "--plan", str(pushed))
    cli("rollout", "rollback", "support-agent", "--reason", "bad vibes")
    (incident,) = cli("incident", "list", "--json").json()
    unsigned = tmp_path / "unsigned.json"
    assert cli("incident", "export", incident["id"], "-o", str(unsigned)).code == 0
    plain = cli("incident", "replay", str(unsigned))
    assert plain.code == 0
    assert "not signed: the bundle hash guards against accidents" in " ".join(plain.stdout.split())

    monkeypatch.setenv("POLICY_CANARY_INCIDENT_KEY", "s3cret-s3cret-s3cret")
    signed = tmp_path / "signed.json"
    assert cli("incident", "export", incident["id"], "-o", str(signed)).code == 0
    verified = cli("incident", "replay", str(signed), "--json")
    assert verified.code == 0, verified.stderr
    assert verified.json()["signature"] == "verified"
    assert "signature verified" in cli("incident", "replay", str(signed)).stdout
    refused = cli("incident", "replay", str(unsigned), "--json")
    assert refused.code == 1
    assert "not signed, but POLICY_CANARY_INCIDENT_KEY is set" in refused.json()["error"]["message"]

    doc = json.loads(signed.read_text())
    doc["bundle"]["summary"] = doc["incident"]["summary"] = "nothing happened"
    doc["bundle_hash"] = doc["incident"]["bundle_hash"] = digest(doc["bundle"])
    signed.write_text(json.dumps(doc))
    forged = cli("incident", "replay", str(signed))
    assert forged.code == 1
    assert "the signature does not match" in forged.stderr
    monkeypatch.setenv("POLICY_CANARY_INCIDENT_KEY", "short")
    assert "at least 16" in cli("incident", "replay", str(signed)).stderr


def test_commands_without_an_active_rollout_exit_1(cli: Cli, pushed: Path) -> None:
    result = cli("rollout", "pause", "support-agent", "--reason", "x", "--json")
    assert result.code == 1
    assert json.loads(result.stdout)["error"]["code"] == "not_found"
    assert cli("rollout", "pause", "support-agent").code == 2  # --reason is required
    assert cli("incident", "show", "inc_missing").code == 1


def test_plan_check_and_show_default(cli: Cli, pushed: Path, tmp_path: Path) -> None:
    ok = cli("plan", "check", str(pushed), "--json")
    assert ok.code == 0
    assert ok.json()["plan"]["stages"][1]["strict"] is True
    assert cli("plan", "check", str(pushed)).code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(PLAN_YAML.replace("traffic: 50", "traffic: 5"))
    result = cli("plan", "check", str(bad))
    assert result.code == 1
    assert f"{bad}:15:" in result.stderr
    default = cli("plan", "show-default", "--yaml")
    assert default.code == 0
    assert "validation" in default.stdout
    written = tmp_path / "default.yaml"
    written.write_text(default.stdout)
    assert cli("plan", "check", str(written)).code == 0
    assert cli("plan", "show-default").code == 0


def test_plan_check_refuses_a_reversed_direction_and_warns_on_an_acknowledged_one(
    cli: Cli, tmp_path: Path
) -> None:
    rule = "  - {name: error_rate, metric: error, max_increase: 20%}"
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(PLAN_YAML.replace(rule, rule + "\n  - {name: e, metric: error, "
                                       "max_decrease: 10%}"))  # fmt: skip
    refused = cli("plan", "check", str(wrong))
    assert refused.code == 1
    assert f"{wrong}:4:44: guardrail 'e': error gets worse going up" in refused.stderr
    meant = tmp_path / "meant.yaml"
    meant.write_text(wrong.read_text().replace("max_decrease: 10%}", "max_decrease: 10%, "
                                               "direction: down}"))  # fmt: skip
    checked = cli("plan", "check", str(meant), "--json")
    assert checked.code == 0, checked.stderr
    assert checked.json()["warnings"][0].startswith("guardrail 'e' rolls back when error goes down")
    human = cli("plan", "check", str(meant))
    assert "warning: guardrail 'e' rolls back when error goes down" in " ".join(
        human.stdout.split()
    )


def test_controller_interval_must_be_a_duration(cli: Cli) -> None:
    result = cli("controller", "--interval", "soon", "--once")
    assert result.code == 1
    assert "--interval" in result.stderr


def test_controller_ticks_in_several_processes_and_refuses_a_count_out_of_range(
    cli: Cli, pushed: Path, tmp_path: Path
) -> None:
    names = [f"agent-{n}" for n in range(4)]
    for name in names:
        for n in (1, 2):
            spec = tmp_path / f"{name}-v{n}.yaml"
            spec.write_text(f"prompt: {name} version {n}\n")
            assert cli("policy", "push", name, str(spec)).code == 0
        started = cli("rollout", "start", name, "--candidate", "v2", "--plan", str(pushed))
        assert started.code == 0, started.stderr

    once = cli("controller", "--once", "--no-alerts", "--processes", "2", "--json")
    assert once.code == 0, once.stderr
    outcomes = once.json()["outcomes"]
    assert sorted(o["policy"] for o in outcomes) == names
    assert {o["action"]["kind"] for o in outcomes} == {"hold"}

    for count, why in (("0", "greater than or equal to 1"), ("65", "less than or equal to 64")):
        refused = cli("controller", "--once", "--processes", count)
        assert refused.code == 2
        said = " ".join(refused.stderr.replace("│", " ").split())  # unwrapped from its box
        assert "Invalid value for '--processes'" in said
        assert why in said


def test_status_watch_refreshes(cli: Cli, pushed: Path) -> None:
    cli("rollout", "start", "support-agent", "--candidate", "v2", "--plan", str(pushed))
    result = cli("rollout", "status", "support-agent", "--watch", "--interval", "0.1s",
                 "--refreshes", "2", "--json")  # fmt: skip
    assert result.code == 0
    assert result.stdout.count('"policy": "support-agent"') == 2


def test_plan_check_sizes_stages_with_preflight(cli: Cli, pushed: Path) -> None:
    data = cli("plan", "check", str(pushed), "--rps", "0.5", "--baseline-rate", "error=0.01",
               "--policy", "support-agent", "--json").json()  # fmt: skip
    rows = {(r["stage"], r["guardrail"]): r for r in data["preflight"]}
    assert set(rows) == {
        (s, g) for s in ("canary", "validation", "soak") for g in ("error_rate", "critical",
                                                                      "quality")
    }  # fmt: skip
    canary = rows[("canary", "error_rate")]
    assert canary["expected_candidate_requests"] > canary["wald_floor"] > 0
    # At 0.5 requests/s a 1% canary cannot detect the regression within its hour.
    assert canary["warning"].startswith("stage 'canary' cannot detect error_rate")
    assert canary["warning"] in data["warnings"]
    assert rows[("soak", "critical")]["note"].startswith("tripwire")
    bad = cli("plan", "check", str(pushed), "--baseline-rate", "error=lots")
    assert bad.code == 1
    assert "METRIC=RATE" in bad.stderr


def test_start_and_plan_check_say_which_guardrail_metrics_stable_records(
    cli: Cli, pushed: Path, store: Store
) -> None:
    # Given stable traffic that records errors and latency but never quality
    insert_events(store, rollout_id=None, stage=None, at=datetime.now(UTC), stable=40,
                  traffic_bp=0)  # fmt: skip

    # Then plan check names the uncovered guardrail, in both outputs
    checked = cli("plan", "check", str(pushed), "--policy", "support-agent", "--json")
    coverage = {c["guardrail"]: c for c in checked.json()["metrics_coverage"]}
    assert coverage["error_rate"] == {
        "guardrail": "error_rate",
        "metric": "error",
        "requests": 40,
        "observations": 40,
        "covered": True,
        "message": "error_rate: error on 40 of stable's 40 recent requests",
    }
    assert not coverage["quality"]["covered"]
    human = cli("plan", "check", str(pushed), "--policy", "support-agent")
    assert "warning: quality: none of stable's 40 recent requests carried quality" in " ".join(
        human.stdout.split()
    )

    # And --require-metrics refuses the start with a clear error, storing nothing
    refused = cli("rollout", "start", "support-agent", "--candidate", "v2", "--plan",
                  str(pushed), "--require-metrics")  # fmt: skip
    assert refused.code == 1
    assert "--require-metrics" in refused.stderr
    assert "quality: none of stable's 40 recent requests carried quality" in refused.stderr
    assert cli("rollout", "status", "--json").json() == []

    # And a start without it warns, and reports the coverage in --json
    started = cli("rollout", "start", "support-agent", "--candidate", "v2", "--plan", str(pushed))
    assert started.code == 0, started.stderr
    assert "warning: quality: none of stable's 40" in " ".join(started.stdout.split())
    assert "error_rate" not in started.stdout
    data = cli("rollout", "abort", "support-agent", "--reason", "again", "--json")
    assert data.code == 0
    again = cli("rollout", "start", "support-agent", "--candidate", "v2", "--plan", str(pushed),
                "--json")  # fmt: skip
    assert {c["guardrail"]: c["covered"] for c in again.json()["metrics_coverage"]} == {
        "error_rate": True,
        "critical": True,
        "quality": False,
    }


def test_status_shows_routed_against_recorded_per_arm(cli: Cli, pushed: Path, db_url: str) -> None:
    import random

    from policy_canary import Canary
    from policy_canary.store import Store

    started = cli("rollout", "start", "support-agent", "--candidate", "v2", "--plan", str(pushed),
                  "--reason", "ship v2", "--json")  # fmt: skip
    assert started.code == 0, started.stderr
    store = Store.open(db_url)
    try:
        with Canary(store, background=False, rng=random.Random(5)) as canary:
            gate = canary.gate("support-agent")
            for i in range(3000):
                decision = gate.route(f"user-{i}")
                if decision.arm.value == "stable":  # the candidate's worker crashes
                    decision.record(latency_ms=10.0)
    finally:
        store.close()
    (status,) = cli("rollout", "status", "--json").json()
    routed = status["routed"]
    assert routed["candidate"]["routed"] > 0
    assert routed["candidate"]["recorded"] == 0
    assert routed["stable"]["routed"] == routed["stable"]["recorded"] > 0
    assert routed["candidate"]["routed"] + routed["stable"]["routed"] == 3000
    human = cli("rollout", "status", "support-agent")
    assert human.code == 0
    assert "recorded share" in human.stdout
    assert f"{routed['stable']['routed']:,}" in human.stdout
