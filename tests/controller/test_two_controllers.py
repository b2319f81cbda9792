"""Two controller processes on PostgreSQL against one rollout: each transition applies once."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from _rollout_support import PLAN_YAML, POLICY, CountingMonitors, insert_events, setup_policy
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller, Rollouts
from policy_canary.plan import RolloutPlan
from policy_canary.store import Store
from policy_canary.store.schema import alerts, audit, release_history, rollout_ticks, rollouts

T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: Simulated seconds per wall-clock second: the whole plan (60 min of dwell) runs in ~1.5 s.
SPEED = 2400.0
#: The small plan with stage time-outs no stall of a loaded box can reach (24 h = 36 s of wall
#: time), so the rollout is promoted however slowly the processes start and tick.
PLAN = RolloutPlan.loads(
    PLAN_YAML.replace("max_duration: 1h", "max_duration: 24h").replace(
        "max_duration: 2h", "max_duration: 24h"
    ),
    source="plan.yaml",
)


class SharedFastClock:
    """Simulated time both processes agree on: T0 plus scaled wall time since ``wall0``."""

    def __init__(self, wall0: float) -> None:
        self.wall0 = wall0

    def now(self) -> datetime:
        return T0 + timedelta(seconds=(time.time() - self.wall0) * SPEED)


def _controller_process(url: str, wall0: float, name: str, deadline: float) -> None:
    store = Store.open(url, migrate=False)
    controller = Controller(
        store,
        clock=SharedFastClock(wall0),
        monitors=CountingMonitors(min_n=5),
        holder=name,
        actor=name,
    )
    while time.time() < deadline and not _finished(store):
        controller.tick()
        controller.close()  # hand the lock around, so both processes take turns acting
    store.close()


def _finished(store: Store) -> bool:
    with store.read() as conn:
        return conn.execute(select(rollouts.c.state)).scalar_one() != "running"


@pytest.mark.slow
def test_two_controllers_apply_each_transition_exactly_once(pg_url: str) -> None:
    store = Store.open(pg_url)
    setup_policy(store, ManualClock(T0))
    row = Rollouts(store, clock=ManualClock(T0), monitors=CountingMonitors(min_n=5)).start(
        POLICY, candidate="v2", plan=PLAN
    )
    for stage in ("canary", "validation", "soak"):
        insert_events(store, rollout_id=row.id, stage=stage, at=T0, candidate=40, stable=40)

    wall0 = time.time()
    deadline = wall0 + 30.0  # a bound only: each process stops once the rollout has ended
    children = []
    for name in ("controller-a", "controller-b"):
        pid = os.fork()
        if pid == 0:
            try:
                _controller_process(pg_url, wall0, name, deadline)
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0

    with store.read() as conn:
        state = conn.execute(select(rollouts.c.state).where(rollouts.c.id == row.id)).scalar_one()
        transitions = list(
            conn.execute(
                select(rollout_ticks.c.action, rollout_ticks.c.stage_index)
                .where(rollout_ticks.c.action.in_(["advance", "promote", "rollback", "pause"]))
                .order_by(rollout_ticks.c.seq)
            )
        )
        alert_kinds = list(conn.execute(select(alerts.c.kind).order_by(alerts.c.id)).scalars())
        promotions = conn.execute(
            select(func.count())
            .select_from(release_history)
            .where(release_history.c.kind == "promotion")
        ).scalar_one()
        audited = list(
            conn.execute(
                select(audit.c.action).where(audit.c.action.like("rollout.%")).order_by(audit.c.id)
            ).scalars()
        )
        revisions = list(conn.execute(select(rollout_ticks.c.revision)).scalars())
        actors = {
            json.loads(text)["actor"]
            for text in conn.execute(select(rollout_ticks.c.inputs)).scalars()
        }
    store.close()
    assert state == "promoted"
    assert [tuple(t) for t in transitions] == [("advance", 0), ("advance", 1), ("promote", 2)]
    assert alert_kinds == ["stage_advanced", "stage_advanced", "promoted"]
    assert promotions == 1
    assert audited == ["rollout.start", "rollout.advance", "rollout.advance", "rollout.promote"]
    assert len(revisions) == len(set(revisions))  # every write was a distinct CAS step
    assert actors >= {"controller-a", "controller-b"}  # both really acted, taking turns
