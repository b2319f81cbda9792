"""A controller in several processes: the same ticks as in one, and a child that dies."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from _rollout_support import (
    POLICY,
    CountingMonitor,
    CountingMonitors,
    canary_samples,
    insert_events,
    small_plan,
)
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller, Rollouts
from policy_canary.controller._rows import active_rollouts
from policy_canary.controller._shards import shard_of
from policy_canary.controller._state import read_state
from policy_canary.errors import InputError
from policy_canary.plan import RolloutPlan
from policy_canary.registry import Registry
from policy_canary.store import Store

POLICIES = [POLICY, *(f"agent-{i}" for i in range(7))]


def _fleet(
    store: Store, clock: ManualClock, monitors: Any, *, both_shards: bool = False
) -> dict[str, str]:
    """A rollout of every policy in POLICIES: their ids, by policy.

    Rollout ids are random, so all eight land in one of two processes once in 128 fleets;
    ``both_shards`` adds rollouts of further policies until each process owns one.
    """
    registry = Registry(store, clock=clock)
    rollouts = Rollouts(store, clock=clock, monitors=monitors)
    ids: dict[str, str] = {}

    def start(policy: str) -> None:
        registry.register(policy, {"prompt": "v1"}, author="alice")
        registry.register(policy, {"prompt": "v2"}, author="alice")
        ids[policy] = rollouts.start(policy, candidate="v2", plan=small_plan()).id

    for policy in POLICIES:
        start(policy)
    while both_shards and len({shard_of(rid, 2) for rid in ids.values()}) < 2:
        start(f"extra-{len(ids)}")
    return ids


def _events(store: Store, clock: ManualClock, ids: dict[str, str], n: int) -> None:
    for i, rid in enumerate(ids.values()):
        # The first rollout's candidate fails: it breaches and rolls back on the second tick.
        insert_events(store, rollout_id=rid, stage="canary", at=clock.now(), candidate=n,
                      stable=n + i, errors=n if i == 0 else 0)  # fmt: skip


def _run(url: str, processes: int) -> tuple[list[Any], dict[str, Any]]:
    store = Store.open(url)
    clock = ManualClock()
    monitors = CountingMonitors(breach_after=4, min_n=1_000)
    ids = _fleet(store, clock, monitors)
    seen = []
    controller = Controller(store, clock=clock, monitors=monitors, holder="t", chunk_size=3,
                            processes=processes)  # fmt: skip
    try:
        for n in (3, 2, 5):
            _events(store, clock, ids, n)
            clock.advance(timedelta(seconds=10))
            with store.read() as conn:
                order = [r.id for r in active_rollouts(conn)]
            report = controller.tick()
            assert [o.rollout_id for o in report.outcomes] == order  # the store's order
            seen.append({
                o.policy: (o.action.kind.value if o.action else None, o.recorded,
                           o.events_folded, o.error) for o in report.outcomes
            })  # fmt: skip
    finally:
        controller.close()
    with store.read() as conn:
        states = {p: read_state(conn, rid) for p, rid in ids.items()}
    store.close()
    return seen, {p: (s.monitor, s.ledger.samples("canary")) for p, s in states.items() if s}


def test_two_processes_tick_every_rollout_as_one_does(db_url: str, tmp_path: Path) -> None:
    one, one_states = _run(f"sqlite:///{tmp_path}/one.db", 1)
    two, two_states = _run(db_url, 2)
    assert two == one
    assert two_states == one_states
    assert [o[0] for o in one[1].values()].count("rollback") == 1
    assert all(error is None for tick in two for *_, error in tick.values())


class _DiesOnce(CountingMonitors):
    """Counting monitors whose load kills a child process once, while ``marker`` exists."""

    def __init__(self, marker: str) -> None:
        super().__init__(breach_after=10_000, min_n=1_000)
        self.marker = marker
        self.parent = os.getpid()

    def load(self, data: Any) -> CountingMonitor:
        if os.getpid() != self.parent and os.path.exists(self.marker):
            os.remove(self.marker)
            os._exit(3)
        return super().load(data)


def test_a_child_that_dies_fails_its_rollouts_tick_and_is_started_again(
    sqlite_url: str, tmp_path: Path
) -> None:
    store = Store.open(sqlite_url)
    clock = ManualClock()
    marker = tmp_path / "die"
    monitors = _DiesOnce(str(marker))
    ids = _fleet(store, clock, monitors, both_shards=True)
    child = {rid for rid in ids.values() if shard_of(rid, 2) == 1}
    assert child
    assert child != set(ids.values())
    controller = Controller(store, clock=clock, monitors=monitors, holder="t", processes=2)
    try:
        for rid in ids.values():
            insert_events(store, rollout_id=rid, stage="canary", at=clock.now(), stable=2)
        clock.advance(timedelta(seconds=10))
        marker.touch()  # the child dies reading its first stored state
        first = {o.rollout_id: o for o in controller.tick().outcomes}
        assert not marker.exists()
        for rid, outcome in first.items():
            if rid in child:
                assert outcome.error is not None
                assert "controller process 1 failed" in outcome.error
            else:
                assert outcome.error is None
                assert outcome.events_folded == 2
        for kill in (False, True):
            if kill:  # killed between ticks: the next tick starts another before handing it work
                pool = controller._shards._pools[1] if controller._shards else None
                assert pool is not None
                for pid in list(pool._processes):  # type: ignore[attr-defined]
                    os.kill(pid, signal.SIGKILL)
                for _ in range(200):  # until the pool has noticed (it watches its process)
                    if pool._broken:  # type: ignore[attr-defined]
                        break
                    time.sleep(0.05)
                assert pool._broken  # type: ignore[attr-defined]
            for rid in ids.values():
                insert_events(store, rollout_id=rid, stage="canary", at=clock.now(), stable=1)
            clock.advance(timedelta(seconds=10))
            again = controller.tick().outcomes
            assert all(o.error is None for o in again), [o.error for o in again]
    finally:
        controller.close()
    # Nothing was lost or folded twice: the dead child's rollouts read their stored state.
    for rid in ids.values():
        assert canary_samples(store, rid) == {"stable": 4, "candidate": 0}
    store.close()


def test_processes_out_of_range_or_monitors_that_cannot_travel_are_refused(
    sqlite_url: str,
) -> None:
    store = Store.open(sqlite_url)

    class Local(CountingMonitors):  # a class inside a function cannot be pickled
        def create(self, plan: RolloutPlan, baseline: Any) -> CountingMonitor:
            return super().create(plan, baseline)

    try:
        for wrong in (0, -1, 65):
            with pytest.raises(InputError, match="between 1 and 64"):
                Controller(store, processes=wrong)
        with pytest.raises(InputError, match="cannot be pickled"):
            Controller(store, monitors=Local(), processes=2)
        Controller(store, monitors=Local(), processes=1).close()  # one process needs neither
    finally:
        store.close()
