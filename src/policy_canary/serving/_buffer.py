"""The event buffer and its flusher: from ``record()`` to committed rows, in batches.

``record()`` only appends a ready-made row tuple to a bounded deque (``deque.append`` is
atomic, so producers on many threads need no lock). One flusher at a time drains it in
batches:

- SQLite: one ``executemany`` of ``INSERT .. ON CONFLICT (decision_id) DO NOTHING``;
- PostgreSQL: ``COPY`` (several times faster than any INSERT form on a 2-core box). A batch
  whose commit outcome was unknown and is retried would hit the unique decision id, so on an
  integrity error the batch is written again with the idempotent INSERT form.

A batch that fails to commit stays *in flight* and is retried first, so an acknowledged event
is never lost while the store is down (design invariant 8); new events keep queueing until the
buffer is full, and every event dropped because it was full is counted. Rows the store refuses
on their own (it should not happen: values are validated at the call) are dropped one by one
and counted, so one bad row cannot wedge the flusher.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, exc, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from policy_canary.errors import CanaryError, InputError, StoreUnavailableError
from policy_canary.serving._outcomes import AT_INDEX, EVENT_COLUMNS
from policy_canary.store import Store
from policy_canary.store.schema import events, feedback

EventRow = tuple[Any, ...]
#: (decision_id, at, quality, metrics JSON, verified): ``verified`` is False when the
#: decision could not be looked up at the call (store down) and must be checked at flush.
FeedbackRow = tuple[str, datetime, float | None, str, bool, str]

_COLUMNS = ", ".join(EVENT_COLUMNS)
_SQLITE_INSERT = (
    f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))}) "
    "ON CONFLICT (decision_id) DO NOTHING"
)
_PG_INSERT = (
    f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join(['%s'] * len(EVENT_COLUMNS))}) "
    "ON CONFLICT (decision_id) DO NOTHING"
)
_PG_COPY = f"COPY events ({_COLUMNS}) FROM STDIN"
#: Longest wait between flush retries while the store is down.
MAX_RETRY_DELAY = 5.0
#: Advisory lock key ("pcev") serialising event writers on PostgreSQL; see ``_write``.
EVENT_WRITER_LOCK = 0x70_63_65_76


@dataclass(frozen=True, slots=True)
class IngestStats:
    """Counters of the event pipeline since the canary was opened.

    ``dropped`` is everything that was accepted by ``record()``/``feedback()`` and will never
    be stored: events and feedback that found the buffer full, plus rows the store refused.
    """

    written: int
    buffered: int
    dropped_full: int
    rejected: int
    feedback_written: int
    feedback_buffered: int
    feedback_dropped_full: int
    feedback_rejected: int
    flush_errors: int
    last_flush_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    capacity: int

    @property
    def dropped(self) -> int:
        """Every event or feedback row that was accepted but will never be stored."""
        return (
            self.dropped_full + self.rejected + self.feedback_dropped_full + self.feedback_rejected
        )


def _transient(error: BaseException) -> bool:
    """True for "cannot reach / cannot lock the database": retry later, keep the batch."""
    if isinstance(error, StoreUnavailableError | exc.OperationalError | exc.InterfaceError):
        return True
    # Raw driver errors from the COPY/executemany path are not wrapped by SQLAlchemy.
    name = type(error).__name__
    return name in {"OperationalError", "InterfaceError"}


def _integrity(error: BaseException) -> bool:
    return isinstance(error, exc.IntegrityError) or type(error).__name__ in {
        "IntegrityError",
        "UniqueViolation",
    }


class EventBuffer:
    """A bounded buffer of event and feedback rows, and the batched writer that drains it."""

    def __init__(
        self,
        store: Store,
        *,
        now: Callable[[], datetime],
        capacity: int,
        batch_size: int,
        wake: threading.Event,
    ) -> None:
        if capacity < 1 or batch_size < 1:
            raise InputError("buffer_size and batch_size must be at least 1")
        self._store = store
        self._now = now
        self._capacity = capacity
        self._batch_size = batch_size
        self._wake = wake
        self._events: deque[EventRow] = deque()
        self._feedback: deque[FeedbackRow] = deque()
        self._inflight: list[EventRow] = []
        self._inflight_feedback: list[FeedbackRow] = []
        self._flush_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._written = 0
        self._dropped_full = 0
        self._rejected = 0
        self._fb_written = 0
        self._fb_dropped_full = 0
        self._fb_rejected = 0
        self._flush_errors = 0
        self._last_flush_at: datetime | None = None
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._sqlite = store.dialect == "sqlite"

    # -- the flusher thread ----------------------------------------------------------------

    def run(
        self,
        *,
        interval: float,
        closing: threading.Event,
        housekeeping: Callable[[], object] | None = None,
        housekeeping_interval: float = 3600.0,
    ) -> None:
        """The flusher thread's loop, until ``closing`` is set.

        Flushes every ``interval`` seconds, or at once when a full batch wakes it; while the
        store is down it backs off (doubling up to MAX_RETRY_DELAY) instead of spinning on
        the wake-ups of a full buffer. ``housekeeping`` (pruning) runs every
        ``housekeeping_interval`` seconds; a store failure there is retried next time.
        """
        delay = interval
        last_housekeeping = time.monotonic()
        while not closing.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if closing.is_set():
                break
            self.flush()
            if self._last_error is None:
                delay = interval
            else:
                delay = min(delay * 2, MAX_RETRY_DELAY)
                closing.wait(delay)
            if housekeeping and time.monotonic() - last_housekeeping > housekeeping_interval:
                last_housekeeping = time.monotonic()
                with contextlib.suppress(CanaryError, exc.SQLAlchemyError):
                    housekeeping()

    # -- producers (the agent's threads) --------------------------------------------------

    def add(self, row: EventRow) -> None:
        """Queue one event row; count it as dropped if the buffer is full. Never raises."""
        queue = self._events
        if len(queue) < self._capacity:
            queue.append(row)
            if len(queue) >= self._batch_size and not self._wake.is_set():
                self._wake.set()
        else:
            with self._count_lock:
                self._dropped_full += 1

    def add_feedback(self, row: FeedbackRow) -> None:
        """Queue one feedback row; count it as dropped if the buffer is full. Never raises."""
        if len(self._feedback) < self._capacity:
            self._feedback.append(row)
        else:
            with self._count_lock:
                self._fb_dropped_full += 1

    # -- the flusher ----------------------------------------------------------------------

    def pending(self) -> int:
        """Events and feedback rows not yet committed (queued or in flight)."""
        return (
            len(self._events)
            + len(self._inflight)
            + len(self._feedback)
            + len(self._inflight_feedback)
        )

    def flush(self) -> int:
        """Write what is buffered now, in batches; return the number of events written.

        Rows recorded while it runs wait for the next flush, so a busy agent cannot keep a
        caller (or ``close()``) here forever. Stops at the first batch the store cannot
        take (it stays in flight for the next call) and never raises for store trouble:
        :meth:`stats` reports the error.
        """
        with self._flush_lock:
            before = self._written
            batches = -(-self.pending() // self._batch_size)  # ceil: what is pending now
            for _ in range(batches):
                if not self._inflight and not self._inflight_feedback:
                    self._inflight = _take(self._events, self._batch_size)
                    self._inflight_feedback = _take(self._feedback, self._batch_size)
                if not self._inflight and not self._inflight_feedback:
                    break
                if not self._write_inflight():
                    break
            return self._written - before

    def _write_inflight(self) -> bool:
        rows, fb_rows = self._inflight, self._inflight_feedback
        try:
            rejected, rejected_fb = self._write_batch(rows, fb_rows)
        except Exception as error:  # store trouble must never reach the agent
            self._failed(error)
            return False
        with self._count_lock:
            self._written += len(rows) - rejected
            self._rejected += rejected
            self._fb_written += len(fb_rows) - rejected_fb
            self._fb_rejected += rejected_fb
            self._last_flush_at = self._now()
            self._last_error = None
        self._inflight, self._inflight_feedback = [], []
        return True

    def _write_batch(
        self, rows: Sequence[EventRow], fb_rows: Sequence[FeedbackRow]
    ) -> tuple[int, int]:
        """Commit one batch; return (events refused, feedback rows refused).

        Raises only when the store is unreachable or locked (the batch is then retried).
        """
        try:
            try:
                return 0, self._write(rows, fb_rows, fast=True)
            except Exception as error:
                if not _integrity(error):
                    raise
                # A retried batch whose first commit did land: write it idempotently.
                return 0, self._write(rows, fb_rows, fast=False)
        except Exception as error:
            if _transient(error):
                raise
        # The store refused the batch for its content: isolate the bad rows.
        return self._write_one_by_one(rows, fb_rows)

    def _failed(self, error: BaseException) -> None:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        with self._count_lock:
            self._flush_errors += 1
            self._last_error = f"{type(error).__name__}: {message}"
            self._last_error_at = self._now()

    def _write(
        self, rows: Sequence[EventRow], fb_rows: Sequence[FeedbackRow], *, fast: bool
    ) -> int:
        """Write one batch in one transaction; return how many feedback rows were refused."""
        with self._store.begin() as conn:
            if not self._sqlite:
                # Monitors read events (and feedback) past an id cursor. PostgreSQL hands out
                # ids when rows are inserted but shows them when their transaction commits,
                # so two concurrent writers could make a higher id visible before a lower
                # one and the cursor would skip the lower. Holding this lock from the first
                # id to the commit makes ids visible in order. (SQLite's write transactions
                # are already serial.) One writer at a time still clears tens of thousands
                # of rows a second: COPY, not the lock, is the bottleneck.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({EVENT_WRITER_LOCK})")
            if rows:
                self._insert_events(conn, rows, fast=fast)
            return _insert_feedback(conn, fb_rows) if fb_rows else 0

    def _insert_events(self, conn: Connection, rows: Sequence[EventRow], *, fast: bool) -> None:
        if self._sqlite:
            conn.exec_driver_sql(
                _SQLITE_INSERT,
                [
                    (*row[:AT_INDEX], sqlite_time(row[AT_INDEX]), *row[AT_INDEX + 1 :])
                    for row in rows
                ],
            )
        elif fast:
            raw = conn.connection.dbapi_connection
            with raw.cursor() as cursor, cursor.copy(_PG_COPY) as copy:  # type: ignore[union-attr]
                for row in rows:
                    copy.write_row(row)
        else:
            conn.exec_driver_sql(_PG_INSERT, list(rows))

    def _write_one_by_one(
        self, rows: Sequence[EventRow], fb_rows: Sequence[FeedbackRow]
    ) -> tuple[int, int]:
        rejected = rejected_fb = 0
        for row in rows:
            try:
                self._write([row], [], fast=False)
            except Exception as error:
                if _transient(error):
                    raise
                rejected += 1
        for fb in fb_rows:
            try:
                rejected_fb += self._write([], [fb], fast=False)
            except Exception as error:
                if _transient(error):
                    raise
                rejected_fb += 1
        return rejected, rejected_fb

    def stats(self) -> IngestStats:
        """Return the pipeline's counters (a consistent snapshot)."""
        with self._count_lock:
            return IngestStats(
                written=self._written,
                buffered=len(self._events) + len(self._inflight),
                dropped_full=self._dropped_full,
                rejected=self._rejected,
                feedback_written=self._fb_written,
                feedback_buffered=len(self._feedback) + len(self._inflight_feedback),
                feedback_dropped_full=self._fb_dropped_full,
                feedback_rejected=self._fb_rejected,
                flush_errors=self._flush_errors,
                last_flush_at=self._last_flush_at,
                last_error=self._last_error,
                last_error_at=self._last_error_at,
                capacity=self._capacity,
            )


def sqlite_time(at: datetime) -> str:
    """The text SQLAlchemy stores on SQLite for the aware time ``at`` (a test pins equality).

    Bypassing SQLAlchemy's per-row machinery is what makes the SQLite path fast; the
    C-implemented ``isoformat`` writes the same ``YYYY-MM-DD HH:MM:SS.ffffff`` text that
    its ``DATETIME`` type writes and parses back, in a third of the time.
    """
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _take(queue: deque[Any], limit: int) -> list[Any]:
    """Pop up to ``limit`` items from the left; safe against concurrent appends."""
    count = min(limit, len(queue))
    popleft = queue.popleft
    return [popleft() for _ in range(count)]


def _insert_feedback(conn: Connection, rows: Sequence[FeedbackRow]) -> int:
    """Insert feedback rows whose decision exists; return how many were refused as unknown.

    Rows verified at the call go straight in. The others (accepted while the store was
    unreachable) are checked against ``events`` now, after this batch's events went in.
    """
    unverified = {row[0] for row in rows if not row[4]}
    known: set[str] = set()
    if unverified:
        known = set(
            conn.execute(
                select(events.c.decision_id).where(events.c.decision_id.in_(unverified))
            ).scalars()
        )
    keep = [row for row in rows if row[4] or row[0] in known]
    if keep:
        insert = (
            sqlite_insert(feedback) if conn.dialect.name == "sqlite" else pg_insert(feedback)
        ).on_conflict_do_nothing(index_elements=["key"])
        conn.execute(
            insert,
            [
                {
                    "decision_id": row[0],
                    "at": row[1],
                    "quality": row[2],
                    "metrics": row[3],
                    "key": row[5],
                }
                for row in keep
            ],
        )
    return len(rows) - len(keep)
