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

No exception ends the thread. A refresh that fails (the store is down, or anything else)
leaves the gates on their last tables, is reported by ``gate.status()`` (``stale``,
``last_error``) and is logged once per outage; polling goes on at the interval, because a
poll is one cheap read and a rollback must reach ``route()`` within one interval of the
store coming back. The first successful poll after an outage also reopens the listener at
once instead of waiting out its backoff, and calls ``on_recovered`` (the canary ends the
flusher's backoff with it, so buffered events follow the routing tables).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from policy_canary.resilience import Outage, describe, retry_delay

if TYPE_CHECKING:
    from policy_canary.serving._link import Link, Listener

__all__ = ["Refresher", "retry_delay"]

_log = logging.getLogger("policy_canary.serving")


class Refresher:
    """Runs ``refresh`` every ``interval`` seconds, and at once when the store announces a change.

    ``refresh`` returns None on success and the error otherwise (it should not raise, but
    the loop survives it if it does). ``closing`` is the owner's shutdown event; :meth:`wake`
    makes a waiting loop notice it.
    """

    def __init__(
        self,
        link: Link,
        *,
        refresh: Callable[[], BaseException | str | None],
        interval: float,
        closing: threading.Event,
        listen: bool = True,
        on_recovered: Callable[[], None] | None = None,
    ) -> None:
        self._link = link
        self._refresh = refresh
        self._interval = interval
        self._closing = closing
        self._listen = listen and link.can_listen
        self._on_recovered = on_recovered
        self._listener: Listener | None = None
        self._failures = 0  # consecutive listener failures; 0 while it works
        self._retry_at = 0.0  # monotonic time of the next attempt to open it
        self._outage = Outage(
            _log,
            "routing tables cannot be refreshed; route() serves the last ones and "
            "gate.status() reports them stale",
        )

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
                try:
                    self._step()
                except Exception as error:  # the loop must outlive anything, bugs included
                    self._outage.failed(error)
                    self._closing.wait(retry_delay(self._outage.failures - 1, self._interval))
        finally:
            self._drop_listener()

    def _step(self) -> None:
        if self._listen and self._listener is None and time.monotonic() >= self._retry_at:
            self._open_listener()
        # Checked after the listener is published and before waiting on it: close() sets
        # ``closing`` before it reads the listener to wake, so one of the two sees the other.
        if self._closing.is_set():
            return
        listener = self._listener
        if listener is not None:
            self._wait(listener)
        else:
            self._closing.wait(self._poll_delay())
        if not self._closing.is_set():
            self._poll()

    def _poll(self) -> None:
        try:
            error = self._refresh()
        except Exception as raised:
            error = raised
        if error is not None:
            self._outage.failed(error)
            return
        if self._outage.failures:
            if self._listener is None:
                self._retry_at = 0.0  # the store is back: listen again now, not after the backoff
            if self._on_recovered is not None:
                self._on_recovered()  # and the flusher may write what it kept, now
        self._outage.recovered("routing tables are refreshed again")

    def _open_listener(self) -> None:
        try:
            listener = self._link.listen()
        except Exception as error:  # StoreUnavailableError, or anything a driver raises
            self._failed(error)
            return
        self._listener = listener
        if self._failures:
            _log.info("listening for routing changes again (backend pid %s)", listener.backend_pid)
        # Changes committed before LISTEN took effect were announced to nobody here.
        if not self._closing.is_set():
            self._poll()

    def _wait(self, listener: Listener) -> None:
        try:
            listener.wait(self._interval)
        except Exception as error:
            self._drop_listener()
            self._failed(error)
        else:
            self._failures = 0

    def _poll_delay(self) -> float:
        if not self._listen:
            return self._interval
        return max(0.0, min(self._interval, self._retry_at - time.monotonic()))

    def _failed(self, error: BaseException) -> None:
        if self._failures == 0:
            _log.warning(
                "routing changes are polled every %gs until the listener is back: %s",
                self._interval,
                describe(error),
            )
        else:
            _log.debug("the routing listener is still down: %s", describe(error))
        self._retry_at = time.monotonic() + retry_delay(self._failures, self._interval)
        self._failures += 1

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.close()
            except Exception as error:  # a half-dead socket must not end the loop
                _log.debug("closing the routing listener failed: %s", describe(error))
