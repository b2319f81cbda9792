"""Late feedback counts once per decision and metric: the first value wins.

Given a rollout whose quality guardrail is fed by late feedback, when a judge or a queue
delivers the same score many times (in one process, across a restart, or after the request
recorded its own quality), then the store keeps one value per decision and metric, the
monitors see one observation per decision, the repeats are counted as duplicates, and a
healthy candidate is not rolled back by a single request's repeated bad score.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from _serving import POLICY, seed_policy
from policy_canary.clock import ManualClock
from policy_canary.controller import Rollouts
from policy_canary.plan import RolloutPlan
from policy_canary.registry import Registry
from policy_canary.serving import Arm, Canary
from policy_canary.serving._feedback import first_observations
from policy_canary.store import Store
from policy_canary.store.schema import feedback

PLAN = """\
guardrails:
  - {name: quality, metric: quality, max_decrease: 5%}
stages:
  - {name: canary, traffic: 50, min_duration: 10h, min_samples: 10}
"""


@pytest.fixture
def canary(store: Store, clock: ManualClock) -> Iterator[Canary]:
    seed_policy(store, clock)
    opened = Canary(store, clock=clock, background=False, rng=random.Random(7))
    yield opened
    opened.close()


def _feedback_rows(store: Store, decision_id: str) -> list[tuple[str | None, float | None, str]]:
    with store.read() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(feedback.c.metric, feedback.c.quality, feedback.c.metrics)
                .where(feedback.c.decision_id == decision_id)
                .order_by(feedback.c.id)
            )
        ]


def test_repeated_feedback_for_one_decision_does_not_roll_back_a_healthy_candidate(
    store: Store, clock: ManualClock, canary: Canary
) -> None:
    rollouts = Rollouts(store, clock=clock)
    started = rollouts.start(POLICY, candidate="v2", plan=RolloutPlan.loads(PLAN, source="p"))
    canary.refresh_now()
    gate = canary.gate(POLICY)
    scores = random.Random(11)
    served: dict[Arm, list[str]] = {Arm.STABLE: [], Arm.CANDIDATE: []}
    # Route until each arm has >= 100 observations, so a mean breach could roll back.
    # The split's salt is the rollout's random id, so the count it takes varies per run.
    routed = 0
    while min(len(ids) for ids in served.values()) < 100:
        assert routed < 1_000, "a 50% split served one arm fewer than 100 of 1,000 requests"
        d = gate.route(f"user-{routed}")
        d.record(latency_ms=100.0)
        served[d.arm].append(d.decision_id)
        canary.feedback(d.decision_id, quality=0.8 + scores.uniform(-0.05, 0.05))
        routed += 1
    victim = served[Arm.CANDIDATE][0]
    for _ in range(200):  # a judge that delivers at least once, and then some
        canary.feedback(victim, quality=0.0)
    canary.tick()
    [status] = rollouts.status(POLICY)
    assert status.rollout.id == started.id
    assert status.rollout.state.value == "running"
    [verdict] = [v for v in status.verdicts if v.guardrail != "outcomes_recorded"]
    assert verdict.evidence["n_candidate"] == len(served[Arm.CANDIDATE])
    assert verdict.evidence["n_stable"] == len(served[Arm.STABLE])
    stats = canary.stats()
    assert (stats.feedback_written, stats.feedback_duplicates) == (routed + 200, 200)
    assert [row[0] for row in _feedback_rows(store, victim)] == ["quality"]


def test_a_retry_after_a_restart_is_not_stored_again(
    store: Store, clock: ManualClock, canary: Canary
) -> None:
    d = canary.gate(POLICY).route("user-1")
    d.record(latency_ms=5.0)
    canary.feedback(d.decision_id, quality=0.9, metrics={"thumbs_up": True})
    canary.close()  # the process ends; close() flushes
    again = Canary(store, clock=clock, background=False)
    # The judge's queue redelivers; a user later changes their mind; a new metric arrives.
    again.feedback(d.decision_id, quality=0.1, metrics={"thumbs_up": False, "steps": 3})
    again.feedback(d.decision_id, quality=0.9, metrics={"thumbs_up": True})
    again.flush()
    assert _feedback_rows(store, d.decision_id) == [
        ("quality", 0.9, "{}"),
        ("metrics.thumbs_up", None, '{"thumbs_up":true}'),
        ("metrics.steps", None, '{"steps":3}'),
    ]
    stats = again.stats()
    assert (stats.feedback_written, stats.feedback_duplicates, stats.dropped) == (2, 4, 0)
    again.close()


def test_feedback_for_a_metric_the_request_recorded_itself_is_ignored(
    store: Store, canary: Canary
) -> None:
    d = canary.gate(POLICY).route("user-1")
    d.record(latency_ms=5.0, quality=0.7, metrics={"resolved": True})
    canary.feedback(d.decision_id, quality=0.2, metrics={"resolved": False, "csat": 4})
    canary.flush()
    assert _feedback_rows(store, d.decision_id) == [("metrics.csat", None, '{"csat":4}')]
    assert canary.stats().feedback_duplicates == 2


def test_the_store_refuses_a_second_value_for_a_decision_and_metric(store: Store) -> None:
    from datetime import UTC, datetime

    from sqlalchemy.exc import IntegrityError

    row = {"decision_id": "d-1", "at": datetime.now(UTC), "metric": "quality", "metrics": "{}"}
    with store.begin() as conn:
        conn.execute(feedback.insert().values(quality=0.5, key="k1", **row))
    with pytest.raises(IntegrityError), store.begin() as conn:
        conn.execute(feedback.insert().values(quality=0.1, key="k2", **row))
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(feedback)).scalar_one() == 1


def test_the_fold_keeps_the_first_value_of_rows_stored_before_the_constraint(
    store: Store, clock: ManualClock, canary: Canary
) -> None:
    """Rows written before migration 0004 (metric NULL, several values) are reduced too."""
    rollouts = Rollouts(store, clock=clock)
    rollouts.start(POLICY, candidate="v2", plan=RolloutPlan.loads(PLAN, source="p"))
    canary.refresh_now()
    gate = canary.gate(POLICY)
    decisions = []
    for i in range(40):
        d = gate.route(f"user-{i}")
        d.record(latency_ms=100.0)
        decisions.append(d)
    canary.flush()
    legacy = [
        {"decision_id": d.decision_id, "at": clock.now(), "quality": 0.8, "metrics": "{}"}
        for d in decisions
    ]
    victim = next(d for d in decisions if d.arm is Arm.CANDIDATE).decision_id
    legacy += [{"decision_id": victim, "at": clock.now(), "quality": 0.0, "metrics": "{}"}] * 150
    with store.begin() as conn:
        conn.execute(feedback.insert(), legacy)  # metric and key NULL, as before 0004
    canary.tick()
    [status] = rollouts.status(POLICY)
    assert status.rollout.state.value == "running"
    [verdict] = [v for v in status.verdicts if v.guardrail != "outcomes_recorded"]
    n_candidate = sum(d.arm is Arm.CANDIDATE for d in decisions)
    assert verdict.evidence["n_candidate"] == n_candidate
    assert verdict.evidence["mean_candidate"] == pytest.approx(0.8)
    assert status.aggregates["canary"]["candidate"]["quality_n"] == n_candidate


def test_first_observations_counts_each_metric_once_in_store_order() -> None:
    held = {"a": (0.5, "{}"), "b": (None, '{"x":1}')}
    earlier = [("a", None, '{"y":true}')]
    fresh = [
        ("a", 0.1, '{"y":false,"z":2}'),  # quality held by the event, y by earlier feedback
        ("b", 0.3, '{"x":2}'),
        ("b", 0.4, "{}"),
        ("unknown", 0.9, "{}"),
    ]
    assert first_observations(held, earlier, fresh) == [
        (None, {"z": 2}),
        (0.3, {}),
        None,
        None,
    ]


deliveries = st.lists(
    st.tuples(
        st.integers(0, 3),  # which decision
        st.sampled_from(["quality", "metrics.a", "metrics.b"]),
        st.floats(0.0, 1.0),
        st.sampled_from(["send", "send", "flush", "restart"]),
    ),
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=deliveries)
def test_whatever_the_deliveries_the_store_keeps_the_first_value_per_metric(
    store: Store, clock: ManualClock, plan: list[tuple[int, str, float, str]]
) -> None:
    if not _seeded(store):
        seed_policy(store, clock)
    canary = Canary(store, clock=clock, background=False)
    gate = canary.gate(POLICY)
    ids = []
    for i in range(4):
        d = gate.route(f"u{i}")
        d.record(latency_ms=1.0)
        ids.append(d.decision_id)
    first: dict[tuple[str, str], float] = {}
    for which, metric, value, then in plan:
        decision_id = ids[which]
        if metric == "quality":
            canary.feedback(decision_id, quality=value)
        else:
            canary.feedback(decision_id, metrics={metric.removeprefix("metrics."): value})
        first.setdefault((decision_id, metric), value)
        if then == "flush":
            canary.flush()
        elif then == "restart":
            canary.close()
            canary = Canary(store, clock=clock, background=False)
    canary.close()
    kept: dict[tuple[str, str], float] = {}
    for decision_id in ids:
        for metric, quality, metrics in _feedback_rows(store, decision_id):
            assert metric is not None
            assert (decision_id, metric) not in kept
            name = metric.removeprefix("metrics.")
            kept[decision_id, metric] = (
                quality if metric == "quality" else json.loads(metrics)[name]
            )
    assert kept == first


def _seeded(store: Store) -> bool:
    return bool(Registry(store).policies())
