"""SQLite stores: one file, never created behind the caller's back, never silently swapped.

SQLite creates a missing database file on connect. For a store that is already open that is
the wrong thing: if the file is deleted while an agent runs, the next flush would create an
empty database at the path, find no tables, and refuse (drop) every buffered event, and the
CLI would then report "no policies yet". So a file is created only by :meth:`Store.open` with
``migrate=True`` on a path where none exists (first use, logged); every connection after that
opens the file read-write without creating it (``mode=rw``) and checks that it still holds
the same database (:class:`SqliteFile`). A deleted or replaced file makes the store *unavailable*
(:class:`StoreUnavailableError`): the flusher keeps events buffered and retries, the gates
keep serving their last tables and report the error. The same database restored at the path
is taken up again; a different one only by a new :meth:`Store.open` (a restart).
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import NullPool

from policy_canary.errors import StoreUnavailableError

_log = logging.getLogger("policy_canary.store")


class SqliteFile:
    """The database file a store opened, and the identity of the database inside it.

    The identity is a random number in the file's header (``PRAGMA user_version``, which
    nothing else in policy-canary uses), written once by the first process that opens the
    database. Inode numbers would not do: a file deleted and re-created at once usually gets
    the same inode back. A backup restored in place carries the same number and is taken up
    again; a different or empty database at the path is refused.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.identity: int | None = None

    def connect(self, params: dict[str, Any]) -> sqlite3.Connection:
        """Open the file read-write (never create it) and check that it is the same database."""
        uri = f"file:{quote(str(self.path))}?mode=rw"
        try:
            conn: sqlite3.Connection = sqlite3.connect(
                uri, uri=True, isolation_level=None, **params
            )
        except sqlite3.OperationalError:
            if not self.path.exists():
                raise self._gone() from None
            raise
        try:
            found = _read_identity(conn)
            if not self.identity:  # first connection, or a database that had none yet
                self.identity = found or _claim_identity(conn)
            elif found != self.identity:
                raise sqlite3.OperationalError(
                    f"the database file {str(self.path)!r} was replaced by a different "
                    "database since this process opened it; nothing is written to it: restore "
                    "the original file, or restart the process to use the new one"
                )
        except BaseException:
            conn.close()
            raise
        return conn

    def _gone(self) -> sqlite3.OperationalError:
        return sqlite3.OperationalError(
            f"the database file {str(self.path)!r} no longer exists (deleted or moved since "
            "this process opened it); no new database is created in its place, and events "
            "stay buffered until the file is restored"
        )


class _Anchor:
    """One idle connection held open for as long as the engine, so no close is the last.

    When the last connection to a WAL database closes, SQLite checkpoints the whole log into
    the file and deletes it; with a connection per transaction (NullPool) that happened on
    nearly every commit, and made a batch of 1,000 events about 1.7 times slower to write
    (benchmarks/bench_server.py's SQLite row). The anchor never begins a transaction, so it
    blocks no checkpoint and no writer; it is opened after the first connection has checked
    the file (so it adds no way to create or swap a database) and only ever used by the
    process that opened it (a connection must not cross a fork).
    """

    def __init__(self, file: SqliteFile) -> None:
        self._file = file
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def hold(self, params: dict[str, Any]) -> None:
        if self._conn is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                return
            try:
                conn = self._file.connect({**params, "check_same_thread": False})
                try:
                    # Opens the write-ahead log (as every connection sets it); on a database
                    # with nothing in it yet there is no log to hold: try again next time.
                    conn.execute("PRAGMA journal_mode=WAL").fetchone()
                    empty = not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                except BaseException:
                    conn.close()
                    raise
            except sqlite3.Error:  # the caller's own connection just worked: retry next time
                return
            if empty:
                conn.close()
                return
            self._conn, self._pid = conn, os.getpid()

    def release(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                conn.close()


def _read_identity(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _claim_identity(conn: sqlite3.Connection) -> int:
    """Give a database without an identity one, under the write lock (first writer wins)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = _read_identity(conn)
            if not found:
                found = secrets.randbelow(2**31 - 1) + 1
                conn.execute(f"PRAGMA user_version = {found}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError:  # read-only file or medium: it keeps no identity
        return 0
    return found


def sqlite_engine(url: str, database: str | None, *, create: bool) -> tuple[Engine, bool]:
    """An engine on the SQLite file ``database``; return it and whether the file was created.

    A missing file is created only with ``create`` (first use of a new path, logged);
    otherwise it is refused with a message that says how to create it.
    """
    if not database or database == ":memory:":
        raise StoreUnavailableError(
            "an in-memory SQLite database cannot be shared between connections; "
            "use a file, e.g. sqlite:///policy-canary.db"
        )
    path = Path(database).expanduser().resolve()
    if not path.parent.is_dir():
        raise StoreUnavailableError(
            f"cannot create the SQLite database {database!r}: folder {str(path.parent)!r} "
            "does not exist"
        )
    created = False
    if not path.exists():
        if not create:
            raise StoreUnavailableError(
                f"there is no database at {str(path)!r}; create it with 'policy-canary db "
                "upgrade' (or open it with migrate=True), or fix the path"
            )
        sqlite3.connect(path).close()  # an empty SQLite database is a zero-byte file
        created = True
        _log.info("created a new, empty policy-canary database at %s", path)
    file = SqliteFile(path)
    # NullPool: SQLite connections are cheap to open, and a pool would pin a file handle per
    # thread; each connection gets the pragmas below.
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})
    anchor = _Anchor(file)

    @event.listens_for(engine, "do_connect")
    def _do_connect(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> Any:
        conn = file.connect(params)
        anchor.hold(params)
        return conn

    @event.listens_for(engine, "engine_disposed")
    def _on_dispose(_engine: Engine) -> None:
        anchor.release()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module so BEGIN is ours (see _on_begin).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: two controllers or flushers queue on the
        # lock instead of deadlocking on a read-to-write upgrade.
        read_only = conn.get_execution_options().get("pc_read", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine, created
