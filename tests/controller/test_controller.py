"""The controller on both backends: walking a plan, rolling back atomically, idempotent ticks."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from _rollout_support import (
    POLICY,
    CountingMonitors,
    insert_events,
    setup_policy,
    small_plan,
)
from policy_canary.alerts import AlertKind, Severity
from policy_canary.clock import ManualClock
from policy_canary.controller import ActionKind, Controller, Incidents, Rollouts, RolloutState
from policy_canary.controller._apply import ALERTS, GUARDRAIL_ALERT
from policy_canary.registry import Registry
from policy_canary.store import Store
from policy_canary.store.schema import (
    alerts,
    audit,
    incidents,
    rejections,
    rollout_ticks,
)


@pytest.fixture
def world(store: Store, clock: ManualClock) -> tuple[Registry, Rollouts, Controller]:
    registry = setup_policy(store, clock)
    monitors = CountingMonitors(breach_after=5, min_n=5)
    rollouts = Rollouts(store, clock=clock, monitors=monitors)
    controller = Controller(store, clock=clock, monitors=monitors, holder="test")
    return registry, rollouts, controller


def _count(store: Store, table: object, *where: object) -> int:
    with store.read() as conn:
        query = select(func.count()).select_from(table)  # type: ignore[arg-type]
        for clause in where:
            query = query.where(clause)  # type: ignore[arg-type]
        return int(conn.execute(query).scalar_one())


def _alert_kinds(store: Store) -> list[str]:
    with store.read() as conn:
        return list(conn.execute(select(alerts.c.kind).order_by(alerts.c.id)).scalars())


def test_healthy_candidate_walks_every_stage_and_is_promoted(
    store: Store, clock: ManualClock, world: tuple[Registry, Rollouts, Controller]
) -> None:
    registry, rollouts, controller = world
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan(), reason="ship v2")
    assert (row.state, row.stage_index, row.traffic_bp) == (RolloutState.RUNNING, 0, 100)
    epoch_before = _epoch(store)

    for stage, minutes, bp in (("canary", 10, 1000), ("validation", 20, 5000)):
        insert_events(
            store, rollout_id=row.id, stage=stage, at=clock.now(), candidate=40, stable=40
        )
        clock.advance(timedelta(minutes=minutes))
        report = controller.tick()
        (outcome,) = report.outcomes
        assert outcome.action is not None
        assert outcome.action.kind is ActionKind.ADVANCE
        assert rollouts.get(row.id).rollout.traffic_bp == bp
    insert_events(store, rollout_id=row.id, stage="soak", at=clock.now(), candidate=40, stable=40)
    clock.advance(timedelta(minutes=30))
    (outcome,) = controller.tick().outcomes
    assert outcome.action is not None
    assert outcome.action.kind is ActionKind.PROMOTE

    final = rollouts.get(row.id).rollout
    assert final.state is RolloutState.PROMOTED
    assert final.ended_at == clock.now()
    assert registry.stable(POLICY).label == "v2"  # type: ignore[union-attr]
    (entry,) = [e for e in registry.history(POLICY) if e.kind.value == "promotion"]
    assert entry.rollout_id == row.id
    assert entry.from_id == registry.resolve(POLICY, "v1").id
    assert _alert_kinds(store) == ["stage_advanced", "stage_advanced", "promoted"]
    assert _epoch(store) > epoch_before
    # Terminal: further ticks see no active rollout and change nothing.
    assert controller.tick().outcomes == ()


def test_breach_rolls_back_in_one_atomic_write(
    store: Store, clock: ManualClock, world: tuple[Registry, Rollouts, Controller]
) -> None:
    registry, rollouts, controller = world
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan(), reason="ship v2")
    stable_before = registry.stable(POLICY)
    insert_events(
        store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=20, stable=20, errors=6
    )
    clock.advance(timedelta(minutes=1))
    epoch_before = _epoch(store)
    (outcome,) = controller.tick().outcomes
    assert outcome.action is not None
    assert outcome.action.kind is ActionKind.ROLLBACK

    after = rollouts.get(row.id).rollout
    assert (after.state, after.traffic_bp) == (RolloutState.ROLLED_BACK, 0)
    assert after.end_reason == outcome.action.message
    assert registry.stable(POLICY) == stable_before  # stable untouched
    assert _count(store, rejections, rejections.c.rollout_id == row.id) == 1
    assert _count(store, incidents, incidents.c.rollout_id == row.id) == 1
    assert _count(store, audit, audit.c.action == "rollout.rollback") == 1
    assert _alert_kinds(store) == ["rollback"]
    assert _epoch(store) == epoch_before + 1
    (incident,) = Incidents(store).list()
    assert incident.kind == "automatic_rollback"
    assert incident.bundle["versions"]["candidate"]["label"] == "v2"
    assert incident.bundle["stages"]["canary"]["candidate"]["errors"] == 6
    assert [t["action"] for t in incident.bundle["trace"]] == ["start", "rollback"]
    # A rejected candidate is never retried automatically.
    with pytest.raises(Exception, match="rejected by rollout"):
        rollouts.start(POLICY, candidate="v2", plan=small_plan())


def test_tripwire_rolls_back_at_once_before_any_dwell(
    store: Store, clock: ManualClock, world: tuple[Registry, Rollouts, Controller]
) -> None:
    _, rollouts, controller = world
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=1,
                  flags=["critical"])  # fmt: skip
    (outcome,) = controller.tick().outcomes
    assert outcome.action is not None
    assert (outcome.action.kind, outcome.action.reason.value) == (ActionKind.ROLLBACK, "tripwire")


def test_ticks_are_idempotent_and_record_only_changes(
    store: Store, clock: ManualClock, world: tuple[Registry, Rollouts, Controller]
) -> None:
    _, rollouts, controller = world
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=3, stable=3)
    first = controller.tick().outcomes[0]
    second = controller.tick().outcomes[0]
    clock.advance(timedelta(minutes=1))
    third = controller.tick().outcomes[0]  # same hold (dwell), no new events
    assert (first.recorded, first.events_folded) == (True, 6)
    assert (second.recorded, third.recorded) == (False, False)
    assert second.revision == first.revision == third.revision
    assert _count(store, rollout_ticks, rollout_ticks.c.rollout_id == row.id) == 2  # start+1


def test_restart_resumes_the_stage_clock(
    store: Store, clock: ManualClock, world: tuple[Registry, Rollouts, Controller]
) -> None:
    _, rollouts, controller = world
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=40, stable=40)
    clock.advance(timedelta(minutes=6))
    controller.tick()
    controller.close()  # the process stops ...
    clock.advance(timedelta(minutes=4))
    fresh = Controller(store, clock=clock, monitors=CountingMonitors(), holder="restarted")
    (outcome,) = fresh.tick().outcomes  # ... and a new one finds 10 minutes of dwell, not 4
    assert outcome.action is not None
    assert outcome.action.kind is ActionKind.ADVANCE


def test_stage_past_max_duration_without_data_pauses_for_a_human(
    store: Store, clock: ManualClock, world: tuple[Registry, Rollouts, Controller]
) -> None:
    _, rollouts, controller = world
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    clock.advance(timedelta(minutes=30))
    assert controller.tick().outcomes[0].action.kind is ActionKind.HOLD  # type: ignore[union-attr]
    clock.advance(timedelta(minutes=30))
    (outcome,) = controller.tick().outcomes
    assert outcome.action is not None
    assert outcome.action.reason.value == "timed_out"
    assert rollouts.get(row.id).rollout.state is RolloutState.PAUSED
    assert _alert_kinds(store) == ["paused"]
    # Paused: the controller holds, only a human resumes (and the dwell clock restarts).
    clock.advance(timedelta(minutes=5))
    assert controller.tick().outcomes[0].action.kind is ActionKind.HOLD  # type: ignore[union-attr]
    resumed = rollouts.resume(POLICY, reason="traffic is back", actor="bob")
    assert resumed.state is RolloutState.RUNNING
    assert resumed.stage_started_at == clock.now()


def test_alert_only_breach_alerts_once_and_holds(
    store: Store, clock: ManualClock, world: tuple[Registry, Rollouts, Controller]
) -> None:
    _, rollouts, controller = world
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=20,
                  stable=20, quality=0.2)  # fmt: skip
    clock.advance(timedelta(minutes=15))
    for _ in range(3):
        controller.tick()
        insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=1)
    assert _alert_kinds(store) == ["guardrail_alert"]
    status = rollouts.get(row.id)
    assert status.rollout.state is RolloutState.RUNNING
    assert status.rollout.stage_index == 0


def test_editing_the_plan_file_does_not_change_a_running_rollout(
    store: Store, clock: ManualClock, world: tuple[Registry, Rollouts, Controller], tmp_path: object
) -> None:
    from pathlib import Path

    _, rollouts, controller = world
    path = Path(str(tmp_path)) / "plan.yaml"
    path.write_text(small_plan_text(), encoding="utf-8")
    row = rollouts.start(POLICY, candidate="v2", plan=path)
    frozen, digest = row.plan_text, row.plan_hash
    path.write_text(small_plan_text().replace("min_duration: 10m", "min_duration: 1m"), "utf-8")
    insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=40, stable=40)
    clock.advance(timedelta(minutes=2))
    (outcome,) = controller.tick().outcomes
    assert outcome.action is not None
    assert outcome.action.reason.value == "dwell"
    after = rollouts.get(row.id).rollout
    assert (after.plan_text, after.plan_hash) == (frozen, digest)
    assert json.loads(frozen)["stages"][0]["min_duration"] == "10m"


def test_stale_revision_applies_nothing(
    store: Store, clock: ManualClock, world: tuple[Registry, Rollouts, Controller]
) -> None:
    from policy_canary.controller import StaleRevisionError
    from policy_canary.controller._rows import compare_and_swap, load_rollout

    _, rollouts, _ = world
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    with store.begin() as conn:
        stale = load_rollout(conn, row.id)
        compare_and_swap(conn, stale, traffic_bp=100)
    with pytest.raises(StaleRevisionError), store.begin() as conn:
        compare_and_swap(conn, stale, state="paused")
    assert rollouts.get(row.id).rollout.state is RolloutState.RUNNING


def test_only_one_controller_acts_at_a_time(
    store: Store, clock: ManualClock, world: tuple[Registry, Rollouts, Controller]
) -> None:
    _, rollouts, first = world
    rollouts.start(POLICY, candidate="v2", plan=small_plan())
    second = Controller(store, clock=clock, monitors=CountingMonitors(), holder="other")
    assert first.tick().acted
    standby = second.tick()
    assert not standby.acted
    assert standby.outcomes == ()
    first.close()
    assert second.tick().acted
    second.close()


def test_sqlite_lease_expires_when_its_holder_dies(sqlite_url: str, clock: ManualClock) -> None:
    store = Store.open(sqlite_url)
    dead = Controller(store, clock=clock, holder="dead", lease_ttl=timedelta(seconds=30))
    alive = Controller(store, clock=clock, holder="alive", lease_ttl=timedelta(seconds=30))
    assert dead.tick().acted  # and never releases
    assert alive.tick().holder == "dead"
    clock.advance(timedelta(seconds=31))
    assert alive.tick().acted
    store.close()


def small_plan_text() -> str:
    from _rollout_support import PLAN_YAML

    return PLAN_YAML


def _epoch(store: Store) -> int:
    with store.read() as conn:
        return store.read_epoch(conn)


def test_run_ticks_and_delivers_alerts_until_stopped(
    store: Store, clock: ManualClock, world: tuple[Registry, Rollouts, Controller]
) -> None:
    import threading

    from policy_canary.alerts import Dispatcher
    from policy_canary.testing import MemorySink

    _, rollouts, controller = world
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=10, errors=5)
    sink = MemorySink()
    dispatcher = Dispatcher(store, [sink], clock=clock)
    stop = threading.Event()
    reports = []

    def on_tick(report: object) -> None:
        reports.append(report)
        if len(reports) == 3:
            stop.set()

    ticks = controller.run(
        interval=timedelta(0), stop=stop, dispatch=dispatcher.dispatch_once, on_tick=on_tick
    )
    assert ticks == 3
    assert [a.kind.value for a in sink.sent] == ["rollback"]
    assert sink.sent[0].rollout_id == row.id
    # The loop released its lock on the way out: another controller acts at once.
    assert Controller(store, clock=clock, monitors=CountingMonitors(), holder="next").tick().acted


def test_a_failure_mid_rollback_leaves_nothing_half_done(
    store: Store,
    clock: ManualClock,
    world: tuple[Registry, Rollouts, Controller],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from policy_canary.controller import _apply

    _, rollouts, controller = world
    row = rollouts.start(POLICY, candidate="v2", plan=small_plan())
    insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=6, errors=6)
    epoch = _epoch(store)

    def broken(*_args: object, **_kwargs: object) -> str:
        raise RuntimeError("disk full while writing the incident")

    monkeypatch.setattr(_apply, "write_incident", broken)
    (outcome,) = controller.tick().outcomes
    assert outcome.error == "disk full while writing the incident"
    after = rollouts.get(row.id).rollout
    assert (after.state, after.traffic_bp, after.revision) == (RolloutState.RUNNING, 100, 1)
    assert _count(store, rejections) == 0
    assert _alert_kinds(store) == []
    assert _count(store, rollout_ticks, rollout_ticks.c.rollout_id == row.id) == 1
    assert _epoch(store) == epoch
    # Once the fault is gone, the next tick applies the whole rollback, once.
    monkeypatch.undo()
    (retry,) = controller.tick().outcomes
    assert retry.action is not None
    assert retry.action.kind is ActionKind.ROLLBACK
    assert _count(store, rejections) == 1
    assert _alert_kinds(store) == ["rollback"]


def test_every_transition_raises_an_alert_typed_with_the_alert_enums() -> None:
    assert set(ALERTS) == {kind for kind in ActionKind if kind.is_transition()}
    for kind, severity in [*ALERTS.values(), GUARDRAIL_ALERT]:
        assert isinstance(kind, AlertKind)
        assert isinstance(severity, Severity)
