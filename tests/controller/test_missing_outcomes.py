"""Missing outcomes roll back (issue 12, part 5): routed decisions are counted per window and arm.

A candidate that crashes before ``record()`` leaves no event, so it used to look better the more
it failed. The gates count routed decisions and recorded outcomes per routing window, the
flusher writes them, and the built-in ``outcomes_recorded`` guardrail compares the arms.
"""

from __future__ import annotations

import random
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from policy_canary import Canary
from policy_canary.clock import ManualClock
from policy_canary.controller import Rollouts, RolloutState
from policy_canary.monitoring import OUTCOMES_RECORDED, RoutedWindow
from policy_canary.monitoring._missing import MissingOutcomes
from policy_canary.registry import Registry
from policy_canary.store import Store
from policy_canary.store.schema import routed_counts

POLICY = "support-agent"


def _setup(store: Store, clock: ManualClock) -> str:
    registry = Registry(store, clock=clock)
    registry.register(POLICY, {"prompt": "v1"}, message="first", author="test")
    registry.register(POLICY, {"prompt": "v2"}, message="second", author="test")
    return Rollouts(store, clock=clock).start(POLICY, candidate="v2", reason="test").id


def _serve(canary: Canary, n: int, *, candidate_records: bool, seed: int = 0) -> None:
    gate = canary.gate(POLICY)
    for i in range(n):
        decision = gate.route(f"user-{seed}-{i}")
        if decision.arm.value == "stable" or candidate_records:
            decision.record(latency_ms=100.0, error=False)
        # else: the candidate's worker crashed before record(); no event, no outcome


def _verdict(store: Store, clock: ManualClock, rollout_id: str) -> object:
    status = Rollouts(store, clock=clock).get(rollout_id)
    return next(v for v in status.verdicts if v.guardrail == OUTCOMES_RECORDED)


def test_a_candidate_that_never_records_is_rolled_back(store: Store, clock: ManualClock) -> None:
    # Given a rollout under the default plan (1% canary), served through a real gate
    rollout_id = _setup(store, clock)
    with Canary(store, clock=clock, background=False, rng=random.Random(1)) as canary:
        # When every candidate request crashes before record() and stable records them all
        for minute in range(8):
            _serve(canary, 3000, candidate_records=False, seed=minute)
            canary.tick()
            clock.advance(timedelta(minutes=1))
        # Then, once the windows are past the grace period, the missing outcomes roll it back
        status = Rollouts(store, clock=clock).get(rollout_id)
    assert status.rollout.state is RolloutState.ROLLED_BACK
    breached = [v for v in status.verdicts if v.status.is_breach()]
    assert [v.guardrail for v in breached] == [OUTCOMES_RECORDED]
    evidence = breached[0].evidence
    assert evidence["recorded_candidate"] == 0
    assert evidence["routed_candidate"] > 0
    assert evidence["recorded_stable"] == evidence["routed_stable"] > 0
    assert "loses outcomes" in breached[0].reason


def test_outcomes_are_only_compared_after_the_grace_period(
    store: Store, clock: ManualClock
) -> None:
    rollout_id = _setup(store, clock)
    with Canary(store, clock=clock, background=False, rng=random.Random(2)) as canary:
        _serve(canary, 20_000, candidate_records=False)
        canary.tick()
        clock.advance(timedelta(minutes=4))  # the window ended 3 minutes ago: still in grace
        canary.tick()
        assert Rollouts(store, clock=clock).get(rollout_id).rollout.state is RolloutState.RUNNING
        verdict = _verdict(store, clock, rollout_id)
        assert verdict.evidence["routed_candidate"] == 0  # type: ignore[attr-defined]
        clock.advance(timedelta(minutes=3))
        canary.tick()
    assert Rollouts(store, clock=clock).get(rollout_id).rollout.state is RolloutState.ROLLED_BACK


def test_an_a_a_rollout_whose_arms_record_everything_is_not_rolled_back(
    store: Store, clock: ManualClock
) -> None:
    rollout_id = _setup(store, clock)
    with Canary(store, clock=clock, background=False, rng=random.Random(3)) as canary:
        for minute in range(10):
            _serve(canary, 2000, candidate_records=True, seed=minute)
            canary.tick()
            clock.advance(timedelta(minutes=1))
    verdict = _verdict(store, clock, rollout_id)
    assert not verdict.status.is_breach()  # type: ignore[attr-defined]
    evidence = verdict.evidence  # type: ignore[attr-defined]
    assert evidence["recorded_candidate"] == evidence["routed_candidate"] > 0
    assert evidence["recorded_stable"] == evidence["routed_stable"] > 0
    assert Rollouts(store, clock=clock).get(rollout_id).rollout.state is RolloutState.RUNNING


def test_counts_are_written_idempotently_and_pruned_with_the_events(
    store: Store, clock: ManualClock
) -> None:
    _setup(store, clock)
    with Canary(store, clock=clock, background=False, rng=random.Random(4)) as canary:
        _serve(canary, 500, candidate_records=True)
        canary.flush()
        canary.flush()  # nothing changed: nothing rewritten, the counts stay as they were
        with store.read() as conn:
            routed = conn.execute(
                select(func.sum(routed_counts.c.routed_stable + routed_counts.c.routed_candidate))
            ).scalar_one()
        assert routed == 500
        # Rows of an active rollout are kept whatever their age; of an ended one, pruned.
        far = clock.now() + timedelta(days=60)
        assert canary.prune(far, retention=timedelta(days=30)).routed == 0
        Rollouts(store, clock=clock).abort(POLICY, reason="done")
        assert canary.prune(far, retention=timedelta(days=30)).routed == 1
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(routed_counts)).scalar_one() == 0


windows = st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 5000)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(counts=windows, stable_loss=st.floats(0.0, 0.5))
def test_a_candidate_that_records_as_often_as_stable_never_breaches(
    counts: list[tuple[int, int]], stable_loss: float
) -> None:
    # Both arms record everything (or stable loses more): the test must never fire.
    judge = MissingOutcomes(alpha=0.01 / 6)
    judge.fold(RoutedWindow(s, c, s - int(s * stable_loss), c) for s, c in counts)
    assert not judge.verdict().status.is_breach()


def test_a_stored_state_continues_the_same_test() -> None:
    judge = MissingOutcomes(alpha=0.001)
    judge.fold([RoutedWindow(9900, 100, 9900, 0)] * 3)
    again = MissingOutcomes(alpha=0.001)
    again.load(judge.to_dict())
    assert again.log_e_value() == judge.log_e_value()
    assert again.verdict().status.is_breach()
