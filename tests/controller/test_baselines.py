"""Every quantile guardrail gets a line: first rollouts, back-to-back rollouts, unreported metrics.

Driven through the public API as an operator and an agent would: the SDK routes and records,
``Rollouts`` starts, the controller ticks with the real monitors (on both backends).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta

import pytest

from _rollout_support import POLICY, setup_policy
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller, Incidents, Rollouts, RolloutState
from policy_canary.errors import ConflictError
from policy_canary.monitoring import Verdict, VerdictStatus
from policy_canary.plan import RolloutPlan
from policy_canary.registry import Registry
from policy_canary.serving import Canary
from policy_canary.store import Store

PLAN = RolloutPlan.loads(
    """\
alpha: 0.01
guardrails:
  - {name: error_rate, metric: error, max_increase: 50%}
  - {name: latency_p95, metric: latency_ms, statistic: p95, max_increase: 25%}
stages:
  - {name: canary, traffic: 10, min_duration: 10m, max_duration: 6h, min_samples: 100}
  - {name: soak, traffic: 50, min_duration: 10m, min_samples: 200}
""",
    source="plan.yaml",
)

WITH_QUALITY = RolloutPlan.loads(
    """\
alpha: 0.01
guardrails:
  - {name: error_rate, metric: error, max_increase: 50%}
  - {name: quality, metric: quality, max_decrease: 5%}
stages:
  - {name: canary, traffic: 10, min_duration: 10m, max_duration: 1h, min_samples: 100}
""",
    source="plan.yaml",
)


@pytest.fixture
def canary(store: Store, clock: ManualClock) -> Iterator[Canary]:
    setup_policy(store, clock)
    c = Canary(store, clock=clock, background=False)
    yield c
    c.close()


class Agent:
    """Serves requests through the gate: lognormal latency, the candidate ``slow`` times slower."""

    def __init__(self, canary: Canary, *, seed: int, slow: dict[str, float] | None = None):
        self.canary, self.rng, self.slow, self.served = canary, random.Random(seed), slow or {}, 0

    def serve(self, n: int, *, quality: bool = False) -> None:
        self.canary.refresh_now()
        gate = self.canary.gate(POLICY)
        for _ in range(n):
            self.served += 1
            decision = gate.route(f"user-{self.served}")
            latency = 200.0 * self.rng.lognormvariate(0.0, 0.5)
            latency *= self.slow.get(decision.version.label, 1.0)
            decision.record(latency_ms=latency, error=False, quality=0.8 if quality else None)
        self.canary.flush()


def run(
    store: Store, clock: ManualClock, agent: Agent, rollout_id: str, *, rounds: int = 40
) -> list[list[Verdict]]:
    """Serve and tick while the rollout runs (at most ``rounds`` times); each tick's verdicts."""
    rollouts = Rollouts(store, clock=clock)
    controller = Controller(store, clock=clock, holder="baselines")
    try:
        return _rounds(controller, rollouts, agent, clock, rollout_id, rounds)
    finally:
        controller.close()  # on PostgreSQL its session holds the controller lock until closed


def tick_once(store: Store, clock: ManualClock) -> None:
    """One tick by a controller that lets go of the lock afterwards."""
    with closing(Controller(store, clock=clock, holder="baselines")) as controller:
        controller.tick()


def _rounds(
    controller: Controller,
    rollouts: Rollouts,
    agent: Agent,
    clock: ManualClock,
    rollout_id: str,
    rounds: int,
) -> list[list[Verdict]]:
    seen: list[list[Verdict]] = []
    for _ in range(rounds):
        agent.serve(600)
        clock.advance(timedelta(minutes=5))
        controller.tick()
        status = rollouts.get(rollout_id)
        seen.append(list(status.verdicts))
        if status.rollout.state is not RolloutState.RUNNING:
            break
    return seen


def p95(verdicts: list[Verdict]) -> Verdict:
    return next(v for v in verdicts if v.guardrail == "latency_p95")


def test_a_first_rollout_on_a_fresh_store_judges_latency_p95(
    store: Store, clock: ManualClock, canary: Canary
) -> None:
    # Given a stable version that has never served a request
    rollouts = Rollouts(store, clock=clock)
    row = rollouts.start(POLICY, candidate="v2", plan=PLAN)
    agent = Agent(canary, seed=1)
    agent.serve(200)
    tick_once(store, clock)
    early = p95(list(rollouts.get(row.id).verdicts))
    assert early.status is VerdictStatus.INSUFFICIENT_DATA
    assert "frozen from stable's concurrent traffic after 400 observations" in early.reason

    # When a healthy candidate serves alongside it
    seen = run(store, clock, agent, row.id)

    # Then the p95 line is frozen from stable's concurrent traffic and the guardrail passes
    statuses = [p95(v).status for v in seen]
    assert VerdictStatus.PASS in statuses
    assert VerdictStatus.BREACH not in statuses
    passed = next(p95(v) for v in seen if p95(v).status is VerdictStatus.PASS)
    assert passed.evidence["line_source"] == "concurrent"
    assert 200 < passed.evidence["baseline_line"] < 700  # 200 ms x e^(1.645 x 0.5) = 456 ms
    assert rollouts.get(row.id).rollout.state is RolloutState.PROMOTED


def test_a_slow_first_candidate_is_rolled_back_by_latency_p95(
    store: Store, clock: ManualClock, canary: Canary
) -> None:
    rollouts = Rollouts(store, clock=clock)
    row = rollouts.start(POLICY, candidate="v2", plan=PLAN)

    run(store, clock, Agent(canary, seed=2, slow={"v2": 2.0}), row.id)

    status = rollouts.get(row.id)
    assert status.rollout.state is RolloutState.ROLLED_BACK
    assert [v.guardrail for v in status.verdicts if v.status.is_breach()] == ["latency_p95"]
    (incident,) = Incidents(store).list()
    assert "latency_p95" in incident.summary


@pytest.mark.parametrize("slow", [False, True], ids=["healthy", "slow"])
def test_a_rollout_started_as_the_last_one_promoted_judges_latency_p95(
    store: Store, clock: ManualClock, canary: Canary, slow: bool
) -> None:
    # Given v2 promoted through a whole rollout, and v3 started the moment it was
    rollouts = Rollouts(store, clock=clock)
    first = rollouts.start(POLICY, candidate="v2", plan=PLAN)
    agent = Agent(canary, seed=3, slow={"v3": 2.0} if slow else {})
    run(store, clock, agent, first.id)
    assert rollouts.get(first.id).rollout.state is RolloutState.PROMOTED
    Registry(store, clock=clock).register(POLICY, {"prompt": "v3"}, message="third", author="a")
    second = rollouts.start(POLICY, candidate="v3", plan=PLAN)

    # Then its line is frozen at once from v2's traffic, served while it was the candidate
    agent.serve(600)
    clock.advance(timedelta(minutes=5))
    tick_once(store, clock)
    now = p95(list(rollouts.get(second.id).verdicts))
    assert now.evidence["line_source"] == "baseline"
    assert "no frozen baseline" not in now.reason

    # And the guardrail judges v3: a slow one is rolled back by it, a healthy one promoted
    seen = run(store, clock, agent, second.id)
    status = rollouts.get(second.id)
    if slow:
        assert status.rollout.state is RolloutState.ROLLED_BACK
        assert [v.guardrail for v in status.verdicts if v.status.is_breach()] == ["latency_p95"]
    else:
        assert status.rollout.state is RolloutState.PROMOTED
        assert VerdictStatus.PASS in [p95(v).status for v in seen]


def test_a_guardrail_on_a_metric_nobody_records_says_so_and_the_pause_names_it(
    store: Store, clock: ManualClock, canary: Canary
) -> None:
    # Given stable traffic that never records quality
    agent = Agent(canary, seed=4)
    agent.serve(500)
    rollouts = Rollouts(store, clock=clock)

    # Then the coverage check says so up front, and --require-metrics refuses the start
    coverage = {c.guardrail: c for c in rollouts.metrics_coverage(POLICY, WITH_QUALITY)}
    assert coverage["error_rate"].covered
    assert coverage["error_rate"].observations == 500
    assert not coverage["quality"].covered
    assert "none of stable's 500 recent requests carried quality" in coverage["quality"].message()
    with pytest.raises(ConflictError, match="quality: none of stable's 500 recent requests"):
        rollouts.start(POLICY, candidate="v2", plan=WITH_QUALITY, require_metrics=True)
    assert rollouts.status(POLICY) == []  # nothing stored

    # When it starts anyway and runs past its max_duration
    row = rollouts.start(POLICY, candidate="v2", plan=WITH_QUALITY)
    run(store, clock, agent, row.id, rounds=14)

    # Then the status and the pause name the guardrail and the reason
    status = rollouts.get(row.id)
    assert status.rollout.state is RolloutState.PAUSED
    (quality,) = [v for v in status.verdicts if v.guardrail == "quality"]
    assert quality.reason == (
        f"quality: no observations on either arm after {agent.served - 500:,} requests; record "
        "quality or drop this guardrail."
    )
    assert status.last_action is not None
    message = status.last_action["message"]
    assert "passed its maximum duration" in message
    assert "quality: no observations on either arm after" in message


def test_require_metrics_starts_when_stable_records_every_metric(
    store: Store, clock: ManualClock, canary: Canary
) -> None:
    Agent(canary, seed=5).serve(300, quality=True)
    rollouts = Rollouts(store, clock=clock)
    assert all(c.covered for c in rollouts.metrics_coverage(POLICY, WITH_QUALITY))
    row = rollouts.start(POLICY, candidate="v2", plan=WITH_QUALITY, require_metrics=True)
    assert rollouts.get(row.id).rollout.state is RolloutState.RUNNING
