"""The refresher thread: reload routing tables when the store's change counter moves.

Every ``interval`` seconds it calls the canary's refresh (one indexed read of the counter;
the tables are reloaded only when it moved). On PostgreSQL it also holds a LISTEN connection
(the link's ``listen()``) and waits on it instead of sleeping, so a committed change, above
all a rollback, triggers the refresh at once. Polling stays as the safety net for anything a
listener misses.

The listener is an optimisation, never a dependency: if it cannot be opened or its connection
breaks, the thread logs one warning, keeps polling, and tries again with a growing delay
(from ``min(interval, 1 s)`` up to a minute), re-reading the counter each time it
reconnects because changes made while it was deaf were not announced to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from policy_canary.errors import CanaryError

if TYPE_CHECKING:
    from policy_canary.serving._link import Link, Listener

_log = logging.getLogger("policy_canary.serving._canary")

#: First delay before opening the listener again after a failure (capped by the interval).
LISTEN_RETRY_MIN = 1.0
#: Longest delay between attempts to open the listener.
LISTEN_RETRY_MAX = 60.0


def retry_delay(failures: int, interval: float) -> float:
    """Seconds before reopening the listener after ``failures + 1`` failures in a row.

    Doubles from ``min(interval, LISTEN_RETRY_MIN)`` up to ``LISTEN_RETRY_MAX``.
    """
    first = min(interval, LISTEN_RETRY_MIN)
    # The exponent is capped so that a store down for days cannot overflow the float.
    return min(LISTEN_RETRY_MAX, first * 2.0 ** min(failures, 30))


class Refresher:
    """Runs ``refresh`` every ``interval`` seconds, and at once when the store announces a change.

    ``closing`` is the owner's shutdown event; :meth:`wake` makes a waiting loop notice it.
    """

    def __init__(
        self,
        link: Link,
        *,
        refresh: Callable[[], object],
        interval: float,
        closing: threading.Event,
        listen: bool = True,
    ) -> None:
        self._link = link
        self._refresh = refresh
        self._interval = interval
        self._closing = closing
        self._listen = listen and link.can_listen
        self._listener: Listener | None = None
        self._failures = 0  # consecutive listener failures; 0 while it works
        self._retry_at = 0.0  # monotonic time of the next attempt to open it

    @property
    def listener(self) -> Listener | None:
        """The open LISTEN connection, if any (None on SQLite, or while polling only)."""
        return self._listener

    def start(self) -> threading.Thread:
        """Start the loop in a daemon thread and return it (the owner joins it)."""
        thread = threading.Thread(target=self.run, name="policy-canary-refresh", daemon=True)
        thread.start()
        return thread

    def wake(self) -> None:
        """End a wait on the listener early, so the loop sees ``closing`` (any thread)."""
        listener = self._listener
        if listener is not None:
            listener.wake()

    def run(self) -> None:
        """The loop; returns when ``closing`` is set, having closed the listener."""
        try:
            while not self._closing.is_set():
                if self._listen and self._listener is None and time.monotonic() >= self._retry_at:
                    self._open_listener()
                # Checked after the listener is published and before waiting on it: close()
                # sets ``closing`` before it reads the listener to wake, so one of the two
                # sees the other.
                if self._closing.is_set():
                    break
                listener = self._listener
                if listener is not None:
                    self._wait(listener)
                else:
                    self._closing.wait(self._poll_delay())
                if self._closing.is_set():
                    break
                self._refresh()
        finally:
            self._drop_listener()

    def _open_listener(self) -> None:
        try:
            listener = self._link.listen()
        except CanaryError as error:
            self._failed(error)
            return
        self._listener = listener
        if self._failures:
            _log.info("listening for routing changes again (backend pid %s)", listener.backend_pid)
        # Changes committed before LISTEN took effect were announced to nobody here.
        if not self._closing.is_set():
            self._refresh()

    def _wait(self, listener: Listener) -> None:
        try:
            listener.wait(self._interval)
        except CanaryError as error:
            self._drop_listener()
            self._failed(error)
        else:
            self._failures = 0

    def _poll_delay(self) -> float:
        if not self._listen:
            return self._interval
        return max(0.0, min(self._interval, self._retry_at - time.monotonic()))

    def _failed(self, error: CanaryError) -> None:
        if self._failures == 0:
            _log.warning(
                "routing changes are polled every %gs until the listener is back: %s",
                self._interval,
                error,
            )
        else:
            _log.debug("the routing listener is still down: %s", error)
        self._retry_at = time.monotonic() + retry_delay(self._failures, self._interval)
        self._failures += 1

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
