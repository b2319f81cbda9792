"""SDK to controller and back: requests routed by the gate, a breach, and routing after rollback."""

from __future__ import annotations

from datetime import timedelta

from _rollout_support import POLICY, CountingMonitors, setup_policy, small_plan
from policy_canary.clock import ManualClock
from policy_canary.controller import ActionKind, Controller, Rollouts
from policy_canary.serving import Canary
from policy_canary.store import Store


def test_rollback_reaches_the_gate_on_its_next_refresh(store: Store, clock: ManualClock) -> None:
    setup_policy(store, clock)
    monitors = CountingMonitors(breach_after=3, min_n=5)
    rollouts = Rollouts(store, clock=clock, monitors=monitors)
    controller = Controller(store, clock=clock, monitors=monitors, holder="e2e")
    canary = Canary(store, clock=clock, background=False)
    try:
        rollouts.start(POLICY, candidate="v2", plan=small_plan())
        rollouts.promote(POLICY, reason="go to 10% for a bigger sample")
        canary.refresh_now()
        gate = canary.gate(POLICY)
        served = {"candidate": 0, "stable": 0}
        for i in range(2000):
            decision = gate.route(f"user-{i}")
            served[decision.arm.value] += 1
            decision.record(latency_ms=120.0, error=decision.arm.value == "candidate")
        canary.flush()
        # The sticky 10% split, within sampling noise.
        assert 120 < served["candidate"] < 290

        clock.advance(timedelta(minutes=1))
        (outcome,) = controller.tick().outcomes
        assert outcome.action is not None
        assert outcome.action.kind is ActionKind.ROLLBACK
        assert outcome.events_folded == 2000

        canary.refresh_now()
        arms = {gate.route(f"user-{i}").arm.value for i in range(2000)}
        assert arms == {"stable"}
        assert gate.route("user-1").version.label == "v1"
    finally:
        canary.close()
