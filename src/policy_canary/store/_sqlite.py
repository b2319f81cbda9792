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
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import NullPool

from policy_canary.errors import StoreUnavailableError

try:
    import fcntl
except ImportError:  # no POSIX record locks (Windows): processes queue in SQLite alone
    _LOCKS = False
else:
    _LOCKS = True

_log = logging.getLogger("policy_canary.store")

#: How long a writer waits for its turn before the store counts as unavailable: SQLite's
#: own busy timeout, which stays behind the queue for writers outside it.
WRITE_WAIT_SECONDS = 30.0
#: Between two looks at a taken turn (seconds): short, so a released turn is taken at once.
_POLL_SECONDS = 0.0002
_TURNSTILE, _WRITER = 0, 1  # the two bytes of the queue file that are locked


class WriteQueue:
    """Writers of one SQLite database take turns, across threads and processes.

    SQLite lets one writer in at a time; the others sleep in its busy handler, for 1, 2,
    5, 10 ... up to 100 ms between looks. Two processes writing back to back (server
    workers, a controller) then starve each other: the one that just committed takes the
    lock again within microseconds, the other keeps sleeping, and its batch waited 0.8-1.7 s
    at the 99th percentile (``bench_server.py``, two workers). Here a writer first takes a
    process-wide lock, then two byte locks on ``<database>-writers`` (POSIX record locks,
    which the kernel drops when a process dies): the *turnstile*, then the *writer* lock,
    releasing the turnstile as soon as it holds the writer lock. A writer that has just
    finished must pass the turnstile again, which the next waiter holds while it waits, so
    waiting processes get their turns in alternation instead of by luck. SQLite's own lock
    (``BEGIN IMMEDIATE``) stays the guard of the data; this only orders who asks for it.
    One queue per database file and process (POSIX locks belong to the process, and closing
    any descriptor of the file would drop them), so it is shared by every store on the file.
    """

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = Path(f"{database}-writers")
        self._local = threading.Lock()
        self._fd: int | None = None
        self._pid = os.getpid()
        self._warned = False

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold this database's write turn (raises StoreUnavailableError after 30 s)."""
        if self._pid != os.getpid():  # a forked child: the parent's lock state is not ours
            self._local, self._fd, self._pid = threading.Lock(), None, os.getpid()
        deadline = time.monotonic() + WRITE_WAIT_SECONDS
        if not self._local.acquire(timeout=WRITE_WAIT_SECONDS):
            raise self._timeout()
        try:
            fd = self._file()
            if fd is None:  # no queue file (a read-only folder): SQLite's busy handler only
                yield
                return
            self._take(fd, _TURNSTILE, deadline)
            try:
                self._take(fd, _WRITER, deadline)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, _TURNSTILE)
            try:
                yield
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, _WRITER)
        finally:
            self._local.release()

    def _file(self) -> int | None:
        """The queue file's descriptor; None (tried again next time) when it cannot be had."""
        if not _LOCKS:
            return None
        if self._fd is None:
            try:
                # Whoever may write the database may queue: the file gets the database's
                # permission bits, as SQLite's -wal and -shm files do.
                mode = self.database.stat().st_mode & 0o666
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, mode)
            except OSError as error:  # a read-only folder, the database gone for now
                if not self._warned:
                    _log.warning("writers of %s queue in SQLite only: %s", self.path, error)
                    self._warned = True
                return None
            if os.fstat(fd).st_uid == os.geteuid():
                with suppress(OSError):
                    os.fchmod(fd, mode)  # past the umask
            self._fd = fd
        return self._fd

    def _take(self, fd: int, byte: int, deadline: float) -> None:
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise self._timeout() from None
                time.sleep(_POLL_SECONDS)

    def _timeout(self) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"another writer has held the SQLite database {str(self.database)!r} for over "
            f"{WRITE_WAIT_SECONDS:.0f} s; nothing was written (it is retried): find the "
            "process holding it (a long transaction, a stopped process)"
        )


_queues: dict[str, WriteQueue] = {}
_queues_lock = threading.Lock()


def write_queue(path: Path) -> WriteQueue:
    """The process's one write queue for the database file at ``path``."""
    key = os.path.realpath(path)
    with _queues_lock:
        queue = _queues.get(key)
        if queue is None:
            queue = _queues[key] = WriteQueue(Path(key))
        return queue


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


def sqlite_engine(
    url: str, database: str | None, *, create: bool
) -> tuple[Engine, bool, WriteQueue]:
    """An engine on the SQLite file ``database``: the engine, whether the file was created,
    and the file's write queue.

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

    return engine, created, write_queue(path)
