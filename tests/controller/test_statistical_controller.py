"""The controller with the real anytime-valid monitors (the default), on both backends."""

from __future__ import annotations

from datetime import timedelta

from _rollout_support import POLICY, insert_events, setup_policy
from policy_canary.clock import ManualClock
from policy_canary.controller import (
    ActionKind,
    Controller,
    Incidents,
    Rollouts,
    RolloutState,
    replay,
)
from policy_canary.store import Store


def test_error_regression_is_rolled_back_by_the_statistical_monitors(
    store: Store, clock: ManualClock
) -> None:
    setup_policy(store, clock)
    # Stable's recent traffic: the baseline snapshot frozen at start.
    insert_events(store, rollout_id=None, stage=None, at=clock.now(), stable=500, traffic_bp=0)
    rollouts = Rollouts(store, clock=clock)
    row = rollouts.start(POLICY, candidate="v2", reason="default plan")
    controller = Controller(store, clock=clock, holder="stats")

    # A healthy first look: too little data, the canary waits.
    insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=20,
                  stable=2000, errors=0)  # fmt: skip
    (first,) = controller.tick().outcomes
    assert first.action is not None
    assert first.action.kind is ActionKind.HOLD
    assert {v.guardrail for v in rollouts.get(row.id).verdicts} >= {"error_rate", "cost"}

    # Then the candidate fails 40% of its requests while stable keeps serving cleanly.
    for _ in range(3):
        clock.advance(timedelta(minutes=5))
        insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=100,
                      stable=0, errors=40)  # fmt: skip
        insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=0,
                      stable=10_000 // 3)  # fmt: skip
        controller.tick()
    status = rollouts.get(row.id)
    assert status.rollout.state is RolloutState.ROLLED_BACK
    breached = [v for v in status.verdicts if v.status.is_breach()]
    assert [v.guardrail for v in breached] == ["error_rate"]
    (incident,) = Incidents(store).list()
    assert replay(incident.export_document()).ok


def test_a_quality_drop_rolls_back_under_the_default_plan(store: Store, clock: ManualClock) -> None:
    # Given the default plan, whose quality guardrail used to pause and wait for a human
    setup_policy(store, clock)
    insert_events(store, rollout_id=None, stage=None, at=clock.now(), stable=500, traffic_bp=0,
                  quality=0.8)  # fmt: skip
    rollouts = Rollouts(store, clock=clock)
    row = rollouts.start(POLICY, candidate="v2", reason="default plan")
    controller = Controller(store, clock=clock, holder="stats")
    # When the candidate's quality drops by a quarter while stable's holds
    for _ in range(4):
        clock.advance(timedelta(minutes=5))
        insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=150,
                      quality=0.6)  # fmt: skip
        insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), stable=3000,
                      quality=0.8)  # fmt: skip
        controller.tick()
    # Then the breach rolls the candidate back: it no longer serves while waiting for a human
    status = rollouts.get(row.id)
    assert status.rollout.state is RolloutState.ROLLED_BACK
    assert [v.guardrail for v in status.verdicts if v.status.is_breach()] == ["quality"]
