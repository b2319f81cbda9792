"""Clocks: the only way policy-canary learns the time, so tests and simulations control it.

Also the one exponential backoff every retrying loop uses (:func:`exponential_backoff`).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Something that tells the current time as an aware UTC datetime."""

    def now(self) -> datetime:
        """Return the current time (timezone-aware, UTC)."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        """Return the wall-clock time in UTC."""
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to: for tests and simulations (never sleep)."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time, e.g. tzinfo=UTC")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """Return the clock's current time."""
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        """Move the clock forward by ``delta`` (a timedelta or seconds) and return the new time."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise ValueError("a clock cannot move backwards")
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when``; it may not be earlier than the current time."""
        if when.tzinfo is None:
            raise ValueError("ManualClock.set needs a timezone-aware datetime")
        with self._lock:
            if when < self._now:
                raise ValueError("a clock cannot move backwards")
            self._now = when.astimezone(UTC)


def utc(when: datetime) -> datetime:
    """Return ``when`` as an aware UTC datetime (naive values from a database are UTC)."""
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def exponential_backoff(retry: int, *, first: float, cap: float) -> float:
    """Seconds before retry number ``retry`` (0 for the first): ``min(cap, first * 2**retry)``.

    Exact for every ``retry`` and never overflows: the doubling stops once it reaches ``cap``
    (so a store that stays down for days costs nothing extra). Callers add their own jitter.
    """
    if retry < 0:
        raise ValueError(f"retry counts from 0; got {retry}")
    step = first
    for _ in range(retry):
        if step >= cap or step <= 0.0:
            break
        step *= 2.0
    return min(cap, step)
