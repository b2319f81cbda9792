"""Ticks in chunks: one transaction per chunk, a savepoint per rollout, monitors kept warm."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from _rollout_support import POLICY, CountingMonitors, insert_events, setup_policy, small_plan
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller, Rollouts, _loop
from policy_canary.controller._state import read_state
from policy_canary.errors import InputError
from policy_canary.store import Store

OTHER = "billing-agent"


def _samples(store: Store, rollout_id: str) -> dict[str, int]:
    with store.read() as conn:
        state = read_state(conn, rollout_id)
    assert state is not None
    return state.ledger.samples("canary")


def test_a_failing_rollout_rolls_back_alone_and_the_rest_of_its_chunk_commits(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = setup_policy(store, clock)
    registry.register(OTHER, {"prompt": "b1"}, author="alice")
    registry.register(OTHER, {"prompt": "b2"}, author="alice")
    monitors = CountingMonitors()
    rollouts = Rollouts(store, clock=clock, monitors=monitors)
    good = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    bad = rollouts.start(OTHER, candidate="v2", plan=small_plan())
    for row in (good, bad):
        insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=3,
                      stable=4)  # fmt: skip
    real = _loop.load_rollout

    def flaky(conn: Any, rollout_id: str) -> Any:
        row = real(conn, rollout_id)
        if rollout_id == bad.id:
            raise RuntimeError("a bug in this rollout's tick")
        return row

    monkeypatch.setattr(_loop, "load_rollout", flaky)
    controller = Controller(store, clock=clock, monitors=monitors, holder="t", chunk_size=50)
    try:
        clock.advance(timedelta(seconds=10))
        outcomes = {o.rollout_id: o for o in controller.tick().outcomes}
    finally:
        controller.close()
    assert outcomes[good.id].recorded
    assert outcomes[good.id].events_folded == 7
    assert outcomes[bad.id].error == "a bug in this rollout's tick"
    assert _samples(store, good.id) == {"stable": 4, "candidate": 3}
    assert _samples(store, bad.id) == {"stable": 0, "candidate": 0}


def test_a_monitor_kept_in_memory_is_read_again_after_another_controller_acted(
    store: Store, clock: ManualClock
) -> None:
    setup_policy(store, clock)
    monitors = CountingMonitors(breach_after=10_000)
    row = Rollouts(store, clock=clock, monitors=monitors).start(
        POLICY, candidate="v2", plan=small_plan()
    )
    first = Controller(store, clock=clock, monitors=monitors, holder="first")
    second = Controller(store, clock=clock, monitors=monitors, holder="second")
    try:
        for controller, n in ((first, 2), (first, 3), (second, 5), (first, 7)):
            insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), stable=n)
            clock.advance(timedelta(seconds=10))
            (outcome,) = controller.tick().outcomes
            assert outcome.recorded
            assert outcome.events_folded == n
            controller.close()  # hand the lease over
    finally:
        first.close()
        second.close()
    # The first controller's memory was stale after the second acted: it must not fold from it.
    assert _samples(store, row.id) == {"stable": 17, "candidate": 0}


@pytest.mark.parametrize("size", [0, -3])
def test_chunk_size_below_one_is_refused(store: Store, size: int) -> None:
    with pytest.raises(InputError, match="chunk_size must be at least 1"):
        Controller(store, chunk_size=size)
