"""A closed canary: what still works, what is dropped and counted, and what says it is closed.

Given a canary that was closed (the agent is shutting down, or a bug closed it early), when
requests still in flight record their outcome, or a judge sends feedback, then nothing is
silently lost: each row is dropped, counted in ``stats()`` and warned about once, while
``route()`` keeps answering from the last tables. Calls that need the open canary
(``flush()``, ``tick()``, ``refresh_now()``, a new gate) raise a ConflictError saying so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from _serving import POLICY, seed_policy
from policy_canary.clock import ManualClock
from policy_canary.errors import ConflictError, InvalidMetricError
from policy_canary.serving import Canary
from policy_canary.store import Store
from policy_canary.store.schema import events


def _events(store: Store) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


def test_record_and_feedback_after_close_are_dropped_counted_and_warned_once(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="policy_canary")
    seed_policy(store, clock)
    canary = Canary(store, clock=clock, background=False)
    gate = canary.gate(POLICY)
    decisions = [gate.route(f"user-{i}") for i in range(20)]
    for d in decisions[:10]:
        d.record(latency_ms=1.0)
    canary.close()
    for d in decisions[10:]:  # requests that finish after the agent closed its canary
        d.record(latency_ms=2.0)
    with gate.route("late") as d:  # route() still answers from the last table
        assert d.version.number == 1
    canary.feedback(decisions[0].decision_id, quality=0.5)
    with pytest.raises(InvalidMetricError):  # a bad value is still the caller's mistake
        canary.feedback(decisions[0].decision_id, quality=2.0)

    stats = canary.stats()
    assert (stats.written, stats.buffered, stats.feedback_buffered) == (10, 0, 0)
    assert (stats.dropped_closed, stats.feedback_dropped_closed) == (11, 1)
    assert stats.dropped == 12
    assert gate.status().dropped_events == 12
    assert _events(store) == 10
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "after canary.close()" in warnings[0]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda c: c.flush(), "flush()"),
        (lambda c: c.tick(), "tick()"),
        (lambda c: c.refresh_now(), "refresh_now()"),
        (lambda c: c.gate("another-policy"), "gate()"),
    ],
)
def test_calls_that_need_an_open_canary_say_it_is_closed(
    sqlite_url: str, clock: ManualClock, call: Callable[[Canary], object], name: str
) -> None:
    store = Store.open(sqlite_url)
    seed_policy(store, clock)
    canary = Canary(store, clock=clock, background=False, owns_store=True)
    gate = canary.gate(POLICY)
    canary.close()
    expected = re.escape(f"{name} on a closed canary; open a new one with Canary.open()")
    with pytest.raises(ConflictError, match=f"^{expected}"):
        call(canary)
    assert canary.gate(POLICY) is gate  # the gates it already has keep routing
    canary.close()  # still idempotent
