"""What a chunk of rollouts folds in one tick, read for the whole chunk at once.

The controller ticks its rollouts in chunks (``_loop.py``); each query here serves every
rollout of a chunk, so a tick's statements grow with its chunks, not its rollouts. Each
rollout reads past its own cursors, exactly what a query of its own would return, and never
past the tick's horizon (``store/_visibility.py``). Events and feedback come a page of at
most ``batch`` rows at a time, so a chunk's memory stays bounded however far it is behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    String,
    and_,
    bindparam,
    column,
    or_,
    select,
    true,
    values,
)
from sqlalchemy.exc import DBAPIError

from policy_canary.controller._monitoring import EVENT_COLUMNS, feedback_from_row
from policy_canary.monitoring import MonitorEvent, RoutedWindow
from policy_canary.serving._feedback import first_observations
from policy_canary.store.schema import events, feedback, routed_counts

#: What a rollout folds from one page of feedback: ``(stage, event)`` pairs in store order.
Folds = dict[str, list[tuple[str | None, MonitorEvent]]]


#: Where a new event's row (:func:`new_events`) keeps its id, rollout and stage; the columns
#: of ``EVENT_COLUMNS`` follow, ``at`` as the driver returns it (``batch_from_rows`` reads it).
ID, ROLLOUT, STAGE = 0, 1, 2


def new_events(
    conn: Connection, cursors: Mapping[str, int], *, horizon: int | None, batch: int
) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    """Pages of at most ``batch`` new events: each rollout's rows past its cursor, in id order.

    ``cursors`` maps each rollout to the last event id it folded; every row comes once, and a
    rollout's rows come in id order across pages. A row is a tuple: ``ID``, ``ROLLOUT``,
    ``STAGE``, then the columns of a MonitorEvent (``batch_from_rows``).
    """
    if not cursors:
        return
    bound = [] if horizon is None else [events.c.id <= horizon]
    if conn.dialect.name != "postgresql":
        yield from _own_pages(conn, cursors, bound, batch)
        return
    after = min(cursors.values())
    while True:
        rows = _driver_rows(conn, _lateral_page(cursors, after, bound, batch))
        if not rows:
            return
        page: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            page.setdefault(row[ROLLOUT], []).append(row)
        yield page
        if len(rows) < batch:
            return
        after = int(rows[-1][ID])


def _own_pages(
    conn: Connection,
    cursors: Mapping[str, int],
    bound: Sequence[ColumnElement[bool]],
    batch: int,
) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    """SQLite: each rollout's next rows by a statement of its own, ``batch // rollouts`` each
    (at least one), as many rollouts per page as fit in ``batch`` rows.

    One statement of ``(rollout_id, id)`` terms for the whole chunk is planned as a range per
    term, but its rows must then be sorted by id: 5.7 us a row, against 2.6 for a range scan
    per rollout on the ``(rollout_id, id)`` index, already in id order. The statements go to
    the driver's cursor itself: through ``exec_driver_sql`` each paid ~0.4 ms of SQLAlchemy's
    result set-up, 0.4 s of a tick over 1,000 rollouts, more than their rows took. A driver
    error is raised as SQLAlchemy's, as any other statement's would be.
    """
    c = events.c
    per = max(1, batch // len(cursors))
    query = (
        select(c.id, c.rollout_id, c.stage, *EVENT_COLUMNS)
        .where(c.rollout_id == bindparam("rid"), c.id > bindparam("through"), *bound)
        .order_by(c.id)
        .limit(per)
    )
    compiled = query.compile(dialect=conn.dialect)
    fixed = compiled.construct_params({"rid": "", "through": 0})
    order = compiled.positiontup or ()
    behind = dict(cursors)  # the rollouts that may have more rows, and how far each has read
    while behind:
        page: dict[str, list[tuple[Any, ...]]] = {}
        room = batch
        for rid, through in list(behind.items()):
            if room < per:  # the page is full: the others come on the next
                break
            given = {**fixed, "rid": rid, "through": through}
            rows = _fetch(conn, compiled.string, tuple(given[k] for k in order))
            if rows:
                page[rid] = rows
                room -= len(rows)
            if len(rows) < per:
                del behind[rid]
            else:
                behind[rid] = int(rows[-1][ID])
        if page:
            yield page


def _fetch(conn: Connection, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """``statement``'s rows from a cursor of the driver's own, its errors raised as
    SQLAlchemy's (``sqlalchemy.exc.OperationalError`` and the like, statement attached)."""
    dbapi = conn.dialect.dbapi
    assert dbapi is not None, "a connected dialect has its driver module"
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(statement, params)
        return list(cursor.fetchall())
    except dbapi.Error as exc:
        raise DBAPIError.instance(statement, params, exc, dbapi.Error) from exc
    finally:
        cursor.close()


def _driver_rows(conn: Connection, query: Select[Any]) -> list[tuple[Any, ...]]:
    """``query``'s rows as the database driver returns them, without SQLAlchemy's processing.

    A tick reads about a hundred thousand event rows: a Row each, with its time parsed by the
    column type, took 6.5 us a row on SQLite against the driver's 3.9 (9.5 against 5.5 on
    PostgreSQL). The statement is compiled once per page.
    """
    compiled = query.compile(dialect=conn.dialect)
    params = compiled.construct_params()
    order = compiled.positiontup
    result = conn.exec_driver_sql(
        compiled.string, tuple(params[k] for k in order) if order else params
    )
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


def _lateral_page(
    cursors: Mapping[str, int],
    after: int,
    bound: Sequence[ColumnElement[bool]],
    batch: int,
) -> Select[Any]:
    """PostgreSQL: the next ``batch`` new events of the rollouts in ``cursors``, past ``after``.

    Each rollout's rows are a LATERAL scan of its ``(rollout_id, id)`` range past its own
    cursor (a quiet rollout far behind does not make the others read their old events again),
    at most ``batch`` rows each: given one ``WHERE`` of ``(rollout_id, id)`` terms instead, its
    planner may walk the primary key from the lowest cursor and test every term on each row
    (130 s for a chunk's first tick after 10M other events arrived).
    """
    c = events.c
    columns = (c.id, c.rollout_id, c.stage, *EVENT_COLUMNS)
    wanted = values(
        column("rollout_id", String), column("through", BigInteger), name="wanted"
    ).data(list(cursors.items()))
    mine = (
        select(*columns)
        .where(c.rollout_id == wanted.c.rollout_id, c.id > wanted.c.through, c.id > after, *bound)
        .order_by(c.id)
        .limit(batch)
        .lateral("mine")
    )
    return select(mine).select_from(wanted).join(mine, true()).order_by(mine.c.id).limit(batch)


def new_feedback(
    conn: Connection, cursors: Mapping[str, int], *, horizon: int | None, batch: int
) -> Iterator[tuple[Folds, int]]:
    """Pages of new feedback: what each rollout folds from the page, and the page's last id.

    ``cursors`` maps each rollout to the last feedback id it folded. Feedback rows name only
    their decision, so a page is every new row of the store; it is read once for the chunk
    and each row goes to the rollout whose event it follows (if that rollout is here).
    """
    if not cursors:
        return
    f = feedback.c
    bound = [] if horizon is None else [f.id <= horizon]
    after = min(cursors.values())
    while True:
        # Two steps, not one join: joined on decision_id, SQLite walks every event of the
        # rollouts on each tick (O(history)); the feedback primary key keeps this O(new).
        fresh = conn.execute(
            select(f.id, f.decision_id, f.at, f.quality, f.metrics)
            .where(f.id > after, *bound)
            .order_by(f.id)
            .limit(batch)
        ).all()
        if not fresh:
            return
        yield _attribute(conn, fresh, cursors, after), int(fresh[-1].id)
        if len(fresh) < batch:
            return
        after = int(fresh[-1].id)


def _attribute(
    conn: Connection, fresh: Sequence[Any], cursors: Mapping[str, int], page_after: int
) -> Folds:
    """What each rollout folds from ``fresh``: the first value per decision and metric.

    A decision keeps one value per metric, the first: its event's own, then feedback in
    store order (``serving/_feedback.py``), so feedback folded by earlier ticks (or earlier
    pages) is read again here. ``page_after`` is where this page starts.
    """
    c = events.c
    decisions = {
        r.decision_id: r
        for r in conn.execute(
            select(
                c.decision_id, c.rollout_id, c.arm, c.traffic_bp, c.stage, c.quality, c.metrics
            ).where(c.rollout_id.in_(cursors), c.decision_id.in_({f.decision_id for f in fresh}))
        )
    }
    if not decisions:
        return {}
    # Each rollout has folded up to its own cursor, or to this page's start when later.
    folded = {rid: max(through, page_after) for rid, through in cursors.items()}
    earlier: dict[str, list[tuple[str, float | None, str | None]]] = {}
    for e in conn.execute(
        select(feedback.c.id, feedback.c.decision_id, feedback.c.quality, feedback.c.metrics)
        .where(
            feedback.c.decision_id.in_(set(decisions)),
            feedback.c.id <= max(folded[d.rollout_id] for d in decisions.values()),
        )
        .order_by(feedback.c.id)
    ):
        rid = decisions[e.decision_id].rollout_id
        if e.id <= folded[rid]:
            earlier.setdefault(rid, []).append((e.decision_id, e.quality, e.metrics))
    mine: dict[str, list[Any]] = {}
    for row in fresh:
        decision = decisions.get(row.decision_id)
        if decision is not None and row.id > cursors[decision.rollout_id]:
            mine.setdefault(decision.rollout_id, []).append(row)
    folds: Folds = {}
    for rid, rows in mine.items():
        held = {d: (r.quality, r.metrics) for d, r in decisions.items() if r.rollout_id == rid}
        values = first_observations(
            held, earlier.get(rid, []), [(r.decision_id, r.quality, r.metrics) for r in rows]
        )
        batch = folds[rid] = []
        for row, added in zip(rows, values, strict=True):
            if added is not None:  # None: nothing new for its decision (counted once)
                decision = decisions[row.decision_id]
                event = {
                    "at": row.at,
                    "quality": added[0],
                    "metrics": json.dumps(added[1]),
                    "arm": decision.arm,
                    "traffic_bp": decision.traffic_bp,
                }
                batch.append((decision.stage, feedback_from_row(event)))
    return folds


def routed_windows(
    conn: Connection, after: Mapping[str, datetime | None], *, until: datetime
) -> dict[str, list[RoutedWindow]]:
    """Each rollout's routing windows that ended in (its ``after``, ``until``], one per SDK
    process (``_monitoring.routed_windows`` for the whole chunk)."""
    if not after:
        return {}
    c = routed_counts.c
    own = or_(
        *(
            c.rollout_id == rid
            if since is None
            else and_(c.rollout_id == rid, c.window_end > since)
            for rid, since in after.items()
        )
    )
    found: dict[str, list[RoutedWindow]] = {}
    for row in conn.execute(
        select(
            c.rollout_id, c.routed_stable, c.routed_candidate, c.recorded_stable,
            c.recorded_candidate,
        ).where(own, c.window_end <= until)
    ):  # fmt: skip
        found.setdefault(row[0], []).append(RoutedWindow(*(int(x) for x in row[1:])))
    return found
