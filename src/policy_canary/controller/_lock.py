"""One acting controller: a lease, held as a PostgreSQL advisory lock or a SQLite row.

The lock keeps a second controller idle rather than racing; correctness does not depend on
it, because every write also compare-and-swaps the rollout's revision under the policy's lock.

Both forms expire when the holder stops renewing them for ``ttl``. SQLite's row carries its
expiry. PostgreSQL's advisory lock lives as long as its session, and a controller cut off
by the network leaves a session the server may not notice for hours (no packet ever tells
it, and a proxy in between keeps its side open), so the lock's session sets
``idle_session_timeout`` to the ttl: the server ends a session that stayed silent that
long, the lock goes with it, and a standby takes over. Every tick renews the lease (one
``SELECT 1``), so the controller's interval must stay below the ttl.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from sqlalchemy import Connection, select, text
from sqlalchemy.exc import SQLAlchemyError

from policy_canary.clock import Clock
from policy_canary.errors import StoreUnavailableError, first_line
from policy_canary.store import Store
from policy_canary.store.schema import leases

#: The lease row's name (SQLite).
LEASE_NAME = "controller"
# Keyed by schema so stores sharing one PostgreSQL database (tests, tenants) do not contend.
_PG_KEY = "SELECT hashtext(current_schema() || :suffix), current_setting('server_version_num')::int"
#: idle_session_timeout exists from PostgreSQL 14; older servers keep the lock with the session.
_PG_IDLE_TIMEOUT_SINCE = 140000


def default_holder() -> str:
    """``host:pid``: who holds the lock, as shown in status and logs."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ControllerLock:
    """The controller lock of one store; :meth:`acquire` is cheap to call every tick."""

    def __init__(self, store: Store, *, holder: str, ttl: timedelta, clock: Clock) -> None:
        self.store = store
        self.holder = holder
        self.ttl = ttl
        self.clock = clock
        self._pg: Connection | None = None
        self._key: int | None = None
        self._expiring = False  # the lock's session has idle_session_timeout set
        self.held = False

    def acquire(self) -> bool:
        """Take (or renew) the lock; return whether this controller may act now."""
        if self.store.dialect == "postgresql":
            self.held = self._acquire_pg()
        else:
            self.held = self._renew_lease()
        return self.held

    def owner(self) -> str | None:
        """Who holds the SQLite lease (``None`` when free or on PostgreSQL)."""
        if self.store.dialect == "postgresql":
            return None
        with self.store.read() as conn:
            row = conn.execute(select(leases).where(leases.c.name == LEASE_NAME)).first()
        if row is None or row.expires_at <= self.clock.now():
            return None
        return str(row.holder)

    def release(self) -> None:
        """Give the lock up (safe to call when not held)."""
        if self._pg is not None:
            try:
                if self.held and self._key is not None:
                    self._pg.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                if self._expiring:  # the connection goes back to the pool: no timeout there
                    self._pg.execute(text("SELECT set_config('idle_session_timeout', '0', false)"))
                self._pg.commit()
            except SQLAlchemyError:
                pass  # a dead session has released its advisory locks already
            finally:
                self._pg.close()
                self._pg = None
                self._expiring = False
        elif self.held:
            with self.store.begin() as conn:
                conn.execute(
                    leases.delete().where(
                        leases.c.name == LEASE_NAME, leases.c.holder == self.holder
                    )
                )
        self.held = False

    def _acquire_pg(self) -> bool:
        # A session-level advisory lock lives as long as this dedicated connection; if the
        # connection died, so did the lock, and we must take it again.
        if self._pg is not None and self.held:
            try:
                self._pg.execute(text("SELECT 1"))
                self._pg.commit()
                return True
            except SQLAlchemyError:
                self._pg.invalidate()
                self._pg.close()
                self._pg = None
        fresh = self._pg is None
        if self._pg is None:
            self._expiring = False
            try:
                self._pg = self.store.engine.connect()
            except SQLAlchemyError as error:  # outside Store.begin(), so mapped here
                raise StoreUnavailableError(
                    f"the store is unavailable, cannot take the controller lock: "
                    f"{first_line(error)}; check that the database is running"
                ) from error
        try:
            if fresh:
                self._prepare(self._pg)
            got = bool(
                self._pg.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar()
            )
            self._pg.commit()
        except SQLAlchemyError as error:
            # The session ended (its own silence, the server's restart): the next tick starts
            # on a fresh connection rather than on this dead one.
            self._pg.invalidate()
            self._pg.close()
            self._pg = None
            self._expiring = False
            raise StoreUnavailableError(
                f"the store is unavailable, cannot take the controller lock: "
                f"{first_line(error)}; check that the database is running"
            ) from error
        return got

    def _prepare(self, conn: Connection) -> None:
        """Read the lock's key; make the server end this session after ``ttl`` of silence."""
        key, version = conn.execute(text(_PG_KEY), {"suffix": ":policy-canary-controller"}).one()
        self._key = int(key)
        if int(version) >= _PG_IDLE_TIMEOUT_SINCE:
            # Committed with the try that follows; the lock goes with the session.
            milliseconds = max(1, round(self.ttl.total_seconds() * 1000))
            conn.execute(
                text("SELECT set_config('idle_session_timeout', :ms, false)"),
                {"ms": f"{milliseconds}ms"},
            )
            self._expiring = True

    def _renew_lease(self) -> bool:
        now = self.clock.now()
        expires = now + self.ttl
        with self.store.begin() as conn:
            row = conn.execute(select(leases).where(leases.c.name == LEASE_NAME)).first()
            if row is None:
                conn.execute(
                    leases.insert().values(
                        name=LEASE_NAME, holder=self.holder, acquired_at=now, expires_at=expires
                    )
                )
                return True
            if row.holder == self.holder:
                conn.execute(
                    leases.update().where(leases.c.name == LEASE_NAME).values(expires_at=expires)
                )
                return True
            if row.expires_at <= now:
                conn.execute(
                    leases.update()
                    .where(leases.c.name == LEASE_NAME)
                    .values(holder=self.holder, acquired_at=now, expires_at=expires)
                )
                return True
            return False
