"""Incidents: bundles written with every rollback, export, and replay through decide()."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from _rollout_support import POLICY, CountingMonitors, insert_events, setup_policy, small_plan
from policy_canary.canonical import digest
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller, Incidents, Rollouts, replay, replay_file
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
    assert any("tick 3" in p for p in result.problems)


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


KEY = b"k" * 32


def test_an_edit_outside_the_hashed_bundle_is_reported(store: Store, rolled_back: str) -> None:
    document = Incidents(store).get(rolled_back).export_document()
    assert replay(document).ok
    document["incident"]["summary"] = "manual rollback by dana: nothing to see"
    result = replay(document)
    assert not result.ok
    assert any("envelope's summary" in p for p in result.problems)
    assert result.summary == document["bundle"]["summary"]  # what replay reports is hashed


def test_a_signed_export_verifies_and_any_edit_is_refused_even_when_rehashed(
    store: Store, rolled_back: str, tmp_path: Path
) -> None:
    path = tmp_path / "incident.json"
    Incidents(store).export(rolled_back, path, key=KEY)
    assert replay_file(path, key=KEY).signature == "verified"
    assert replay_file(path).signature == "unchecked"  # signed, but no key to check it with
    document = json.loads(path.read_text())
    # Claim a manual rollback, and recompute every hash so it looks genuine.
    document["bundle"]["trace"][3]["inputs"]["manual"] = True
    document["bundle_hash"] = document["incident"]["bundle_hash"] = digest(document["bundle"])
    assert replay(document).ok  # the hash alone cannot tell: it only guards against accidents
    with pytest.raises(InputError, match="the signature does not match"):
        replay(document, key=KEY)
    with pytest.raises(InputError, match="the signature does not match"):
        replay(Incidents(store).get(rolled_back).export_document(key=b"x" * 32), key=KEY)


def test_with_a_key_an_unsigned_file_is_refused_and_without_one_it_replays_unsigned(
    store: Store, rolled_back: str
) -> None:
    unsigned = Incidents(store).get(rolled_back).export_document()
    with pytest.raises(InputError, match="not signed, but POLICY_CANARY_INCIDENT_KEY is set"):
        replay(unsigned, key=KEY)
    result = replay(unsigned)
    assert result.ok
    assert result.signature == "unsigned"
    broken = {**unsigned, "signature": "abc"}
    with pytest.raises(InputError, match="'signature' must be"):
        replay(broken, key=KEY)
