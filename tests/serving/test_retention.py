"""Retention windows: a prune deletes only what its window says, and refuses windows that
mean nothing sensible (zero, negative, not a timedelta) instead of reinterpreting them.

Given a canary whose store holds an old and a fresh event with feedback, when ``prune`` is
called with a bad ``retention``, then it raises InputError and every row is still there.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from _serving import seed_policy, start_rollout
from policy_canary.clock import ManualClock
from policy_canary.errors import InputError
from policy_canary.serving import Canary
from policy_canary.serving._direct import StoreLink
from policy_canary.store import Store
from policy_canary.store.schema import events, feedback


def _counts(store: Store) -> tuple[int, int]:
    with store.read() as conn:
        return (
            conn.execute(select(func.count()).select_from(events)).scalar_one(),
            conn.execute(select(func.count()).select_from(feedback)).scalar_one(),
        )


@pytest.fixture
def canary_with_rows(store: Store, clock: ManualClock) -> Canary:
    seed_policy(store, clock)
    canary = Canary(store, clock=clock, background=False, rng=random.Random(1))
    gate = canary.gate("support-agent")
    for key in ("old", "fresh"):
        d = gate.route(key)
        d.record(latency_ms=5.0)
        canary.feedback(d.decision_id, quality=0.5)
        canary.flush()
        clock.advance(timedelta(days=2))
    return canary


@pytest.mark.parametrize(
    "retention",
    [timedelta(days=-1), timedelta(0), timedelta(microseconds=-1), 30],
    ids=["negative", "zero", "tiny-negative", "not-a-timedelta"],
)
def test_prune_refuses_a_window_that_is_not_positive(
    store: Store, canary_with_rows: Canary, retention: object
) -> None:
    assert _counts(store) == (2, 2)
    with pytest.raises(InputError, match="retention"):
        canary_with_rows.prune(retention=retention)  # type: ignore[arg-type]
    assert _counts(store) == (2, 2)
    canary_with_rows.close()


def test_prune_with_an_explicit_window_deletes_only_older_rows(
    store: Store, canary_with_rows: Canary
) -> None:
    result = canary_with_rows.prune(retention=timedelta(days=3))
    assert (result.events, result.feedback) == (1, 1)
    assert _counts(store) == (1, 1)
    canary_with_rows.close()


@pytest.mark.parametrize("retention", [timedelta(days=-1), timedelta(0)])
def test_a_canary_refuses_a_non_positive_default_window(store: Store, retention: timedelta) -> None:
    with pytest.raises(InputError, match="positive timedelta"):
        Canary(store, background=False, retention=retention)


def test_a_prune_in_chunks_deletes_every_old_row_and_keeps_active_rollouts(
    store: Store, clock: ManualClock
) -> None:
    # Given 23 old events with feedback (no rollout), 4 old ones of a running rollout and
    # 2 fresh ones, when pruned in transactions of 5 rows, then exactly the 23 go.
    stable, candidate = seed_policy(store, clock)
    canary = Canary(store, clock=clock, background=False, rng=random.Random(2))
    gate = canary.gate("support-agent")
    for i in range(23):
        decision = gate.route(f"old-{i}")
        decision.record(latency_ms=1.0)
        canary.feedback(decision.decision_id, quality=0.5)
    canary.flush()
    start_rollout(store, clock, baseline=stable, candidate=candidate, traffic_bp=5000)
    canary.refresh_now()
    for i in range(4):
        gate.route(f"active-{i}").record(latency_ms=1.0)
    canary.flush()
    clock.advance(timedelta(days=10))
    for i in range(2):
        gate.route(f"fresh-{i}").record(latency_ms=1.0)
    canary.flush()
    link = StoreLink(store)
    result = link.prune(clock.now() - timedelta(days=1), chunk=5)
    assert (result.events, result.feedback) == (23, 23)
    assert _counts(store) == (6, 0)
    # Nothing older is left: a second prune finds nothing.
    again = link.prune(clock.now() - timedelta(days=1), chunk=5)
    assert (again.events, again.feedback) == (0, 0)
    canary.close()
