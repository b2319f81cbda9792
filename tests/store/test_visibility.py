"""Concurrent writers on PostgreSQL: a reader past an id cursor sees every row exactly once.

Writers announce where their ids start (``claim_floors``) instead of taking turns; the
reader reads only up to ``visible_through`` (store/_visibility.py has the argument). These
tests drive several writer connections through interleavings chosen by hypothesis, step by
step on one thread, and run real flushers on threads against a reading loop.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, func, insert, select, text
from tests._serving import POLICY, seed_policy

from policy_canary.serving import Canary
from policy_canary.serving._direct import EVENT_WRITER_LOCK
from policy_canary.store import Horizon, Store, claim_floors, visible_through
from policy_canary.store._visibility import horizon
from policy_canary.store.schema import events, feedback
from policy_canary.testing import ManualClock

_AT = datetime(2026, 1, 1, tzinfo=UTC)


def _event(conn: Connection) -> int:
    """Insert one event in ``conn``'s transaction; return its id."""
    return int(
        conn.execute(
            insert(events)
            .values(
                decision_id=uuid.uuid4().hex,
                policy=POLICY,
                arm="stable",
                version_digest="0" * 64,
                traffic_bp=0,
                scheme=1,
                sticky=True,
                at=_AT,
                safety_flags="[]",
                flag_count=0,
                metrics="{}",
            )
            .returning(events.c.id)
        ).scalar_one()
    )


def _feedback(conn: Connection) -> int:
    decision = uuid.uuid4().hex
    return int(
        conn.execute(
            insert(feedback)
            .values(decision_id=decision, at=_AT, quality=0.5, metrics="{}", key=decision)
            .returning(feedback.c.id)
        ).scalar_one()
    )


def _horizon(store: Store) -> Horizon:
    with store.read() as conn:
        return visible_through(conn)


@dataclass
class _Reader:
    """Reads both tables past a cursor up to the horizon, as the controller does."""

    store: Store
    events_through: int = 0
    feedback_through: int = 0
    seen_events: list[int] = field(default_factory=list)
    seen_feedback: list[int] = field(default_factory=list)

    def start_at_horizon(self) -> None:
        bound = _horizon(self.store)
        assert bound.events is not None
        assert bound.feedback is not None
        self.events_through, self.feedback_through = bound.events, bound.feedback

    def read(self) -> Horizon:
        bound = _horizon(self.store)
        assert bound.events is not None
        assert bound.feedback is not None
        with self.store.read() as conn:
            ev = conn.execute(
                select(events.c.id)
                .where(events.c.id > self.events_through, events.c.id <= bound.events)
                .order_by(events.c.id)
            ).scalars()
            fb = conn.execute(
                select(feedback.c.id)
                .where(feedback.c.id > self.feedback_through, feedback.c.id <= bound.feedback)
                .order_by(feedback.c.id)
            ).scalars()
            new_events, new_feedback = [int(i) for i in ev], [int(i) for i in fb]
        self.seen_events += new_events
        self.seen_feedback += new_feedback
        # The cursor moves to the last row read, as the controller's does.
        if new_events:
            self.events_through = new_events[-1]
        if new_feedback:
            self.feedback_through = new_feedback[-1]
        return bound


def test_floors_are_read_back_exactly_near_the_top() -> None:
    assert horizon(100, []) == 100
    assert horizon(100, [90, 95]) == 89
    # A writer that read the sequence after the reader: its floor is above the top.
    assert horizon(100, [105]) == 100
    # 64-bit ids: the lock carries the low 32 bits of the floor only.
    top = (7 << 32) + 10
    assert horizon(top, [(top - 20) % (1 << 32)]) == top - 21
    assert horizon(top, [(top + 3) % (1 << 32)]) == top


@given(
    top=st.integers(min_value=0, max_value=1 << 62),
    offsets=st.lists(st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1), max_size=5),
)
def test_horizon_is_below_every_floor_within_reach(top: int, offsets: list[int]) -> None:
    floors = [max(1, top + o) for o in offsets]
    through = horizon(top, [f % (1 << 32) for f in floors])
    assert through == min([top, *(f - 1 for f in floors)])


def test_reader_stops_short_of_a_writer_in_flight(pg_url: str) -> None:
    store = Store.open(pg_url)
    reader = _Reader(store)
    reader.start_at_horizon()
    slow, fast = store.engine.connect(), store.engine.connect()
    try:
        slow_tx = slow.begin()
        claim_floors(slow)
        low = _event(slow)
        with fast.begin():  # a second writer commits a higher id while the first is open
            claim_floors(fast)
            high = _event(fast)
        assert high > low
        with store.read() as conn:  # a reader without the horizon would now skip ``low``
            naive = conn.execute(select(func.max(events.c.id))).scalar_one()
        assert naive == high
        bound = reader.read()
        assert bound.events == low - 1
        assert reader.seen_events == []
        slow_tx.commit()
        reader.read()
        assert reader.seen_events == [low, high]
    finally:
        slow.close()
        fast.close()
        store.close()


def test_writers_do_not_wait_for_each_other_but_for_an_old_style_writer(
    pg_url: str, clock: ManualClock
) -> None:
    store = Store.open(pg_url)
    seed_policy(store, clock)
    canary = Canary(store, clock=clock, background=False, owns_store=True)
    other = store.engine.connect()
    transaction = other.begin()
    claim_floors(other)
    _event(other)  # a writer of this version is mid-batch
    canary.gate(POLICY).route("u").record(latency_ms=1.0)
    assert canary.flush() == 1  # not held up by it
    # A writer of the previous protocol holds the lock exclusively: writers wait for it.
    old = store.engine.connect()
    old_tx = old.begin()
    transaction.commit()  # (it could take the lock only once the new writer was done)
    old.execute(text(f"SELECT pg_advisory_xact_lock({EVENT_WRITER_LOCK})"))
    canary.gate(POLICY).route("v").record(latency_ms=1.0)
    flusher = threading.Thread(target=canary.flush)
    flusher.start()
    flusher.join(timeout=0.3)  # the lock is what is under test: a short bounded wait
    assert flusher.is_alive()
    old_tx.commit()
    flusher.join(timeout=10)
    assert not flusher.is_alive()
    assert canary.stats().written == 2
    other.close()
    old.close()
    canary.close()


_WRITERS = 3
#: One step of a schedule: (writer, action) or the reader reading.
_step = st.one_of(
    st.tuples(
        st.integers(min_value=0, max_value=_WRITERS - 1),
        st.sampled_from(["begin", "event", "feedback", "commit", "rollback"]),
    ),
    st.just((-1, "read")),
)


def test_any_interleaving_of_writers_is_read_exactly_once(pg_url: str) -> None:
    store = Store.open(pg_url)
    conns = [store.engine.connect() for _ in range(_WRITERS)]
    try:
        _interleavings(store, conns)
    finally:
        for conn in conns:
            conn.close()
        store.close()


def _interleavings(store: Store, conns: list[Connection]) -> None:
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(schedule=st.lists(_step, min_size=1, max_size=40))
    def run(schedule: list[tuple[int, str]]) -> None:
        reader = _Reader(store)
        reader.start_at_horizon()
        open_tx: dict[int, Any] = {}
        pending: dict[int, tuple[list[int], list[int]]] = {}  # writer -> uncommitted ids
        committed: tuple[list[int], list[int]] = ([], [])

        def finish(writer: int, *, commit: bool) -> None:
            tx = open_tx.pop(writer)
            ids = pending.pop(writer)
            if commit:
                tx.commit()
                committed[0].extend(ids[0])
                committed[1].extend(ids[1])
            else:
                tx.rollback()

        try:
            for writer, action in schedule:
                if action == "read":
                    bound = reader.read()
                    # Never at or past an id that is still in flight.
                    assert all(i > (bound.events or 0) for ev, _ in pending.values() for i in ev)
                    assert all(i > (bound.feedback or 0) for _, fb in pending.values() for i in fb)
                elif action == "begin" and writer not in open_tx:
                    open_tx[writer] = conns[writer].begin()
                    claim_floors(conns[writer])
                    pending[writer] = ([], [])
                elif action in ("event", "feedback") and writer in open_tx:
                    table = 0 if action == "event" else 1
                    insert_one = _event if action == "event" else _feedback
                    pending[writer][table].append(insert_one(conns[writer]))
                elif action in ("commit", "rollback") and writer in open_tx:
                    finish(writer, commit=action == "commit")
            for writer in list(open_tx):
                finish(writer, commit=True)
            reader.read()
            assert sorted(reader.seen_events) == sorted(committed[0])
            assert len(set(reader.seen_events)) == len(reader.seen_events)
            assert sorted(reader.seen_feedback) == sorted(committed[1])
            assert len(set(reader.seen_feedback)) == len(reader.seen_feedback)
        finally:
            for writer in list(open_tx):
                finish(writer, commit=False)

    run()


def test_flushers_on_threads_and_a_reading_loop_see_every_event_once(
    pg_url: str, clock: ManualClock
) -> None:
    store = Store.open(pg_url)
    seed_policy(store, clock)
    reader = _Reader(store)
    reader.start_at_horizon()
    per_writer, batches = 60, 10
    done = threading.Event()
    errors: list[BaseException] = []

    def write(n: int) -> None:
        canary = Canary(Store.open(pg_url), clock=clock, background=False, owns_store=True)
        try:
            gate = canary.gate(POLICY)
            for b in range(batches):
                for i in range(per_writer):
                    gate.route(f"w{n}-{b}-{i}").record(latency_ms=1.0)
                canary.flush()
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            canary.close()

    def read() -> None:
        while not done.is_set():
            reader.read()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    reading = threading.Thread(target=read)
    reading.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done.set()
    reading.join(timeout=30)
    assert errors == []
    reader.read()
    with store.read() as conn:
        stored = [int(i) for i in conn.execute(select(events.c.id)).scalars()]
    assert len(stored) == 4 * batches * per_writer
    assert sorted(reader.seen_events) == sorted(stored)
    store.close()
