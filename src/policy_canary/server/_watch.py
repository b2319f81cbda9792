"""One routing watcher per server process, fanning changes out to every stream subscriber.

The watcher is the SDK's own :class:`~policy_canary.serving._refresher.Refresher` on the
server's store link: it LISTENs on PostgreSQL (a committed change arrives at once) and polls
the routing counter every ``interval`` seconds either way (the only signal on SQLite). When
the counter moved it loads the tables of every policy with a stable version, once, and wakes
the subscribers' coroutines; a thousand streams cost one poll, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy import select

from policy_canary.serving._link import Link
from policy_canary.serving._refresher import Refresher
from policy_canary.serving._routing import RouteTable, SpecCache
from policy_canary.store import Store
from policy_canary.store.schema import policies


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The routing tables of every servable policy at one epoch."""

    epoch: int
    tables: dict[str, RouteTable] = field(default_factory=dict)
    #: Unix time (seconds) the watcher loaded it: OFREP's ``lastModified``.
    at: int = 0


class RoutingWatch:
    """Keeps :attr:`snapshot` current and tells subscribers (coroutines) when it moves."""

    def __init__(self, store: Store, link: Link, *, interval: float) -> None:
        self._store = store
        self._link = link
        self._specs = SpecCache()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._refresher = Refresher(
            link, refresh=self.refresh, interval=interval, closing=self._closing
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self.snapshot: Snapshot | None = None
        self.closed = False

    # -- the watcher thread -----------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start watching; subscribers on ``loop`` are woken on every change."""
        self._loop = loop
        if self._thread is None:
            self._thread = self._refresher.start()

    def refresh(self) -> BaseException | None:
        """Reload the tables if the routing counter moved; the error if that failed."""
        with self._lock:
            known = self.snapshot.epoch if self.snapshot else None
            try:
                if known is not None and self._link.read_epoch() == known:
                    return None
                with self._store.read() as conn:
                    names = list(
                        conn.execute(
                            select(policies.c.name).where(policies.c.stable_digest.is_not(None))
                        ).scalars()
                    )
                epoch, tables = self._link.load(names, specs=self._specs, known_epoch=None)
            except Exception as error:  # the snapshot stays; the refresher logs the outage
                return error
            if known is not None and epoch == known:
                return None
            self.snapshot = Snapshot(epoch, tables, int(time.time()))
        self._pulse()
        return None

    def current(self) -> Snapshot:
        """The snapshot, loading it first if the watcher has not yet (raises store errors)."""
        if self.snapshot is None:
            error = self.refresh()
            if error is not None:
                raise error
        assert self.snapshot is not None
        return self.snapshot

    def covering(self, names: Collection[str]) -> Snapshot:
        """The snapshot, reloaded first if it lacks one of ``names``: a policy registered
        since the watcher last looked is served at once, not refused as unknown until its
        next poll (raises store errors, which say more than "no such policy" would)."""
        snapshot = self.current()
        if set(names) <= snapshot.tables.keys():
            return snapshot
        error = self.refresh()
        if error is not None:
            raise error
        return self.current()

    # -- subscribers ------------------------------------------------------------------------

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next change (or at shutdown); take it before reading the snapshot."""
        return self._changed

    def _pulse(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed since the check
            loop.call_soon_threadsafe(self._wake_subscribers)

    def _wake_subscribers(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def close(self, *, wait: bool = True) -> None:
        """End every stream and stop the watcher (idempotent, any thread)."""
        self.closed = True
        self._pulse()
        self._closing.set()
        self._refresher.wake()
        thread, self._thread = self._thread, None
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
