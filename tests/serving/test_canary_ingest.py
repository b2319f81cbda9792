"""Recording outcomes: validation, batching, outages, drops, late feedback and retention.

Given a gate on a seeded store, when an agent records outcomes (and later feedback), then
valid values reach the ``events``/``feedback`` tables exactly once, bad values are refused at
the call, and store trouble only delays writes (or drops counted events when the buffer is
full), never failing the agent.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, func, select, text
from sqlalchemy.dialects import sqlite

from _serving import POLICY, seed_policy, start_rollout, store_down, update_rollout
from policy_canary.clock import ManualClock
from policy_canary.errors import InvalidMetricError, NotFoundError
from policy_canary.serving import Canary
from policy_canary.serving._direct import EVENT_WRITER_LOCK, PG_COPY_TYPES, StoreLink, sqlite_time
from policy_canary.serving._outcomes import EVENT_COLUMNS
from policy_canary.serving._splitter import SCHEME_VERSION, Arm
from policy_canary.store import Store
from policy_canary.store.schema import events, feedback


@pytest.fixture
def seeded(store: Store, clock: ManualClock) -> tuple[str, str]:
    """The policy's stable and candidate version ids, with a 50% rollout running."""
    stable_id, candidate_id = seed_policy(store, clock)
    start_rollout(
        store,
        clock,
        baseline=stable_id,
        candidate=candidate_id,
        traffic_bp=5000,
        plan={"stages": [{"name": "canary"}]},
    )
    return stable_id, candidate_id


@pytest.fixture
def canary(store: Store, clock: ManualClock, seeded: tuple[str, str]) -> Iterator[Canary]:
    """A canary without background threads: tests flush explicitly."""
    opened = Canary(store, clock=clock, background=False, rng=random.Random(3))
    yield opened
    opened.close()


@pytest.fixture
def sqlite_canary(sqlite_url: str, clock: ManualClock) -> Iterator[Canary]:
    """For checks at the call that never reach a store: one backend is enough."""
    store = Store.open(sqlite_url)
    seed_policy(store, clock)
    opened = Canary(store, clock=clock, background=False, owns_store=True)
    yield opened
    opened.close()


def _rows(store: Store) -> list[dict[str, Any]]:
    with store.read() as conn:
        return [dict(row) for row in conn.execute(select(events).order_by(events.c.id)).mappings()]


def _count(store: Store, table: Any = events) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_record_stores_every_field(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    d = canary.gate(POLICY).route("user-7")
    d.record(
        latency_ms=812.5,
        error=False,
        quality=0.75,
        safety_flags=["pii", "toxicity"],
        cost_usd=0.0123,
        input_tokens=1200,
        output_tokens=340,
        model="gpt-x",
        metrics={"tool_calls": 3, "resolved": True},
    )
    assert canary.flush() == 1
    [row] = _rows(store)
    expected_version = seeded[1] if d.arm is Arm.CANDIDATE else seeded[0]
    assert row["decision_id"] == d.decision_id
    assert (row["policy"], row["rollout_id"], row["arm"]) == (POLICY, d.rollout_id, d.arm.value)
    assert row["version_digest"] == expected_version
    assert (row["stage"], row["traffic_bp"], row["scheme"], row["sticky"]) == (
        "canary",
        5000,
        SCHEME_VERSION,
        True,
    )
    assert row["at"] == clock.now()
    assert (row["latency_ms"], row["error"], row["quality"]) == (812.5, False, 0.75)
    assert json.loads(row["safety_flags"]) == ["pii", "toxicity"]
    assert row["flag_count"] == 2
    assert (row["cost_usd"], row["input_tokens"], row["output_tokens"]) == (0.0123, 1200, 340)
    assert row["model"] == "gpt-x"
    assert json.loads(row["metrics"]) == {"resolved": True, "tool_calls": 3}


def test_minimal_record_and_flag_count(store: Store, canary: Canary) -> None:
    gate = canary.gate(POLICY)
    gate.route("a").record()
    gate.route("b").record(safety_flags=3)
    canary.flush()
    first, second = _rows(store)
    assert (first["latency_ms"], first["error"], first["quality"]) == (None, None, None)
    assert (first["safety_flags"], first["flag_count"], first["metrics"]) == ("[]", 0, "{}")
    assert (second["safety_flags"], second["flag_count"]) == ("[]", 3)


def test_with_block_measures_latency_and_records_an_error_and_reraises(
    store: Store, canary: Canary
) -> None:
    gate = canary.gate(POLICY)
    with gate.route("ok") as d_ok:
        d_ok.record(quality=0.5, cost_usd=0.01)
    with pytest.raises(RuntimeError, match="tool crashed"), gate.route("boom") as d_boom:
        raise RuntimeError("tool crashed")
    canary.flush()
    ok, boom = _rows(store)
    assert ok["decision_id"] == d_ok.decision_id
    assert (ok["error"], ok["quality"], ok["cost_usd"]) == (False, 0.5, 0.01)
    assert 0 <= ok["latency_ms"] < 1000
    assert boom["decision_id"] == d_boom.decision_id
    assert boom["error"] is True
    assert 0 <= boom["latency_ms"] < 1000
    assert d_ok.recorded
    assert d_boom.recorded


def test_explicit_latency_inside_the_block_wins(store: Store, canary: Canary) -> None:
    with canary.gate(POLICY).route("u") as d:
        d.record(latency_ms=1234.0, error=True)
    canary.flush()
    [row] = _rows(store)
    assert (row["latency_ms"], row["error"]) == (1234.0, True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"latency_ms": math.nan}, "latency_ms=nan"),
        ({"latency_ms": -1.0}, "latency_ms=-1.0"),
        ({"latency_ms": math.inf}, "latency_ms=inf"),
        ({"latency_ms": 1e300}, "latency_ms=1e.300 is not allowed; it must be a number in"),
        ({"cost_usd": 10**400}, "cost_usd=1000"),
        ({"latency_ms": "12"}, "latency_ms must be a number"),
        ({"cost_usd": -0.01}, "cost_usd"),
        ({"cost_usd": -math.inf}, "cost_usd"),
        ({"input_tokens": -5}, "input_tokens"),
        ({"output_tokens": 10**20}, "output_tokens=100000000000000000000 is not allowed"),
        ({"output_tokens": 1.5}, "output_tokens must be an integer"),
        ({"input_tokens": True}, "input_tokens must be an integer"),
        ({"quality": 1.01}, "quality=1.01"),
        ({"quality": -0.1}, "quality"),
        ({"quality": math.nan}, "quality=nan"),
        ({"error": "timeout"}, "error must be True or False"),
        ({"safety_flags": "pii"}, "safety_flags must be a list"),
        ({"safety_flags": -1}, "safety_flags=-1"),
        ({"safety_flags": ["pii", ""]}, "safety flag ''"),
        ({"model": ""}, "model"),
        ({"metrics": {"score": math.nan}}, "metric 'score'"),
        ({"metrics": {"score": -1e16}}, "metric 'score'=-1e.16 is not allowed"),
        ({"metrics": {"score": 10**400}}, "metric 'score'"),
        ({"metrics": {"score": "high"}}, "metric 'score' must be a number"),
        ({"metrics": {"": 1.0}}, "metric name"),
        ({"metrics": [("a", 1)]}, "metrics must be a mapping"),
    ],
)
def test_invalid_metrics_are_refused_and_nothing_is_buffered(
    sqlite_canary: Canary, fields: dict[str, Any], message: str
) -> None:
    canary = sqlite_canary
    d = canary.gate(POLICY).route("u")
    with pytest.raises(InvalidMetricError, match=message.replace("(", r"\(")):
        d.record(**fields)
    assert canary.stats().buffered == 0
    assert not d.recorded
    d.record(latency_ms=5.0)  # a corrected call is still accepted
    assert canary.stats().buffered == 1


def test_a_decision_is_recorded_once(sqlite_canary: Canary) -> None:
    canary = sqlite_canary
    gate = canary.gate(POLICY)
    d = gate.route("u")
    d.record(latency_ms=1.0)
    with pytest.raises(InvalidMetricError, match="already recorded"):
        d.record(latency_ms=2.0)
    with gate.route("v") as inside:
        inside.record(quality=0.1)
        with pytest.raises(InvalidMetricError, match="already recorded"):
            inside.record(quality=0.2)
    with pytest.raises(InvalidMetricError, match="already recorded"):
        inside.record(quality=0.3)
    with pytest.raises(InvalidMetricError, match="already used"), inside:
        pass
    assert canary.stats().buffered == 2


def test_store_outage_mid_traffic_buffers_counts_drops_and_recovers(
    store: Store, clock: ManualClock, seeded: tuple[str, str]
) -> None:
    canary = Canary(store, clock=clock, background=False, buffer_size=60, batch_size=25)
    gate = canary.gate(POLICY)
    for i in range(50):
        gate.route(f"before-{i}").record(latency_ms=float(i))
    assert canary.flush() == 50
    with store_down(store):
        for i in range(70):  # the agent keeps routing and recording through the outage
            d = gate.route(f"during-{i}")
            assert d.version.number in (1, 2)
            d.record(latency_ms=float(i))
        assert canary.flush() == 0
        assert canary.refresh_now() is False
        stats = canary.stats()
        assert stats.buffered == 60
        assert stats.dropped_full == 10
        assert stats.dropped == 10
        assert stats.flush_errors >= 1
        assert stats.last_error is not None
        status = gate.status()
        assert (status.buffered_events, status.dropped_events, status.stale) == (60, 10, True)
    assert canary.flush() == 60
    stats = canary.stats()
    assert (stats.written, stats.buffered, stats.dropped_full) == (110, 0, 10)
    assert stats.last_error is None
    assert _count(store) == 110
    canary.close()


def test_a_retried_batch_is_not_written_twice(store: Store, canary: Canary) -> None:
    gate = canary.gate(POLICY)
    gate.route("u").record(latency_ms=3.0)
    canary.flush()
    [row] = _rows(store)
    # As if the first commit landed but its acknowledgement was lost: the same row again.
    replay = tuple(value for name, value in row.items() if name != "id")
    canary._buffer.add(replay)
    gate.route("v").record(latency_ms=4.0)
    canary.flush()
    assert _count(store) == 2
    assert canary.stats().last_error is None


def test_a_retried_feedback_batch_is_not_written_twice(store: Store, canary: Canary) -> None:
    d = canary.gate(POLICY).route("u")
    d.record(latency_ms=3.0)
    canary.feedback(d.decision_id, quality=0.7)
    queued = list(canary._buffer._feedback)
    canary.flush()
    # As if the first commit landed but its acknowledgement was lost: the same rows again.
    for row in queued:
        canary._buffer.add_feedback(row)
    canary.flush()
    with store.read() as conn:
        stored = conn.exec_driver_sql("SELECT decision_id, quality FROM feedback").all()
    assert [tuple(r) for r in stored] == [(d.decision_id, 0.7)]
    assert canary.stats().last_error is None


def test_a_row_the_store_refuses_is_dropped_alone_and_counted(store: Store, canary: Canary) -> None:
    gate = canary.gate(POLICY)
    gate.route("a").record(latency_ms=1.0)
    canary.flush()
    good = tuple(v for k, v in _rows(store)[0].items() if k != "id")
    # A row with no policy violates NOT NULL: the store refuses it whatever happens.
    canary._buffer.add(("bad-1", None, *good[2:]))
    gate.route("b").record(latency_ms=2.0)
    canary.flush()
    stats = canary.stats()
    assert (stats.written, stats.rejected, stats.buffered) == (2, 1, 0)
    assert _count(store) == 2


def test_feedback_joins_a_decision_after_a_restart(
    store: Store, clock: ManualClock, seeded: tuple[str, str]
) -> None:
    first = Canary(store, clock=clock, background=False)
    d = first.gate(POLICY).route("user-9")
    d.record(latency_ms=100.0)
    first.close()  # the process ends; close() flushes
    clock.advance(timedelta(hours=2))
    second = Canary(store, clock=clock, background=False)
    second.feedback(d.decision_id, quality=0.25, metrics={"thumbs_up": False})
    with pytest.raises(NotFoundError, match="no decision"):
        second.feedback("0123456789abcdef-1", quality=0.5)
    second.flush()
    with store.read() as conn:
        joined = conn.execute(
            select(
                events.c.arm,
                events.c.latency_ms,
                feedback.c.metric,
                feedback.c.quality,
                feedback.c.metrics,
                feedback.c.at,
            )
            .join(feedback, feedback.c.decision_id == events.c.decision_id)
            .order_by(feedback.c.id)
        ).all()
    # One row per value (the first per decision and metric wins; see _feedback.py).
    assert [tuple(row) for row in joined] == [
        (d.arm.value, 100.0, "quality", 0.25, "{}", clock.now()),
        (d.arm.value, 100.0, "metrics.thumbs_up", None, '{"thumbs_up":false}', clock.now()),
    ]
    second.close()


def test_feedback_for_an_unflushed_decision_of_this_process_is_accepted(
    store: Store, canary: Canary
) -> None:
    d = canary.gate(POLICY).route("u")
    d.record(latency_ms=1.0)
    canary.feedback(d.decision_id, quality=1.0)
    assert canary.stats().feedback_buffered == 1
    canary.flush()
    assert (_count(store), _count(store, feedback)) == (1, 1)


def test_feedback_while_the_store_is_down_is_checked_when_written(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    other = Canary(store, clock=clock, background=False)
    remote = other.gate(POLICY).route("from-another-process")
    remote.record(latency_ms=2.0)
    other.close()
    with store_down(store):
        canary.feedback(remote.decision_id, quality=0.5)  # the lookup fails: buffered
        assert canary.refresh_now() is False
        # Known down now: not even tried, buffered and checked when written.
        canary.feedback("ffffffffffffffff-99", quality=0.5)
        assert canary.flush() == 0
    canary.flush()
    stats = canary.stats()
    assert (stats.feedback_written, stats.feedback_rejected, stats.feedback_buffered) == (1, 1, 0)
    with store.read() as conn:
        assert list(conn.execute(select(feedback.c.decision_id)).scalars()) == [remote.decision_id]


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"quality": 1.5}, InvalidMetricError, "quality=1.5"),
        ({"quality": math.nan}, InvalidMetricError, "quality=nan"),
        ({"metrics": {"x": math.inf}}, InvalidMetricError, "metric 'x'"),
        ({}, InvalidMetricError, "neither"),
    ],
)
def test_invalid_feedback_is_refused(
    sqlite_canary: Canary, fields: dict[str, Any], error: type[Exception], message: str
) -> None:
    canary = sqlite_canary
    d = canary.gate(POLICY).route("u")
    with pytest.raises(error, match=message):
        canary.feedback(d.decision_id, **fields)
    assert canary.stats().feedback_buffered == 0


def test_feedback_needs_a_decision_id(sqlite_canary: Canary) -> None:
    canary = sqlite_canary
    with pytest.raises(NotFoundError, match="not a decision id"):
        canary.feedback("", quality=0.5)
    with pytest.raises(NotFoundError, match="not a decision id"):
        canary.feedback("x" * 41, quality=0.5)


def test_prune_deletes_old_rows_but_keeps_active_rollouts(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    gate = canary.gate(POLICY)
    rollout = gate.status().rollout_id
    assert rollout is not None
    old_in_rollout = gate.route("a")
    old_in_rollout.record(latency_ms=1.0)
    update_rollout(store, rollout, state="rolled_back", traffic_bp=0)
    canary.refresh_now()
    old = gate.route("b")
    old.record(latency_ms=1.0)
    canary.feedback(old.decision_id, quality=0.5)
    canary.flush()
    clock.advance(timedelta(days=31))
    fresh = gate.route("c")
    fresh.record(latency_ms=1.0)
    canary.feedback(fresh.decision_id, quality=0.5)
    canary.flush()
    # A second, still-running rollout whose old events must survive.
    update_rollout(store, rollout, state="aborted")
    stable_id, candidate_id = seeded
    live = start_rollout(
        store, clock, baseline=stable_id, candidate=candidate_id, traffic_bp=10_000
    )
    canary.refresh_now()
    in_live = gate.route("d")
    assert in_live.rollout_id == live
    in_live.record(latency_ms=1.0)
    canary.feedback(in_live.decision_id, quality=0.9)
    canary.flush()
    with store.begin() as conn:  # backdate it: an old event of a rollout still running
        conn.execute(
            events.update()
            .where(events.c.decision_id == in_live.decision_id)
            .values(at=clock.now() - timedelta(days=40))
        )
        conn.execute(
            feedback.update()
            .where(feedback.c.decision_id == in_live.decision_id)
            .values(at=clock.now() - timedelta(days=40))
        )
    result = canary.prune()
    assert (result.events, result.feedback) == (2, 1)
    assert result.cutoff == clock.now() - timedelta(days=30)
    with store.read() as conn:
        left = set(conn.execute(select(events.c.decision_id)).scalars())
        left_feedback = set(conn.execute(select(feedback.c.decision_id)).scalars())
    assert left == {fresh.decision_id, in_live.decision_id}
    assert left_feedback == {fresh.decision_id, in_live.decision_id}


def test_recording_from_many_threads_loses_nothing(store: Store, canary: Canary) -> None:
    gate = canary.gate(POLICY)

    def agent(worker: int) -> None:
        for i in range(2500):
            gate.route(f"{worker}-{i}").record(latency_ms=float(i), quality=0.5)

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        canary.flush()  # a flusher racing the producers
    for thread in threads:
        thread.join()
    canary.flush()
    assert _count(store) == 10_000
    assert canary.stats().written == 10_000


def test_background_flusher_writes_without_being_asked(sqlite_url: str, clock: ManualClock) -> None:
    store = Store.open(sqlite_url)
    seed_policy(store, clock)
    with Canary(store, clock=clock, flush_interval=0.02, owns_store=True) as canary:
        gate = canary.gate(POLICY)
        for i in range(10):
            gate.route(f"u{i}").record(latency_ms=1.0)
        # The flusher thread is what is under test, so wait for it (bounded).
        deadline = time.monotonic() + 5
        while canary.stats().written < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert canary.stats().written == 10


def test_close_writes_what_is_buffered_and_is_idempotent(
    store: Store, clock: ManualClock, seeded: tuple[str, str]
) -> None:
    with Canary(store, clock=clock, background=False) as canary:
        canary.gate(POLICY).route("u").record(latency_ms=1.0)
        assert _count(store) == 0
    assert _count(store) == 1
    canary.close()
    assert _count(store) == 1


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 27, 5, 7, 0, 73152, tzinfo=UTC),
        datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-7))),
    ],
)
def test_fast_sqlite_timestamps_are_the_text_sqlalchemy_writes(at: datetime) -> None:
    dialect = sqlite.dialect()
    expected = events.c.at.type.dialect_impl(dialect).bind_processor(dialect)(at)
    assert sqlite_time(at) == expected


@given(
    at=st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    offset=st.timedeltas(min_value=-timedelta(hours=23, minutes=59),
                         max_value=timedelta(hours=23, minutes=59)),
)  # fmt: skip
def test_any_aware_time_is_stored_as_the_text_sqlalchemy_writes(
    at: datetime, offset: timedelta
) -> None:
    """Any time in any fixed offset (``astimezone`` then the fields) matches SQLAlchemy."""
    aware = at.replace(tzinfo=UTC if not offset else timezone(offset))
    dialect = sqlite.dialect()
    expected = events.c.at.type.dialect_impl(dialect).bind_processor(dialect)(aware)
    assert sqlite_time(aware) == expected


def test_postgres_event_writers_wait_for_a_writer_of_the_previous_protocol(
    pg_url: str, clock: ManualClock
) -> None:
    store = Store.open(pg_url)
    seed_policy(store, clock)
    canary = Canary(store, clock=clock, background=False, owns_store=True)
    canary.gate(POLICY).route("u").record(latency_ms=1.0)
    other = store.engine.connect()
    # A writer of an earlier version is mid-batch: it holds the writers' lock exclusively.
    transaction = other.begin()
    other.execute(text(f"SELECT pg_advisory_xact_lock({EVENT_WRITER_LOCK})"))
    flusher = threading.Thread(target=canary.flush)
    flusher.start()
    flusher.join(timeout=0.3)  # the lock is what is under test: a short bounded wait
    assert flusher.is_alive()
    assert _count(store) == 0
    transaction.commit()
    other.close()
    flusher.join(timeout=10)
    assert not flusher.is_alive()
    assert _count(store) == 1
    canary.close()


_written = itertools.count()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(min_value=0, max_value=260),
    variables=st.sampled_from([None, 999, 60, 20]),
    repeat=st.booleans(),
)
def test_any_batch_is_stored_row_for_row_whatever_the_statements_it_is_split_into(
    store: Store, seeded: tuple[str, str], size: int, variables: int | None, repeat: bool
) -> None:
    """SQLite writes a batch as INSERTs of up to 100 rows (fewer where the build allows fewer
    parameters); every row lands once, in order, with every column, a repeat is skipped."""
    digest = seeded[0]
    batch = next(_written)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        (f"multi-{batch}-{i}", POLICY, None, "stable", digest, None, 0, SCHEME_VERSION, True,
         start + timedelta(microseconds=7 * i), float(i), i % 3 == 0, None, "[]", 0,
         i / 1000 if i % 2 else None, i, None, "m" if i % 5 == 0 else None, "{}")
        for i in range(size)
    ]  # fmt: skip
    link = StoreLink(store)
    limit_set = None
    if variables is not None and store.dialect == "sqlite":

        def limit_set(dbapi: Any, _record: Any) -> None:
            dbapi.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variables)

        event.listen(store.engine, "connect", limit_set)
    try:
        link.write(rows, [], retry=False)
        if repeat:
            link.write(rows, [], retry=True)
    finally:
        if limit_set is not None:
            event.remove(store.engine, "connect", limit_set)
    with store.read() as conn:
        stored = conn.execute(
            select(*[events.c[name] for name in EVENT_COLUMNS])
            .where(events.c.decision_id.like(f"multi-{batch}-%"))
            .order_by(events.c.id)
        ).all()
    assert [tuple(row) for row in stored] == rows


def test_binary_copy_sends_each_column_as_the_type_postgresql_stores(pg_url: str) -> None:
    """COPY (FORMAT BINARY) has no text to parse: a wrong type would refuse every batch."""
    store = Store.open(pg_url)
    try:
        with store.read() as conn:
            stored = dict(
                conn.execute(
                    text(
                        "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
                        "WHERE attrelid = 'events'::regclass AND attnum > 0 AND NOT attisdropped"
                    )
                ).all()
            )
    finally:
        store.close()
    spelled = {"varchar": "character varying", "int4": "integer", "int8": "bigint",
               "bool": "boolean", "float8": "double precision", "text": "text",
               "timestamptz": "timestamp with time zone"}  # fmt: skip
    assert len(PG_COPY_TYPES) == len(EVENT_COLUMNS)
    for column, sent in zip(EVENT_COLUMNS, PG_COPY_TYPES, strict=True):
        assert stored[column] == spelled[sent], column
