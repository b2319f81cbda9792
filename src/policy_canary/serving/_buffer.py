"""The event buffer and its flusher: from ``record()`` to committed rows, in batches.

``record()`` only appends a ready-made row tuple to a bounded deque (``deque.append`` is
atomic, so producers on many threads need no lock). One flusher at a time drains it in
batches through the canary's :class:`~policy_canary.serving._link.Link` (``_direct.py``
says how a store takes them). A batch whose commit outcome was unknown and is retried would
hit the unique decision id, so on a duplicate it is written again with ``retry=True``, the
idempotent form.

A batch that fails to commit stays *in flight* and is retried first, so an acknowledged event
is never lost while the store is down (design invariant 8); new events keep queueing until the
buffer is full, and every event dropped because it was full is counted. Rows the store refuses
on their own (it should not happen: values are validated at the call) are dropped one by one
and counted, so one bad row cannot wedge the flusher. Feedback keeps the first value per
decision and metric (``_feedback.py``); repeats are counted, not stored. After the canary is
closed, rows are dropped at once and counted (``dropped_closed``): nothing would ever write
them.

The flusher thread survives every exception: a failing flush (or pruning) is logged once per
outage, retried with a growing delay (up to MAX_RETRY_DELAY), and logged again when it works.
The wait is cut short by :meth:`EventBuffer.retry_now`, which the canary calls when its
refresher reaches the store (or server) again after an outage: the events buffered during a
partition are written as soon as the link is back, not after the rest of the backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from policy_canary.errors import InputError
from policy_canary.resilience import Outage, retry_delay
from policy_canary.serving._link import EventRow, FeedbackRow, FeedbackWrite, Link
from policy_canary.serving._routed import RoutedCounts

#: Longest wait between flush retries while the store is down.
MAX_RETRY_DELAY = 5.0

_log = logging.getLogger("policy_canary.serving")


@dataclass(frozen=True, slots=True)
class IngestStats:
    """Counters of the event pipeline since the canary was opened.

    ``dropped`` is everything that was accepted by ``record()``/``feedback()`` and will never
    be stored: events and feedback that found the buffer full, rows the store refused, and
    rows recorded after the canary was closed (``dropped_closed``, ``feedback_dropped_closed``).
    ``feedback_duplicates`` counts feedback values not stored because their decision already
    had a value for that metric (the first wins; see ``docs/operations.md``): they are
    deliberately ignored, not lost, so they are not part of ``dropped``.
    """

    written: int
    buffered: int
    dropped_full: int
    rejected: int
    feedback_written: int
    feedback_buffered: int
    feedback_dropped_full: int
    feedback_rejected: int
    feedback_duplicates: int
    flush_errors: int
    last_flush_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    capacity: int
    dropped_closed: int = 0
    feedback_dropped_closed: int = 0

    @property
    def dropped(self) -> int:
        """Every event or feedback row that was accepted but will never be stored."""
        return (
            self.dropped_full
            + self.rejected
            + self.dropped_closed
            + self.feedback_dropped_full
            + self.feedback_rejected
            + self.feedback_dropped_closed
        )


class EventBuffer:
    """A bounded buffer of event and feedback rows, and the batched writer that drains it."""

    def __init__(
        self,
        link: Link,
        *,
        now: Callable[[], datetime],
        capacity: int,
        batch_size: int,
        wake: threading.Event,
        routed: RoutedCounts | None = None,
    ) -> None:
        if capacity < 1 or batch_size < 1:
            raise InputError("buffer_size and batch_size must be at least 1")
        self._link = link
        self._routed = routed
        self._now = now
        self._capacity = capacity
        self._batch_size = batch_size
        self._wake = wake
        self._retry = threading.Event()  # ends a backoff early: the link is back
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
        self._fb_duplicates = 0
        self._closed_drops = [0, 0]  # events, feedback rows recorded after close()
        self._flush_errors = 0
        self._last_flush_at: datetime | None = None
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None

    # -- the flusher thread ----------------------------------------------------------------

    def run(
        self,
        *,
        interval: float,
        closing: threading.Event,
        housekeeping: Callable[[], object] | None = None,
        housekeeping_interval: float = 3600.0,
    ) -> None:
        """The flusher thread's loop, until ``closing`` is set; no exception ends it.

        Flushes every ``interval`` seconds, or at once when a full batch wakes it; while the
        store is down it backs off (doubling up to MAX_RETRY_DELAY) instead of spinning on
        the wake-ups of a full buffer, and logs the outage once. ``housekeeping`` (pruning)
        runs every ``housekeeping_interval`` seconds; a failure there is retried next time.
        """
        flushing = Outage(_log, "events cannot be written; they stay buffered and are retried")
        pruning = Outage(_log, "old events cannot be pruned; retrying in an hour")
        last_housekeeping = time.monotonic()
        while not closing.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if closing.is_set():
                break
            try:
                self.flush()
                error: BaseException | str | None = self._last_error
            except Exception as raised:  # flush() reports store trouble; this is a bug
                error = raised
            if error is None:
                flushing.recovered("events are written again")
            else:
                flushing.failed(error)
                # Not woken early by a full buffer: the wait is what keeps this from spinning.
                # Only retry_now() (once per outage of the refresher) or close() ends it.
                self._retry.wait(retry_delay(flushing.failures, interval, longest=MAX_RETRY_DELAY))
            self._retry.clear()
            if housekeeping and time.monotonic() - last_housekeeping > housekeeping_interval:
                last_housekeeping = time.monotonic()
                try:
                    housekeeping()
                except Exception as raised:
                    pruning.failed(raised)
                else:
                    pruning.recovered("old events are pruned again")

    def retry_now(self) -> None:
        """End the flusher's current backoff wait (the link works again, or it is closing)."""
        self._retry.set()

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

    def drop_closed(self, row: EventRow) -> None:
        """Count an event recorded after the canary was closed (``add`` is rebound to this)."""
        self._count_closed(0, "record()")

    def drop_closed_feedback(self) -> None:
        """Count a feedback row that arrived after the canary was closed."""
        self._count_closed(1, "feedback()")

    def _count_closed(self, which: int, call: str) -> None:
        with self._count_lock:
            self._closed_drops[which] += 1
            first = sum(self._closed_drops) == 1
        if first:
            _log.warning(
                "%s after canary.close(): dropped, and counted in stats().dropped; close the "
                "canary after the agent's last request",
                call,
            )

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
            # Rows, not batches: a batch left in flight by a failure may be a short one.
            remaining = self.pending()
            while remaining > 0:
                if not self._inflight and not self._inflight_feedback:
                    self._inflight = _take(self._events, self._batch_size)
                    self._inflight_feedback = _take(self._feedback, self._batch_size)
                size = len(self._inflight) + len(self._inflight_feedback)
                if not size or not self._write_inflight():
                    break
                remaining -= size
            if self._routed is not None:
                self._write_routed(self._routed)
            return self._written - before

    def _write_routed(self, routed: RoutedCounts) -> None:
        """Write the routed/recorded counts that changed; on failure, the next flush retries."""
        rows = routed.snapshot(self._now())
        if not rows:
            return
        try:
            self._link.write_routed(rows)
        except Exception as error:  # cumulative counts: the next snapshot sends them again
            self._failed(error)
            if self._link.is_transient(error):
                return
            # Refused for their content (a rollout the store does not know): not retried.
        routed.written(rows)

    def _write_inflight(self) -> bool:
        rows, fb_rows = self._inflight, self._inflight_feedback
        try:
            rejected, fb = self._write_batch(rows, fb_rows)
        except Exception as error:  # store trouble must never reach the agent
            self._failed(error)
            return False
        with self._count_lock:
            self._written += len(rows) - rejected
            self._rejected += rejected
            self._fb_written += len(fb_rows) - fb.refused
            self._fb_rejected += fb.refused
            self._fb_duplicates += fb.duplicates
            self._last_flush_at = self._now()
            self._last_error = None
        self._inflight, self._inflight_feedback = [], []
        return True

    def _write_batch(
        self, rows: Sequence[EventRow], fb_rows: Sequence[FeedbackRow]
    ) -> tuple[int, FeedbackWrite]:
        """Commit one batch; return (events refused, what became of the feedback).

        Raises only when the store is unreachable or locked (the batch is then retried).
        """
        link = self._link
        try:
            try:
                return 0, link.write(rows, fb_rows, retry=False)
            except Exception as error:
                if not link.is_duplicate(error):
                    raise
                # A retried batch whose first commit did land: write it idempotently.
                return 0, link.write(rows, fb_rows, retry=True)
        except Exception as error:
            if link.is_transient(error):
                raise
        # The store refused the batch for its content: isolate the bad rows.
        return self._write_one_by_one(rows, fb_rows)

    def _failed(self, error: BaseException) -> None:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        with self._count_lock:
            self._flush_errors += 1
            self._last_error = f"{type(error).__name__}: {message}"
            self._last_error_at = self._now()

    def _write_one_by_one(
        self, rows: Sequence[EventRow], fb_rows: Sequence[FeedbackRow]
    ) -> tuple[int, FeedbackWrite]:
        link = self._link
        rejected = rejected_fb = duplicates = 0
        for row in rows:
            try:
                link.write([row], [], retry=True)
            except Exception as error:
                if link.is_transient(error):
                    raise
                rejected += 1
        for fb in fb_rows:
            try:
                outcome = link.write([], [fb], retry=True)
            except Exception as error:
                if link.is_transient(error):
                    raise
                rejected_fb += 1
            else:
                rejected_fb += outcome.refused
                duplicates += outcome.duplicates
        return rejected, FeedbackWrite(refused=rejected_fb, duplicates=duplicates)

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
                feedback_duplicates=self._fb_duplicates,
                flush_errors=self._flush_errors,
                last_flush_at=self._last_flush_at,
                last_error=self._last_error,
                last_error_at=self._last_error_at,
                capacity=self._capacity,
                dropped_closed=self._closed_drops[0],
                feedback_dropped_closed=self._closed_drops[1],
            )


def _take(queue: deque[Any], limit: int) -> list[Any]:
    """Pop up to ``limit`` items from the left; safe against concurrent appends."""
    count = min(limit, len(queue))
    popleft = queue.popleft
    return [popleft() for _ in range(count)]
