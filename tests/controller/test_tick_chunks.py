"""Ticks in chunks: one transaction per chunk, a savepoint per rollout, monitors kept warm."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event

from _rollout_support import (
    POLICY,
    CountingMonitors,
    canary_samples,
    insert_events,
    setup_policy,
    small_plan,
)
from policy_canary.clock import ManualClock
from policy_canary.controller import ActionKind, Controller, Rollouts, _chunk
from policy_canary.controller._state import read_state
from policy_canary.errors import InputError
from policy_canary.store import Store
from policy_canary.store.schema import feedback

OTHER = "billing-agent"


def _two_policies(store: Store, clock: ManualClock) -> None:
    """POLICY and OTHER, each with a stable v1 and a v2."""
    registry = setup_policy(store, clock)
    registry.register(OTHER, {"prompt": "b1"}, author="alice")
    registry.register(OTHER, {"prompt": "b2"}, author="alice")


def test_a_failing_rollout_rolls_back_alone_and_the_rest_of_its_chunk_commits(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _two_policies(store, clock)
    monitors = CountingMonitors()
    rollouts = Rollouts(store, clock=clock, monitors=monitors)
    good = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    bad = rollouts.start(OTHER, candidate="v2", plan=small_plan())
    for row in (good, bad):
        insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=3,
                      stable=4)  # fmt: skip
    real = _chunk.batch_from_rows

    def flaky(rows: Any) -> Any:  # fails while folding: after the chunk's reads, before writes
        if rows[0][1] == bad.id:
            raise RuntimeError("a bug in this rollout's tick")
        return real(rows)

    monkeypatch.setattr(_chunk, "batch_from_rows", flaky)
    controller = Controller(store, clock=clock, monitors=monitors, holder="t", chunk_size=50)
    try:
        clock.advance(timedelta(seconds=10))
        outcomes = {o.rollout_id: o for o in controller.tick().outcomes}
    finally:
        controller.close()
    assert outcomes[good.id].recorded
    assert outcomes[good.id].events_folded == 7
    assert outcomes[bad.id].error == "a bug in this rollout's tick"
    assert canary_samples(store, good.id) == {"stable": 4, "candidate": 3}
    assert canary_samples(store, bad.id) == {"stable": 0, "candidate": 0}


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
    assert canary_samples(store, row.id) == {"stable": 17, "candidate": 0}


def test_a_rollout_changed_between_a_chunks_reads_and_its_writes_is_ticked_again_from_its_store(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _two_policies(store, clock)
    monitors = CountingMonitors(breach_after=10_000)
    rollouts = Rollouts(store, clock=clock, monitors=monitors)
    paused = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    untouched = rollouts.start(OTHER, candidate="v2", plan=small_plan())
    real = _chunk.ChunkTick.prepare
    calls: list[int] = []

    def then_pause(tick: Any, conn: Any, chunk: Any, warm: Any) -> None:
        real(tick, conn, chunk, warm)
        calls.append(len(chunk))
        if len(calls) == 1:  # after the chunk's reads and decisions, before its writes
            rollouts.pause(POLICY, reason="looking into it", actor="alice")

    controller = Controller(store, clock=clock, monitors=monitors, holder="t", chunk_size=50)
    try:
        for n in (3, 4):
            for row in (paused, untouched):
                insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(),
                              candidate=n, stable=n)  # fmt: skip
            clock.advance(timedelta(seconds=10))
            with monkeypatch.context() as patched:
                patched.setattr(_chunk.ChunkTick, "prepare", then_pause)
                outcomes = {o.rollout_id: o for o in controller.tick().outcomes}
            assert all(o.error is None and o.recorded for o in outcomes.values())
            assert {o.events_folded for o in outcomes.values()} == {2 * n}
    finally:
        controller.close()
    # The first tick read both, then ticked the paused one again alone, under its lock.
    assert calls == [2, 1, 2]
    assert outcomes[paused.id].action is not None
    assert outcomes[paused.id].action.kind is ActionKind.HOLD
    assert "paused" in outcomes[paused.id].action.message
    # Every event was folded once: the memory of the first reads was not written or kept.
    for row in (paused, untouched):
        assert canary_samples(store, row.id) == {"stable": 7, "candidate": 7}
        trace = rollouts.trace(row.id)
        assert [t["seq"] for t in trace] == list(range(1, len(trace) + 1))


@pytest.mark.parametrize("size", [0, -3])
def test_chunk_size_below_one_is_refused(store: Store, size: int) -> None:
    with pytest.raises(InputError, match="chunk_size must be at least 1"):
        Controller(store, chunk_size=size)


def _statements_of_tick(store: Store, controller: Controller) -> tuple[int, int, list[Any]]:
    """How many statements one tick sent to the database (reads of new events apart, then
    those reads), and its outcomes."""
    sent: list[str] = []
    driver: list[str] = []  # SQLite: every statement the driver ran, ours or SQLAlchemy's

    def count(*args: Any) -> None:
        sent.append(args[2])

    def trace(dbapi_connection: Any, *_: Any) -> None:
        dbapi_connection.set_trace_callback(driver.append)

    event.listen(store.engine, "before_cursor_execute", count)
    if store.dialect == "sqlite":
        event.listen(store.engine, "checkout", trace)
    try:
        outcomes = list(controller.tick().outcomes)
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
        if store.dialect == "sqlite":
            event.remove(store.engine, "checkout", trace)
    # SQLite's reads of new events go to the driver's cursor (_inputs._fetch): the driver's
    # trace sees them (and every other statement), SQLAlchemy's events do not.
    through_sqlalchemy = sum("events.safety_flags" in statement for statement in sent)
    through_driver = sum("events.safety_flags" in statement for statement in driver)
    reads = through_driver if store.dialect == "sqlite" else through_sqlalchemy
    return len(sent) - through_sqlalchemy, reads, outcomes


def test_a_chunk_of_holds_issues_as_many_statements_for_twenty_rollouts_as_for_five(
    store: Store, clock: ManualClock
) -> None:
    registry = setup_policy(store, clock)
    monitors = CountingMonitors(breach_after=10_000)
    rollouts = Rollouts(store, clock=clock, monitors=monitors)
    started = []

    def start(count: int) -> None:
        for _ in range(count):
            name = f"agent-{len(started)}"
            registry.register(name, {"prompt": "a1"}, author="alice")
            registry.register(name, {"prompt": "a2"}, author="alice")
            started.append(rollouts.start(name, candidate="v2", plan=small_plan()).id)

    def tick() -> int:
        for rollout_id in started:
            insert_events(store, rollout_id=rollout_id, stage="canary", at=clock.now(),
                          candidate=2, stable=2)  # fmt: skip
        clock.advance(timedelta(seconds=10))
        sent, reads, outcomes = _statements_of_tick(store, controller)
        assert len(outcomes) == len(started)
        assert all(o.recorded and o.action.kind is ActionKind.HOLD for o in outcomes)
        assert all(o.events_folded == 4 for o in outcomes)
        # New events: on PostgreSQL one read for the chunk (a LATERAL scan per rollout, each
        # a round trip saved); on SQLite, in process, one range scan per rollout, already in
        # id order, where one read for the chunk would have to sort its rows (_inputs.py).
        assert reads == (1 if store.dialect == "postgresql" else len(started))
        return sent

    controller = Controller(store, clock=clock, monitors=monitors, holder="t", chunk_size=50)
    try:
        controller.tick()  # takes the lease (PostgreSQL: its own statements, once)
        start(5)
        five = (tick(), tick())  # the states read from the store, then kept in memory
        start(15)
        twenty = (tick(), tick())
    finally:
        controller.close()
    assert twenty == five
    assert canary_samples(store, started[0]) == {"stable": 8, "candidate": 8}
    assert canary_samples(store, started[-1]) == {"stable": 4, "candidate": 4}


def _feedback(store: Store, at: Any, *scores: tuple[str, float]) -> None:
    """Feedback rows as older writers stored them (no metric column: repeats are possible)."""
    rows = [{"decision_id": d, "at": at, "quality": q, "metrics": "{}"} for d, q in scores]
    with store.begin() as conn:
        conn.execute(feedback.insert(), rows)


def _low_quality(store: Store, rollout_id: str) -> int:
    with store.read() as conn:
        state = read_state(conn, rollout_id)
    assert state is not None
    return int(state.monitor["low_quality"])


@pytest.mark.parametrize("batch_size", [1, 5_000])
def test_feedback_read_once_per_chunk_reaches_each_rollout_past_its_own_cursor_once(
    store: Store, clock: ManualClock, batch_size: int
) -> None:
    _two_policies(store, clock)
    monitors = CountingMonitors(breach_after=10_000)
    rollouts = Rollouts(store, clock=clock, monitors=monitors)
    controller = Controller(store, clock=clock, monitors=monitors, holder="t",
                            batch_size=batch_size)  # fmt: skip
    try:
        first = rollouts.start(POLICY, candidate="v2", plan=small_plan())
        insert_events(store, rollout_id=first.id, stage="canary", at=clock.now(), candidate=2,
                      prefix="a")  # fmt: skip
        _feedback(store, clock.now(), ("a-candidate-0", 0.2), ("unknown", 0.1))
        clock.advance(timedelta(seconds=10))
        controller.tick()
        assert _low_quality(store, first.id) == 1
        # A second rollout starts with its feedback cursor at zero, behind the first's: the
        # chunk reads from there, and the first must not fold its old feedback again.
        second = rollouts.start(OTHER, candidate="v2", plan=small_plan())
        insert_events(store, rollout_id=second.id, stage="canary", at=clock.now(),
                      candidate=2, prefix="b")  # fmt: skip
        _feedback(
            store,
            clock.now(),
            ("b-candidate-0", 0.3),
            ("a-candidate-1", 0.1),
            ("a-candidate-0", 0.8),
        )  # fmt: skip  (a repeat with another value: ignored)
        clock.advance(timedelta(seconds=10))
        outcomes = {o.rollout_id: o for o in controller.tick().outcomes}
    finally:
        controller.close()
    assert _low_quality(store, first.id) == 2
    assert _low_quality(store, second.id) == 1
    assert outcomes[first.id].events_folded == 1  # the feedback of a-candidate-1 alone
    assert outcomes[second.id].events_folded == 3  # two events and b-candidate-0's feedback


def test_every_statement_of_a_tick_is_planned_for_its_own_values_on_postgresql(
    pg_url: str, clock: ManualClock
) -> None:
    # A generic plan (psycopg prepares a statement from its fifth execution) cannot see the
    # cursors, and read a chunk's new events by filtering the whole id range past the lowest.
    store = Store.open(pg_url)
    _two_policies(store, clock)
    monitors = CountingMonitors(breach_after=10_000)
    rollouts = Rollouts(store, clock=clock, monitors=monitors)
    started = [rollouts.start(p, candidate="v2", plan=small_plan()).id for p in (POLICY, OTHER)]
    modes: list[str] = []

    def mode_of_events_reads(conn: Any, *args: Any) -> None:
        if "events.safety_flags" in args[1]:  # the read of new events, one per chunk
            modes.append(conn.exec_driver_sql("SHOW plan_cache_mode").scalar_one())

    controller = Controller(store, clock=clock, monitors=monitors, holder="t", chunk_size=1)
    event.listen(store.engine, "after_cursor_execute", mode_of_events_reads)
    try:
        for _ in range(6):  # past psycopg's prepare threshold
            for rollout_id in started:
                insert_events(store, rollout_id=rollout_id, stage="canary", at=clock.now(),
                              candidate=1, stable=1)  # fmt: skip
            clock.advance(timedelta(seconds=10))
            controller.tick()
        with store.read() as conn:
            after_ticks = conn.exec_driver_sql("SHOW plan_cache_mode").scalar_one()
    finally:
        event.remove(store.engine, "after_cursor_execute", mode_of_events_reads)
        controller.close()
        store.close()
    assert len(modes) == 12  # each tick, one read of new events per chunk (one rollout each)
    assert set(modes) == {"force_custom_plan"}
    assert after_ticks == "auto"  # and only in the tick's transactions: the setting is LOCAL
