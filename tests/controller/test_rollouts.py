"""The rollouts API: starting (and refusing to start), manual control, post-promotion rollback."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from _rollout_support import POLICY, CountingMonitors, insert_events, setup_policy, small_plan
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller, Incidents, Rollouts, RolloutState
from policy_canary.errors import ConflictError, InputError, NotFoundError
from policy_canary.registry import Registry
from policy_canary.store import Store
from policy_canary.store.schema import alerts, audit, monitor_states, rejections, rollout_ticks


@pytest.fixture
def rollouts(store: Store, clock: ManualClock) -> Rollouts:
    setup_policy(store, clock)
    return Rollouts(store, clock=clock, monitors=CountingMonitors())


def test_start_freezes_the_plan_and_arms_the_monitors_in_the_same_write(
    store: Store, clock: ManualClock, rollouts: Rollouts
) -> None:
    # Stable already served traffic: the baseline snapshot summarises it.
    insert_events(store, rollout_id=None, stage=None, at=clock.now(), stable=25, traffic_bp=0)
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan(), actor="alice", reason="go")
    plan = small_plan()
    assert row.plan_text == plan.canonical()
    assert row.plan_hash == plan.digest
    assert (row.state, row.stage_index, row.traffic_bp, row.revision) == ("running", 0, 100, 1)
    assert row.stage_started_at == row.created_at == clock.now()
    with store.read() as conn:
        state = json.loads(
            conn.execute(
                select(monitor_states.c.state).where(monitor_states.c.rollout_id == row.id)
            ).scalar_one()
        )
        (tick,) = conn.execute(
            select(rollout_ticks).where(rollout_ticks.c.rollout_id == row.id)
        ).mappings()
    assert state["monitor"]["baseline_n"] == 25
    assert (tick["action"], tick["reason"]) == ("start", "started v2 against v1 at canary 1%")


def test_start_refuses_a_second_active_rollout(rollouts: Rollouts, store: Store) -> None:
    Registry(store).register(POLICY, {"prompt": "v3"})
    rollouts.start(POLICY, candidate="v2", plan=small_plan())
    with pytest.raises(ConflictError, match="already has an active rollout"):
        rollouts.start(POLICY, candidate="v3", plan=small_plan())


def test_start_refuses_the_stable_version(rollouts: Rollouts) -> None:
    with pytest.raises(ConflictError, match="v1 is already the stable version"):
        rollouts.start(POLICY, candidate="v1", plan=small_plan())


def test_start_refuses_unknown_candidates_and_policies(rollouts: Rollouts) -> None:
    with pytest.raises(NotFoundError, match="no version 'v9'"):
        rollouts.start(POLICY, candidate="v9", plan=small_plan())
    with pytest.raises(NotFoundError, match="no policy named 'nope'"):
        rollouts.start("nope", candidate="v2", plan=small_plan())


def test_rejected_candidate_needs_force_and_a_reason(
    rollouts: Rollouts, clock: ManualClock
) -> None:
    rollouts.start(POLICY, candidate="v2", plan=small_plan())
    rollouts.rollback(POLICY, reason="looks wrong", actor="bob")
    with pytest.raises(ConflictError, match=r"rejected by rollout .* never retried automatically"):
        rollouts.start(POLICY, candidate="v2", plan=small_plan())
    with pytest.raises(InputError, match="--reason"):
        rollouts.start(POLICY, candidate="v2", plan=small_plan(), force=True)
    row = rollouts.start(
        POLICY, candidate="v2", plan=small_plan(), force=True, reason="fixed infra"
    )
    assert row.state is RolloutState.RUNNING


def test_manual_rollback_is_the_same_atomic_write(store: Store, rollouts: Rollouts) -> None:
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    result = rollouts.rollback(POLICY, reason="customer complaints", actor="bob")
    assert result.rollout is not None
    assert (result.rollout.state, result.rollout.traffic_bp) == (RolloutState.ROLLED_BACK, 0)
    assert result.rollout.end_reason == "rolled back by bob: customer complaints"
    (incident,) = Incidents(store).list()
    assert (incident.kind, incident.rollout_id) == ("manual_rollback", row.id)
    with store.read() as conn:
        assert conn.execute(select(rejections.c.rollout_id)).scalars().all() == [row.id]
        assert conn.execute(select(alerts.c.kind)).scalars().all() == ["rollback"]
    assert Registry(store).stable(POLICY).label == "v1"  # type: ignore[union-attr]


def test_pause_resume_promote_one_stage_then_full(rollouts: Rollouts, clock: ManualClock) -> None:
    rollouts.start(POLICY, candidate="v2", plan=small_plan())
    assert rollouts.pause(POLICY, reason="lunch").state is RolloutState.PAUSED
    with pytest.raises(ConflictError, match="not running"):
        rollouts.pause(POLICY, reason="again")
    clock.advance(timedelta(minutes=3))
    resumed = rollouts.resume(POLICY, reason="back")
    assert resumed.state is RolloutState.RUNNING
    assert resumed.stage_started_at == clock.now()
    advanced = rollouts.promote(POLICY, reason="looks good")
    assert (advanced.stage_index, advanced.traffic_bp) == (1, 1000)
    promoted = rollouts.promote(POLICY, reason="ship it", full=True)
    assert promoted.state is RolloutState.PROMOTED
    assert Registry(rollouts.store).stable(POLICY).label == "v2"  # type: ignore[union-attr]


def test_abort_stops_without_rejecting(store: Store, rollouts: Rollouts) -> None:
    rollouts.start(POLICY, candidate="v2", plan=small_plan())
    aborted = rollouts.abort(POLICY, reason="wrong plan")
    assert (aborted.state, aborted.traffic_bp) == (RolloutState.ABORTED, 0)
    assert Incidents(store).list() == []
    assert rollouts.start(POLICY, candidate="v2", plan=small_plan()).state is RolloutState.RUNNING


def test_manual_commands_need_an_active_rollout_and_a_reason(rollouts: Rollouts) -> None:
    with pytest.raises(NotFoundError, match="has no active rollout"):
        rollouts.pause(POLICY, reason="x")
    rollouts.start(POLICY, candidate="v2", plan=small_plan())
    with pytest.raises(InputError, match="--reason"):
        rollouts.abort(POLICY, reason=" ")


def test_rollback_after_promotion_restores_the_previous_stable(
    store: Store, rollouts: Rollouts
) -> None:
    registry = Registry(store)
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    rollouts.promote(POLICY, reason="ship", full=True)
    assert registry.stable(POLICY).label == "v2"  # type: ignore[union-attr]
    result = rollouts.rollback(POLICY, reason="regression in prod", actor="carol")
    assert result.rollout is None
    assert result.release is not None
    assert registry.stable(POLICY).label == "v1"  # type: ignore[union-attr]
    last = registry.history(POLICY)[-1]
    assert (last.kind.value, last.to_id, last.rollout_id) == (
        "rollback",
        registry.resolve(POLICY, "v1").id,
        row.id,
    )
    with pytest.raises(ConflictError, match=r"never retried|rejected"):
        rollouts.start(POLICY, candidate="v2", plan=small_plan())
    # Deterministic: a second rollback does not flip back to v2.
    with pytest.raises(ConflictError, match="because of a rollback already"):
        rollouts.rollback(POLICY, reason="again", actor="carol")


def test_rollback_of_the_first_stable_version_is_refused(rollouts: Rollouts) -> None:
    with pytest.raises(ConflictError, match="first stable version"):
        rollouts.rollback(POLICY, reason="why not")


def test_status_reports_stage_dwell_samples_and_verdicts(
    store: Store, clock: ManualClock, rollouts: Rollouts
) -> None:
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=7, stable=9)
    clock.advance(timedelta(minutes=4))
    Controller(store, clock=clock, monitors=CountingMonitors(), holder="t").tick()
    (status,) = rollouts.status(POLICY)
    data = status.to_dict()
    assert (data["stage"], data["stage_number"], data["stages"]) == ("canary", 1, 3)
    assert data["samples"] == {"candidate": 7, "stable": 9}
    assert data["dwell_seconds"] == 240
    assert data["traffic_percent"] == 1
    assert [v["guardrail"] for v in data["verdicts"]] == ["error_rate", "critical", "quality"]
    assert data["last_action"]["message"] == "stage canary has dwelt 4m of its minimum 10m"
    assert rollouts.status() == rollouts.status(POLICY)


def test_a_chosen_salt_reproduces_the_assignment_and_a_bad_one_is_refused(
    rollouts: Rollouts,
) -> None:
    with pytest.raises(InputError, match="32 to 64 lowercase hex"):
        rollouts.start(POLICY, candidate="v2", plan=small_plan(), salt="not-hex")
    assert rollouts.status(POLICY) == []
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan(), salt="ab" * 16)
    assert row.salt == "ab" * 16


def test_every_transition_writes_one_tick_one_audit_row_and_one_routing_bump(
    store: Store, clock: ManualClock, rollouts: Rollouts
) -> None:
    def counts() -> tuple[int, int, int]:
        with store.read() as conn:
            ticks = len(conn.execute(select(rollout_ticks.c.seq)).all())
            audits = len(conn.execute(select(audit.c.id)).all())
            return ticks, audits, store.read_epoch(conn)

    before = counts()
    steps = [
        lambda: rollouts.start(POLICY, candidate="v2", plan=small_plan(), reason="go"),
        lambda: rollouts.pause(POLICY, reason="look"),
        lambda: rollouts.resume(POLICY, reason="ok"),
        lambda: rollouts.promote(POLICY, reason="fine"),
        lambda: rollouts.abort(POLICY, reason="stop"),
    ]
    for n, step in enumerate(steps, start=1):
        step()
        assert counts() == (before[0] + n, before[1] + n, before[2] + n)
