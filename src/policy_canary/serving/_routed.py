"""Routed decisions and recorded outcomes, counted per routing window: missing outcomes.

A candidate that crashes the agent's worker, hangs until a timeout kills it, or returns before
``record()`` leaves no event, so the event stream alone makes it look *better* the more it
fails. Each gate therefore counts, per rollout and share, the decisions ``route()`` made and
the outcomes recorded for them, by arm; the flusher writes the counts with the events through
the canary's :class:`~policy_canary.serving._link.Link`, and the controller's built-in
``outcomes_recorded`` guardrail compares the arms (``monitoring/_missing.py``).

On the hot path a count is one ``next()`` of an :class:`itertools.count`: atomic in CPython
(no lock, no lost update across threads) and about 40 ns. A decision keeps the window it was
routed in, so its outcome is counted against the same window however late it is recorded.
Windows are closed by the flusher every :data:`WINDOW` and kept for :data:`KEEP_CLOSED`
afterwards, so outcomes recorded late still reach the store; the counts of a window are
cumulative, and the store keeps the larger of two writes (a retried flush changes nothing).
A window's row carries its nominal end (start + WINDOW), which never changes: the controller
folds a row once, when that end is older than its grace period (``monitoring/_missing.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from policy_canary.serving._routing import RouteTable

__all__ = ["KEEP_CLOSED", "WINDOW", "RoutedCounts", "RoutedRow", "Tally", "Window"]

#: How long one routing window lasts (closed by the flusher at its first flush after this).
WINDOW = timedelta(minutes=1)
#: How long a closed window's counts are still written (outcomes recorded late).
KEEP_CLOSED = timedelta(minutes=30)

#: One window's counts as the link writes them: (policy, rollout_id, source, window_start,
#: window_end, traffic_bp, stage, routed_stable, routed_candidate, recorded_stable,
#: recorded_candidate).
RoutedRow = tuple[str, str, str, datetime, datetime, int, str | None, int, int, int, int]


def _value(counter: itertools.count[int]) -> int:
    """How often ``next()`` was called on ``counter`` (it starts at 0): read from its repr.

    ``itertools.count`` has no read accessor, and its repr ``count(5)`` is the one way to read
    it without advancing it; its ``next()`` is what makes counting atomic without a lock.
    """
    return int(repr(counter)[6:-1])


class Window:
    """The counters of one routing window: index 0 stable, 1 candidate (``arm is candidate``)."""

    __slots__ = ("end", "recorded", "routed", "start")

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.end: datetime | None = None  # set when the flusher closes it
        self.routed = (itertools.count(), itertools.count())
        self.recorded = (itertools.count(), itertools.count())

    def counts(self) -> tuple[int, int, int, int]:
        """(routed stable, routed candidate, recorded stable, recorded candidate)."""
        return (
            _value(self.routed[0]),
            _value(self.routed[1]),
            _value(self.recorded[0]),
            _value(self.recorded[1]),
        )


class Tally:
    """The current window of one (policy, rollout, share, stage); route() reads ``window``."""

    __slots__ = ("closed", "policy", "rollout_id", "share_bp", "stage", "window")

    def __init__(
        self, policy: str, rollout_id: str, share_bp: int, stage: str | None, now: datetime
    ) -> None:
        self.policy = policy
        self.rollout_id = rollout_id
        self.share_bp = share_bp
        self.stage = stage
        self.window = Window(now)
        self.closed: list[Window] = []


class RoutedCounts:
    """One canary's tallies: attached to routing tables, snapshotted by the flusher."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._tallies: dict[tuple[str, str, int, str | None], Tally] = {}
        self._written: dict[tuple[str, datetime, int], tuple[int, int, int, int]] = {}
        self._lock = threading.Lock()

    def attach(self, table: RouteTable, now: datetime) -> RouteTable:
        """``table`` with the tally route() counts into (none without candidate traffic)."""
        if table.rollout_id is None or table.candidate is None or not table.share_bp:
            return table if table.tally is None else dataclasses.replace(table, tally=None)
        key = (table.policy, table.rollout_id, table.share_bp, table.stage)
        with self._lock:
            tally = self._tallies.get(key)
            if tally is None:
                tally = self._tallies[key] = Tally(*key, now)
        return dataclasses.replace(table, tally=tally)

    def snapshot(self, now: datetime) -> list[RoutedRow]:
        """Close windows older than WINDOW; the rows whose counts changed since written."""
        rows: list[RoutedRow] = []
        with self._lock:
            # Tallies are kept while the canary lives (a gate may still hold their table):
            # one per rollout, share and stage ever served, each with a few windows.
            for tally in self._tallies.values():
                current = tally.window
                if now - current.start >= WINDOW:
                    tally.window = Window(now)
                    current.end = now
                    tally.closed.append(current)
                keep = [w for w in tally.closed if w.end is not None and now - w.end < KEEP_CLOSED]
                for w in tally.closed:
                    if w not in keep:
                        self._written.pop((tally.rollout_id, w.start, tally.share_bp), None)
                tally.closed = keep
                for w in (*keep, tally.window):
                    counts = w.counts()
                    if self._written.get((tally.rollout_id, w.start, tally.share_bp)) == counts:
                        continue
                    if w is tally.window and not any(counts):
                        continue
                    rows.append(
                        (
                            tally.policy,
                            tally.rollout_id,
                            self.source,
                            w.start,
                            # Fixed per window, so the controller folds each row once.
                            w.start + WINDOW,
                            tally.share_bp,
                            tally.stage,
                            *counts,
                        )
                    )
        return rows

    def written(self, rows: Sequence[RoutedRow]) -> None:
        """Remember what the store holds now, so the next snapshot sends only changes."""
        with self._lock:
            for row in rows:
                self._written[(row[1], row[3], row[5])] = (row[7], row[8], row[9], row[10])
