"""What ``record()`` accepts is exactly what the store can keep, on both backends.

Given a gate on a seeded store, when an agent records text the database could not store (a
NUL in ``model``, a lone surrogate in a model, flag or metric name) or sizes beyond the
documented limits (a flag count beyond 64, 65 flag names, a flag name over 64 characters),
then ``record()`` raises InvalidMetricError at the call and nothing is buffered; and whatever
``record()`` accepts is written by the flusher without a single rejected row and reads back
unchanged.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from _serving import POLICY, seed_policy
from policy_canary.clock import ManualClock
from policy_canary.errors import InvalidMetricError
from policy_canary.serving import Canary
from policy_canary.serving._outcomes import MAX_FLAG_NAME, MAX_FLAGS, MAX_METRIC_NAME, MAX_MODEL
from policy_canary.store import Store
from policy_canary.store.schema import events


@pytest.fixture
def canary(store: Store, clock: ManualClock) -> Iterator[Canary]:
    seed_policy(store, clock)
    opened = Canary(store, clock=clock, background=False, rng=random.Random(5))
    yield opened
    opened.close()


BAD_OUTCOMES: list[tuple[str, dict[str, Any], str]] = [
    ("model-nul", {"model": "gpt\x00x"}, "NUL"),
    ("model-surrogate", {"model": "gpt-\ud800"}, "surrogate"),
    ("model-too-long", {"model": "m" * (MAX_MODEL + 1)}, "1..200"),
    ("flag-surrogate", {"safety_flags": ["pii", "\udcff"]}, "surrogate"),
    ("flag-nul", {"safety_flags": ["pii\x00"]}, "NUL"),
    ("flag-too-long", {"safety_flags": ["x" * 1_000_000]}, "1..64"),
    ("too-many-flags", {"safety_flags": [f"f{i}" for i in range(100_000)]}, "at most 64"),
    ("flag-set-too-many", {"safety_flags": {f"f{i}" for i in range(MAX_FLAGS + 1)}}, "at most"),
    ("flag-count-huge", {"safety_flags": 10**30}, "0..64"),
    ("flag-count-beyond", {"safety_flags": MAX_FLAGS + 1}, "0..64"),
    ("metric-name-surrogate", {"metrics": {"\ud83d": 1.0}}, "surrogate"),
    ("metric-name-nul", {"metrics": {"a\x00b": 1.0}}, "NUL"),
]


@pytest.mark.parametrize(
    ("values", "message"),
    [pytest.param(v, m, id=name) for name, v, m in BAD_OUTCOMES],
)
def test_record_refuses_what_the_store_could_not_keep(
    canary: Canary, values: dict[str, Any], message: str
) -> None:
    gate = canary.gate(POLICY)
    d = gate.route("u1")
    with pytest.raises(InvalidMetricError, match=message):
        d.record(latency_ms=1.0, **values)
    assert canary.stats().buffered == 0
    assert not d.recorded


def test_feedback_refuses_a_metric_name_the_store_could_not_keep(canary: Canary) -> None:
    d = canary.gate(POLICY).route("u1")
    d.record(latency_ms=1.0)
    with pytest.raises(InvalidMetricError, match="surrogate"):
        canary.feedback(d.decision_id, metrics={"judge\udc80": 0.5})
    assert canary.stats().feedback_buffered == 0


def test_values_at_every_limit_are_stored_unchanged(canary: Canary, store: Store) -> None:
    model = "модель-" + "m" * (MAX_MODEL - 7)
    flags = [f"{i:02d}" + "é" * (MAX_FLAG_NAME - 2) for i in range(MAX_FLAGS)]
    metrics = {"ü" * MAX_METRIC_NAME: 1.5, "😀": True}
    d = canary.gate(POLICY).route("u1")
    d.record(latency_ms=1.0, model=model, safety_flags=flags, metrics=metrics)
    counted = canary.gate(POLICY).route("u2")
    counted.record(safety_flags=MAX_FLAGS)
    canary.flush()
    stats = canary.stats()
    assert (stats.written, stats.rejected) == (2, 0)
    with store.read() as conn:
        row = conn.execute(select(events).where(events.c.decision_id == d.decision_id)).one()
        count = conn.execute(
            select(events.c.flag_count).where(events.c.decision_id == counted.decision_id)
        ).scalar_one()
    assert row.model == model
    assert json.loads(row.safety_flags) == flags
    assert row.flag_count == MAX_FLAGS
    assert json.loads(row.metrics) == metrics
    assert count == MAX_FLAGS


# Any code point, plus the ones a store refuses (hypothesis leaves surrogates out by default).
names = st.text(
    st.one_of(st.characters(), st.sampled_from(["\x00", "\ud800", "\udfff", "\U0001f600"])),
    min_size=1,
    max_size=80,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    model=names,
    flags=st.lists(names, max_size=3),
    metric=names,
)
def test_whatever_record_accepts_the_store_writes(
    canary: Canary, store: Store, model: str, flags: list[str], metric: str
) -> None:
    d = canary.gate(POLICY).route("key")
    try:
        d.record(model=model, safety_flags=flags, metrics={metric: 1})
    except InvalidMetricError:
        assert canary.stats().buffered == 0
        return
    before = canary.stats()
    canary.flush()
    after = canary.stats()
    assert (after.written - before.written, after.rejected - before.rejected) == (1, 0)
    with store.read() as conn:
        row = conn.execute(select(events).where(events.c.decision_id == d.decision_id)).one()
    assert row.model == model
    assert json.loads(row.safety_flags) == flags
    assert json.loads(row.metrics) == {metric: 1}
