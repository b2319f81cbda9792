"""What a chunk reads in one statement: every rollout's new events past its own cursor, once."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from policy_canary.controller._inputs import ID, ROLLOUT, new_events
from policy_canary.store import Store
from policy_canary.store.schema import events

_serial = itertools.count()


def _insert(store: Store, owners: list[str | None]) -> list[tuple[int, str | None]]:
    """One event per owner (a rollout id, or None for plain traffic); their (id, owner)."""
    tag = f"in{next(_serial)}-"
    rows = [
        {"decision_id": f"{tag}{i}", "policy": "support-agent", "rollout_id": owner,
         "arm": "stable", "version_digest": "0" * 64, "stage": "canary", "traffic_bp": 100,
         "scheme": 1, "sticky": True, "at": datetime(2026, 1, 1, tzinfo=UTC),
         "safety_flags": "[]", "flag_count": 0, "metrics": "{}"}
        for i, owner in enumerate(owners)
    ]  # fmt: skip
    with store.begin() as conn:
        if rows:
            conn.execute(events.insert(), rows)
        found = conn.execute(
            select(events.c.id, events.c.rollout_id)
            .where(events.c.decision_id.like(f"{tag}%"))
            .order_by(events.c.id)
        ).all()
        last = conn.execute(select(events.c.id).order_by(events.c.id.desc()).limit(1)).scalar()
    return [(int(r.id), r.rollout_id) for r in found] or [(int(last or 0), None)]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_pages_hold_each_rollouts_events_past_its_own_cursor_once_in_id_order(
    store: Store, data: st.DataObject
) -> None:
    # Given rollouts whose events interleave with each other's and with plain traffic
    names = [f"ro_{next(_serial)}" for _ in range(data.draw(st.integers(1, 4), label="rollouts"))]
    owners = data.draw(st.lists(st.sampled_from([*names, None]), max_size=30), label="owners")
    rows = _insert(store, owners)
    first = rows[0][0] - 1
    span = len(owners)
    # and each rollout's own cursor, anywhere in the range, a horizon and a page size
    cursors = {n: first + data.draw(st.integers(0, span), label=n) for n in names}
    # (drawn as offsets: the ids themselves depend on what earlier examples stored)
    reach = data.draw(st.none() | st.integers(0, span), label="horizon")
    horizon = None if reach is None else first + reach
    batch = data.draw(st.integers(1, 8), label="batch")
    # When the chunk reads its new events a page at a time
    with store.read() as conn:
        pages = list(new_events(conn, cursors, horizon=horizon, batch=batch))
    # Then each rollout gets exactly its rows past its cursor and within the horizon, once
    # each and in id order across pages, and no page holds more than the batch
    got: dict[str, list[int]] = {}
    for page in pages:
        assert 0 < sum(len(rows_of) for rows_of in page.values()) <= batch
        for rollout_id, rows_of in page.items():
            assert all(r[ROLLOUT] == rollout_id for r in rows_of)
            got.setdefault(rollout_id, []).extend(int(r[ID]) for r in rows_of)
    expected = {
        n: [i for i, owner in rows if owner == n and i > cursors[n]
            and (horizon is None or i <= horizon)]
        for n in names
    }  # fmt: skip
    assert {n: got.get(n, []) for n in names} == expected
    assert set(got) <= set(names)


def test_a_failing_read_of_new_events_is_sqlalchemys_error_naming_the_statement(
    store: Store,
) -> None:
    # SQLite reads each rollout's events on the driver's own cursor; PostgreSQL through
    # SQLAlchemy. Either way a failure is SQLAlchemy's error, statement attached, and the
    # transaction it failed in is still the caller's to roll back.
    with store.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE events RENAME COLUMN safety_flags TO flags_gone")
        with pytest.raises(DBAPIError) as failed:
            list(new_events(conn, {"ro_a": 0}, horizon=None, batch=10))
        assert "safety_flags" in str(failed.value)
        assert "SELECT" in str(failed.value.statement)
        conn.rollback()
    _insert(store, ["ro_a"])  # the column is back: the rename was rolled back
