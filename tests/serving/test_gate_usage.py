"""An SDK usage mistake inside ``with gate.route(...)`` is the caller's bug, not a failed request.

Given a decision used as a context manager, when the agent's code enters it again or records it
twice inside the block, then a clear :class:`InvalidMetricError` leaves the block and no failed
request is stored: what was validly recorded before the mistake is stored as recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from _serving import POLICY, seed_policy
from policy_canary.clock import ManualClock
from policy_canary.errors import InvalidMetricError
from policy_canary.serving import Canary, Decision
from policy_canary.store import Store
from policy_canary.store.schema import events


@pytest.fixture
def canary(store: Store, clock: ManualClock) -> Iterator[Canary]:
    seed_policy(store, clock)
    opened = Canary(store, clock=clock, background=False)
    yield opened
    opened.close()


def _stored(canary: Canary) -> list[dict[str, Any]]:
    canary.flush()
    with canary.store.read() as conn:
        rows = conn.execute(select(events.c.error, events.c.quality).order_by(events.c.id))
        return [dict(r._mapping) for r in rows]


def _enter_twice(d: Decision) -> None:
    with d, d:
        pass


def _record_twice(d: Decision) -> None:
    with d:
        d.record(quality=0.9)
        d.record(quality=0.1)


def _agent_fails(d: Decision, *, quality: float | None) -> None:
    with d:
        if quality is not None:
            d.record(quality=quality)
        raise RuntimeError("the agent broke")


def test_entering_a_decision_twice_raises_and_stores_no_failure(canary: Canary) -> None:
    d = canary.gate(POLICY).route("u")
    with pytest.raises(InvalidMetricError, match="already inside its 'with' block"):
        _enter_twice(d)
    assert d.recorded
    assert _stored(canary) == []
    assert canary.stats().buffered == 0


def test_recording_twice_in_a_block_raises_and_keeps_the_first_record(canary: Canary) -> None:
    with pytest.raises(InvalidMetricError, match="already recorded"):
        _record_twice(canary.gate(POLICY).route("u"))
    assert _stored(canary) == [{"error": False, "quality": 0.9}]


def test_the_agents_own_exception_is_still_a_failed_request(canary: Canary) -> None:
    gate = canary.gate(POLICY)
    with pytest.raises(RuntimeError, match="the agent broke"):
        _agent_fails(gate.route("u"), quality=0.5)
    with pytest.raises(RuntimeError, match="the agent broke"):
        _agent_fails(gate.route("v"), quality=None)
    assert _stored(canary) == [{"error": True, "quality": 0.5}, {"error": True, "quality": None}]
