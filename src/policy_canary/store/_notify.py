"""Routing change notifications on PostgreSQL: NOTIFY from writers, LISTEN in each agent.

A writer that changes routing bumps the ``routing`` counter (:meth:`Store.bump_epoch`); on
PostgreSQL the same transaction runs ``pg_notify('policy_canary_routing', '<schema>:<epoch>')``.
The server delivers it only if, and when, that transaction commits, so a listener never hears
of a change it cannot yet read.

The channel is one constant for every store; the payload names the schema that holds the
store's ``store_state`` table (as the connection's ``search_path`` resolves it). Several stores
in one database (a schema per tenant, or per test) therefore share the channel, and each
listener ignores the others' changes.

Notifications only make refreshes prompt: a listener that misses one (its connection broke,
the server restarted) is covered by the counter poll that runs regardless.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Connection, Engine, text

from policy_canary.errors import StoreError, StoreUnavailableError, first_line
from policy_canary.store.schema import store_state

#: The PostgreSQL channel every store's routing changes are announced on.
ROUTING_CHANNEL = "policy_canary_routing"

# The schema of the table this connection's search_path resolves store_state to: the same
# expression on the writer and the listener, so two connections agree exactly when they
# share the table.
_SCOPE = (
    "(SELECT relnamespace::regnamespace::text FROM pg_class "
    f"WHERE oid = '{store_state.name}'::regclass)"
)
_NOTIFY = text(f"SELECT pg_notify(:channel, {_SCOPE} || ':' || :epoch)")


def notify_routing(conn: Connection, epoch: int) -> None:
    """Announce a new routing epoch, delivered when the caller's transaction commits."""
    conn.execute(_NOTIFY, {"channel": ROUTING_CHANNEL, "epoch": str(epoch)})


def can_listen(engine: Engine) -> bool:
    """Whether ``engine`` can hold a LISTEN connection (PostgreSQL through psycopg 3)."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


class ChangeListener:
    """A dedicated connection that LISTENs for routing changes of one store.

    Used by one thread, except :meth:`wake`, which any thread may call to end a
    :meth:`wait` early (for shutdown).
    """

    def __init__(self, connection: psycopg.Connection[Any], scope: str) -> None:
        self._conn = connection
        self._scope = scope
        # A socket pair rather than an Event: select() can wait on it and on the database
        # socket at once.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # selectors picks epoll/kqueue where it can: select() fails on descriptors above
        # 1023, which a busy agent process may well hand out.
        self._selector = selectors.DefaultSelector()
        self._selector.register(connection.fileno(), selectors.EVENT_READ, "db")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")

    @classmethod
    def open(cls, engine: Engine) -> ChangeListener:
        """Open a connection the way the engine opens its own and LISTEN on it.

        Raises :class:`StoreUnavailableError` when the database cannot be reached, and
        :class:`StoreError` when it is not policy-canary's (no ``store_state`` table).
        """
        # A pool connection taken for good (detached), so the engine's URL, connect_args
        # and connect hooks apply, and the pool opens a replacement when it needs one.
        try:
            fairy = engine.raw_connection()
        except psycopg.Error as error:
            # The pool hands out the driver's own error here, not SQLAlchemy's wrapper.
            raise StoreUnavailableError(
                f"cannot listen for routing changes: {first_line(error)}"
            ) from error
        fairy.detach()
        raw = fairy.dbapi_connection
        if not isinstance(raw, psycopg.Connection):
            fairy.close()
            raise StoreError("listening for routing changes needs the psycopg 3 driver")
        try:
            raw.rollback()  # the pool's pre-ping may have left a transaction open
            raw.autocommit = True  # LISTEN takes effect, and notifies arrive, outside one
            row = raw.execute(f"SELECT {_SCOPE}").fetchone()
            raw.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ROUTING_CHANNEL)))
        except psycopg.Error as error:
            raw.close()
            if isinstance(error, psycopg.errors.UndefinedTable):
                raise StoreError(
                    f"cannot listen for routing changes: {first_line(error)}; "
                    "run 'policy-canary db upgrade'"
                ) from error
            raise StoreUnavailableError(
                f"cannot listen for routing changes: {first_line(error)}"
            ) from error
        assert row is not None  # a scalar subquery always yields one row
        return cls(raw, str(row[0]))

    @property
    def backend_pid(self) -> int:
        """The PostgreSQL backend process serving this connection."""
        return self._conn.info.backend_pid

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for a routing change of this store.

        Returns the newest epoch announced for it, or None when the time ran out or
        :meth:`wake` was called first. Announcements for other schemas are consumed and
        ignored. Raises :class:`StoreUnavailableError` when the connection broke.
        """
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                ready = {key.data for key, _ in self._selector.select(remaining)}
            except (OSError, ValueError) as error:  # closed under us
                raise StoreUnavailableError(
                    f"the routing listener failed: {first_line(error)}"
                ) from error
            if "wake" in ready:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(64):
                        pass
                return None
            if "db" in ready and (epoch := self._receive()) is not None:
                return epoch
        return None

    def _receive(self) -> int | None:
        """Read what the server sent; return the newest epoch announced for this store."""
        newest: int | None = None
        try:
            # timeout=0 reads what is buffered without blocking; the server closing the
            # connection (restart, pg_terminate_backend) surfaces here as an error.
            for note in self._conn.notifies(timeout=0):
                scope, _, epoch = note.payload.rpartition(":")
                if note.channel == ROUTING_CHANNEL and scope == self._scope and epoch.isdigit():
                    newest = max(newest or 0, int(epoch))
        except psycopg.Error as error:
            raise StoreUnavailableError(
                f"the routing listener's connection broke: {first_line(error)}"
            ) from error
        return newest

    def wake(self) -> None:
        """Make the current or next :meth:`wait` return None at once (any thread)."""
        with contextlib.suppress(OSError):  # already closed, or a wake-up is pending
            self._wake_w.send(b"\0")

    def close(self) -> None:
        """Close the connection and the wake-up sockets (idempotent)."""
        with contextlib.suppress(OSError, ValueError):
            self._selector.close()
        with contextlib.suppress(psycopg.Error):
            self._conn.close()
        self._wake_r.close()
        self._wake_w.close()
