"""Incidents: bundles written with every rollback, export, and replay through decide()."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from _rollout_support import POLICY, CountingMonitors, insert_events, setup_policy, small_plan
from policy_canary.canonical import digest
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller
from policy_canary.controller._incidents import Incidents, replay, replay_file
from policy_canary.controller._rollouts import Rollouts
from policy_canary.errors import InputError, NotFoundError
from policy_canary.store import Store


@pytest.fixture
def rolled_back(store: Store, clock: ManualClock) -> str:
    """A rollout that advanced once, then breached in validation; returns the incident id."""
    setup_policy(store, clock)
    monitors = CountingMonitors(breach_after=5, min_n=5)
    row = Rollouts(store, clock=clock, monitors=monitors).start(
        POLICY, candidate="v2", plan=small_plan()
    )
    controller = Controller(store, clock=clock, monitors=monitors, holder="t")
    insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=20, stable=20)
    controller.tick()  # hold: dwell
    clock.advance(timedelta(minutes=10))
    controller.tick()  # advance
    insert_events(store, rollout_id=row.id, stage="validation", at=clock.now(), candidate=20,
                  stable=20, errors=5)  # fmt: skip
    clock.advance(timedelta(minutes=1))
    controller.tick()  # rollback
    (incident,) = Incidents(store).list()
    return incident.id


def test_bundle_holds_everything_needed_to_reproduce(store: Store, rolled_back: str) -> None:
    incident = Incidents(store).get(rolled_back[:8])
    b = incident.bundle
    assert incident.bundle_hash == digest(b)
    assert b["plan_hash"] == small_plan().digest
    assert b["versions"]["baseline"]["spec"] == {"prompt": "v1"}
    assert b["versions"]["candidate"]["spec"] == {"prompt": "v2"}
    assert [t["action"] for t in b["trace"]] == ["start", "hold", "advance", "rollback"]
    assert b["decision"]["guardrails"] == ["error_rate"]
    assert b["stages"]["canary"]["candidate"]["requests"] == 20
    assert b["stages"]["validation"]["candidate"]["errors"] == 5
    assert b["events"]["first_at"] == "2026-01-01T00:00:00+00:00"
    assert b["events"]["events_through"] > 0
    assert b["rollout"]["state"] == "rolled_back"
    assert b["rollout"]["before"]["stage_index"] == 1


def test_exported_incident_replays_to_the_same_decision(
    store: Store, rolled_back: str, tmp_path: Path
) -> None:
    path = tmp_path / "incident.json"
    Incidents(store).export(rolled_back, path)
    result = replay_file(path)
    assert result.ok, result.problems
    assert result.decisive_seq == result.replayed_decisive_seq == 4
    assert [(s.recorded, s.replayed) for s in result.steps] == [
        ("hold", "hold"),
        ("advance", "advance"),
        ("rollback", "rollback"),
    ]


def test_a_tampered_file_is_detected(store: Store, rolled_back: str, tmp_path: Path) -> None:
    document = Incidents(store).get(rolled_back).export_document()
    document["bundle"]["trace"][3]["verdicts"][0]["status"] = "pass"
    result = replay(document)
    assert not result.ok
    assert any("does not hash" in p for p in result.problems)
    # Even re-hashed to look genuine, the altered evidence no longer leads to the rollback.
    document["bundle_hash"] = digest(document["bundle"])
    result = replay(document)
    assert not result.ok
    assert result.replayed_decisive_seq is None
    assert any("tick 4" in p and "now says hold" in p for p in result.problems)


def test_a_tampered_decision_is_detected(store: Store, rolled_back: str) -> None:
    document = Incidents(store).get(rolled_back).export_document()
    document["bundle"]["trace"][2]["inputs"]["snapshot"]["samples"] = {"candidate": 0}
    document["bundle_hash"] = digest(document["bundle"])
    result = replay(document)
    assert not result.ok
    assert "tick 3" in result.problems[0]


def test_manual_rollback_replays_its_automatic_ticks(store: Store, clock: ManualClock) -> None:
    setup_policy(store, clock)
    rollouts = Rollouts(store, clock=clock, monitors=CountingMonitors())
    rollouts.start(POLICY, candidate="v2", plan=small_plan())
    Controller(store, clock=clock, monitors=CountingMonitors(), holder="t").tick()
    rollouts.rollback(POLICY, reason="gut feeling", actor="dana")
    (incident,) = Incidents(store).list()
    result = replay(incident.export_document())
    assert result.ok
    assert result.manual
    assert result.decisive_seq == 3


def test_replay_refuses_files_that_are_not_incidents(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="not a policy-canary incident export"):
        replay_file(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="malformed JSON"):
        replay_file(path)


def test_unknown_incident_is_a_clear_error(store: Store) -> None:
    with pytest.raises(NotFoundError, match="incident list"):
        Incidents(store).get("inc_nope")
