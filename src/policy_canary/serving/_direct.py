"""The direct link: a canary that reads routing tables from, and writes events to, the store.

Everything the serving path says to a database is here, so the rest of ``serving/`` imports
no SQLAlchemy: an agent loads this module (and SQLAlchemy) only when it opens a store.

Events go in batches:

- SQLite: one ``executemany`` of ``INSERT .. ON CONFLICT (decision_id) DO NOTHING``;
- PostgreSQL: ``COPY`` (several times faster than any INSERT form on a 2-core box). A batch
  whose commit outcome was unknown and is retried would hit the unique decision id, so the
  buffer writes it again with ``retry=True``, the idempotent INSERT form.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Delete, delete, exc, func, select

from policy_canary.errors import NotFoundError, StoreError, first_line
from policy_canary.resilience import store_trouble
from policy_canary.serving._feedback import insert_feedback
from policy_canary.serving._link import EventRow, FeedbackRow, FeedbackWrite, Listener, PruneResult
from policy_canary.serving._outcomes import AT_INDEX, EVENT_COLUMNS
from policy_canary.serving._routed import RoutedRow
from policy_canary.serving._routing import (
    SERVING_STATES,
    RouteTable,
    SpecCache,
    VersionInfo,
    stage_name,
)
from policy_canary.serving._splitter import BUCKETS, salt_prefix, threshold
from policy_canary.store import Store, claim_floors
from policy_canary.store._visibility import WRITER_LOCK
from policy_canary.store.schema import (
    events,
    feedback,
    policies,
    rollouts,
    routed_counts,
    versions,
)

_COLUMNS = ", ".join(EVENT_COLUMNS)
#: Rows per INSERT on SQLite (fewer where the build allows fewer parameters): each statement
#: is prepared once per connection, and a larger one costs more to prepare than it saves.
SQLITE_ROWS_PER_INSERT = 100


@functools.lru_cache(maxsize=SQLITE_ROWS_PER_INSERT)
def _sqlite_insert(count: int) -> str:
    """INSERT of ``count`` event rows, a repeated decision id skipped."""
    row = f"({', '.join('?' * len(EVENT_COLUMNS))})"
    return (
        f"INSERT INTO events ({_COLUMNS}) VALUES {', '.join([row] * count)} "
        "ON CONFLICT (decision_id) DO NOTHING"
    )


_PG_INSERT = (
    f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join(['%s'] * len(EVENT_COLUMNS))}) "
    "ON CONFLICT (decision_id) DO NOTHING"
)
_PG_COPY = f"COPY events ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"
#: The PostgreSQL type of each of EVENT_COLUMNS, which binary COPY sends values as (a test
#: checks them against the table): PostgreSQL parses no text, and psycopg formats in C.
PG_COPY_TYPES = (
    ("varchar",) * 6
    + ("int4", "int4", "bool", "timestamptz", "float8", "bool", "float8", "text", "int4")
    + ("float8", "int8", "int8", "varchar", "text")
)
#: Rows deleted per transaction by :meth:`StoreLink.prune`.
PRUNE_CHUNK = 10_000
#: Longest pause between two of a prune's transactions (seconds).
MAX_PRUNE_PAUSE = 0.1
#: Advisory lock key ("pcev"): held exclusively by the event writers of earlier versions,
#: shared by every writer and reader now (store/_visibility.py).
EVENT_WRITER_LOCK = WRITER_LOCK


class StoreLink:
    """The serving path's side of a :class:`~policy_canary.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._sqlite = store.dialect == "sqlite"

    @property
    def can_listen(self) -> bool:
        """Whether routing changes are pushed (PostgreSQL through psycopg 3)."""
        return self.store.can_listen

    def listen(self) -> Listener:
        """A connection that waits for routing changes (see :meth:`Store.listen`)."""
        return self.store.listen()

    # -- routing ---------------------------------------------------------------------------

    def read_epoch(self) -> int:
        """The store's routing change counter."""
        with self.store.read() as conn:
            return self.store.read_epoch(conn)

    def load(
        self, names: Iterable[str], *, specs: SpecCache, known_epoch: int | None
    ) -> tuple[int, dict[str, RouteTable]]:
        """The change counter and, if it moved from ``known_epoch``, the tables of ``names``.

        Store trouble is a :class:`StoreError`; an unknown policy a :class:`NotFoundError`.
        """
        try:
            with self.store.read() as conn:
                epoch = self.store.read_epoch(conn)
                if epoch == known_epoch:
                    return epoch, {}
                return epoch, load_tables(conn, names, epoch=epoch, specs=specs)
        except exc.SQLAlchemyError as error:
            raise StoreError(
                f"cannot load routing tables: {first_line(error)}; "
                "is the database migrated (policy-canary's schema)?"
            ) from error

    def decision_known(self, decision_id: str) -> bool | None:
        """Whether the store holds ``decision_id``'s event; None when it cannot say now."""
        try:
            with self.store.read() as conn:
                found = conn.execute(
                    select(events.c.id).where(events.c.decision_id == decision_id)
                ).first()
        except (StoreError, exc.SQLAlchemyError):
            return None
        return found is not None

    # -- events -----------------------------------------------------------------------------

    def write(
        self, rows: Sequence[EventRow], fb_rows: Sequence[FeedbackRow], *, retry: bool
    ) -> FeedbackWrite:
        """Write one batch in one transaction; return what became of its feedback."""
        with self.store.begin() as conn:
            # Monitors read events (and feedback) past an id cursor, and PostgreSQL shows ids
            # in commit order, not in the order it hands them out: announce where this
            # transaction's ids start, so the controller stops short of them until it
            # commits (store/_visibility.py has the argument). Writers do not wait for
            # each other. A no-op on SQLite, whose write transactions are serial.
            claim_floors(conn)
            if rows:
                self._insert_events(conn, rows, fast=not retry)
            return insert_feedback(conn, fb_rows) if fb_rows else FeedbackWrite()

    def _insert_events(self, conn: Connection, rows: Sequence[EventRow], *, fast: bool) -> None:
        if self._sqlite:
            # Many rows per statement: executemany() would release and retake the GIL for
            # each row's step, and under a busy server every retake waits for another thread.
            most = conn.connection.dbapi_connection.getlimit(  # type: ignore[union-attr]
                sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
            )
            per = max(1, min(SQLITE_ROWS_PER_INSERT, most // len(EVENT_COLUMNS)))
            for start in range(0, len(rows), per):
                part = rows[start : start + per]
                values: list[Any] = []
                for row in part:
                    values += row[:AT_INDEX]
                    values.append(sqlite_time(row[AT_INDEX]))
                    values += row[AT_INDEX + 1 :]
                conn.exec_driver_sql(_sqlite_insert(len(part)), tuple(values))
        elif fast:
            raw = conn.connection.dbapi_connection
            with raw.cursor() as cursor, cursor.copy(_PG_COPY) as copy:  # type: ignore[union-attr]
                copy.set_types(PG_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
        else:
            conn.exec_driver_sql(_PG_INSERT, list(rows))

    def write_routed(self, rows: Sequence[RoutedRow]) -> None:
        """Upsert routed/recorded counts; each count keeps the larger of stored and new."""
        with self.store.begin() as conn:
            write_routed(conn, rows, sqlite=self._sqlite)

    @staticmethod
    def is_transient(error: BaseException) -> bool:
        """True for "cannot reach / cannot lock the database": retry later, keep the batch."""
        return store_trouble(error)

    @staticmethod
    def is_duplicate(error: BaseException) -> bool:
        """True when a batch hit rows that are already stored (its earlier commit landed)."""
        return isinstance(error, exc.IntegrityError) or type(error).__name__ in {
            "IntegrityError",
            "UniqueViolation",
        }

    # -- housekeeping ---------------------------------------------------------------------

    def prune(self, cutoff: datetime, *, chunk: int = PRUNE_CHUNK) -> PruneResult:
        """Delete events and feedback older than ``cutoff``, keeping those of active rollouts.

        In transactions of at most ``chunk`` rows each, pausing between them as long as the
        last one took: a prune of millions of rows never holds SQLite's write lock (or this
        process's writers) for longer than one chunk, so ingest and ticks go on meanwhile.
        """
        active = select(rollouts.c.id).where(rollouts.c.state.in_(SERVING_STATES))
        with self.store.read() as conn:
            names = list(conn.execute(select(policies.c.name)).scalars())
        deleted_events = 0
        for name in names:
            # Per policy, so the (policy, at) index bounds each delete.
            old = (
                select(events.c.id)
                .where(
                    events.c.policy == name,
                    events.c.at < cutoff,
                    (events.c.rollout_id.is_(None)) | (events.c.rollout_id.not_in(active)),
                )
                .limit(chunk)
            )
            deleted_events += self._in_chunks(delete(events).where(events.c.id.in_(old)), chunk)
        deleted_routed = self._in_chunks(
            delete(routed_counts).where(
                routed_counts.c.window_end < cutoff, routed_counts.c.rollout_id.not_in(active)
            ),
            chunk=None,
        )
        kept = select(events.c.decision_id).where(events.c.rollout_id.in_(active))
        old_feedback = (
            select(feedback.c.id)
            .where(feedback.c.at < cutoff, feedback.c.decision_id.not_in(kept))
            .limit(chunk)
        )
        deleted_feedback = self._in_chunks(
            delete(feedback).where(feedback.c.id.in_(old_feedback)), chunk
        )
        return PruneResult(
            cutoff=cutoff, events=deleted_events, feedback=deleted_feedback, routed=deleted_routed
        )

    def _in_chunks(self, statement: Delete, chunk: int | None) -> int:
        """Run ``statement`` (which deletes at most ``chunk`` rows) until it deletes fewer."""
        total = 0
        while True:
            began = time.monotonic()
            with self.store.begin() as conn:
                deleted = conn.execute(statement).rowcount
            total += deleted
            if chunk is None or deleted < chunk:
                return total
            # Ingest and ticks keep at least half of the store's write time meanwhile.
            time.sleep(min(time.monotonic() - began, MAX_PRUNE_PAUSE))

    def after_fork(self) -> None:
        """Forget the parent's pooled connections without touching them."""
        self.store.engine.dispose(close=False)

    def close(self) -> None:
        """Release the store's connections."""
        self.store.close()


#: The counts of a ``routed_counts`` row, in RoutedRow order after the key.
_COUNTS = ("routed_stable", "routed_candidate", "recorded_stable", "recorded_candidate")


def write_routed(conn: Connection, rows: Sequence[RoutedRow], *, sqlite: bool) -> None:
    """Upsert routed counts in ``conn``'s transaction (the SDK's flush, the server's API)."""
    if not rows:
        return
    if sqlite:
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
    larger = func.max if sqlite else func.greatest  # SQLite's two-argument max() is scalar
    values = [
        {
            "policy": r[0],
            "rollout_id": r[1],
            "source": r[2],
            "window_start": r[3],
            "window_end": r[4],
            "traffic_bp": r[5],
            "stage": r[6],
            **dict(zip(_COUNTS, r[7:], strict=True)),
        }
        for r in rows
    ]
    statement = insert(routed_counts).values(values)
    excluded = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=["rollout_id", "source", "window_start", "traffic_bp"],
        set_={
            name: larger(routed_counts.c[name], excluded[name]) for name in ("window_end", *_COUNTS)
        },
    )
    conn.execute(statement)


def load_tables(
    conn: Connection, names: Iterable[str], *, epoch: int, specs: SpecCache
) -> dict[str, RouteTable]:
    """Read the routing tables of ``names`` in one transaction.

    Raises :class:`NotFoundError` for a policy that does not exist or has no stable version.
    """
    wanted = sorted(set(names))
    if not wanted:
        return {}
    stable_of = _stable_digests(conn, wanted)
    active = _serving_rollouts(conn, wanted)
    keys = {(name, stable_of[name]) for name in wanted}
    keys |= {(name, row.candidate_digest) for name, row in active.items()}
    found = _version_rows(conn, wanted, {digest for _, digest in keys})

    def info(policy: str, digest: str) -> VersionInfo:
        row = found.get((policy, digest))
        if row is None:  # the schema's foreign keys make this a corrupted store
            raise NotFoundError(f"policy {policy!r} points at unknown version {digest[:12]}")
        return VersionInfo(row.digest, row.number, specs.get(row.digest, row.spec))

    tables: dict[str, RouteTable] = {}
    for name in wanted:
        stable = info(name, stable_of[name])
        ro = active.get(name)
        if ro is None:
            tables[name] = RouteTable(name, stable, None, None, None, 0, None, None, epoch)
            continue
        share = max(0, min(int(ro.traffic_bp), BUCKETS))
        tables[name] = RouteTable(
            policy=name,
            stable=stable,
            candidate=info(name, ro.candidate_digest),
            rollout_id=ro.id,
            rollout_state=ro.state,
            share_bp=share,
            salt=ro.salt,
            stage=stage_name(ro.plan, ro.stage_index),
            epoch=epoch,
            hasher=hashlib.sha256(salt_prefix(ro.salt)),
            bound=threshold(share),
        )
    return tables


def _stable_digests(conn: Connection, wanted: list[str]) -> dict[str, str]:
    """Each wanted policy's stable digest; NotFoundError if one is unknown or has none."""
    stable_of = dict(
        conn.execute(
            select(policies.c.name, policies.c.stable_digest).where(policies.c.name.in_(wanted))
        ).all()
    )
    missing = [name for name in wanted if name not in stable_of]
    if missing:
        raise NotFoundError(
            f"no policy {missing[0]!r} in the store; register a version of it first, "
            "or check the name and the database URL"
        )
    unstable = [name for name in wanted if stable_of[name] is None]
    if unstable:
        raise NotFoundError(
            f"policy {unstable[0]!r} has no stable version yet; register or promote one"
        )
    return stable_of


def _serving_rollouts(conn: Connection, wanted: list[str]) -> dict[str, Any]:
    """The rollout of each wanted policy whose candidate receives traffic, if any."""
    query = select(
        rollouts.c.id,
        rollouts.c.policy,
        rollouts.c.candidate_digest,
        rollouts.c.state,
        rollouts.c.traffic_bp,
        rollouts.c.salt,
        rollouts.c.plan,
        rollouts.c.stage_index,
    ).where(rollouts.c.policy.in_(wanted), rollouts.c.state.in_(SERVING_STATES))
    return {row.policy: row for row in conn.execute(query)}


def _version_rows(
    conn: Connection, wanted: list[str], digests: set[str]
) -> dict[tuple[str, str], Any]:
    """The (policy, digest) -> version rows a set of tables needs, in one query."""
    query = select(versions.c.policy, versions.c.digest, versions.c.number, versions.c.spec).where(
        versions.c.policy.in_(wanted), versions.c.digest.in_(digests)
    )
    return {(row.policy, row.digest): row for row in conn.execute(query)}


#: SQLAlchemy's ``DATETIME`` text on SQLite (its ``storage_format``), for a time in UTC.
_SQLITE_TIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


def sqlite_time(at: datetime) -> str:
    """The text SQLAlchemy stores on SQLite for the aware time ``at`` (a test pins equality).

    Bypassing SQLAlchemy's per-row machinery is what makes the SQLite path fast. Formatting
    the fields with ``%`` takes half the time of ``replace(tzinfo=None).isoformat(...)``
    (about 1 of 2 microseconds per event on the 2-core box, 4% of a batch's CPU).
    """
    if at.tzinfo is not UTC:  # most times are UTC already (the clock's, an ISO "+00:00")
        at = at.astimezone(UTC)
    return _SQLITE_TIME % (at.year, at.month, at.day, at.hour, at.minute, at.second, at.microsecond)
