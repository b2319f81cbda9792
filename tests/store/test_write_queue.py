"""Writers of one SQLite database take turns across processes, instead of starving each other.

Given a process that holds the write turn while another process waits for it, when the
holder commits and at once asks again, then the waiting process writes first: the one that
just committed passes the turnstile the waiter holds (SQLite's busy handler alone let the
holder win again and again, and two server workers' batches waited 0.8-1.7 s at p99). A
writer that cannot get its turn for the wait limit gets "unavailable", which every
background loop retries, and nothing is written; a forked child and a folder without room
for the queue file still write.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from policy_canary.errors import StoreUnavailableError
from policy_canary.resilience import store_trouble
from policy_canary.store import Store, _sqlite
from policy_canary.store._sqlite import WriteQueue

_CHILD = """
import sys
from sqlalchemy import text
from policy_canary.store import Store
store = Store.open(sys.argv[1])
mode = sys.argv[2]
if mode == "write":
    with store.begin() as conn:
        conn.execute(text("INSERT INTO order_log (who) VALUES ('child')"))
else:  # hold the turn until told to stop
    with store.writes.turn():
        print("holding", flush=True)
        sys.stdin.readline()
"""


def _log(store: Store, who: str) -> None:
    with store.begin() as conn:
        conn.execute(text("INSERT INTO order_log (who) VALUES (:who)"), {"who": who})


def _order(store: Store) -> list[str]:
    with store.read() as conn:
        return list(conn.execute(text("SELECT who FROM order_log ORDER BY n")).scalars())


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.001)


def _waiting(queue: WriteQueue) -> bool:
    """True while another process holds the turnstile (it is waiting for the writer lock)."""
    fd = queue._file()
    assert fd is not None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError:
        return True
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)  # the same descriptor: the writer byte stays held
    return False


def _child(url: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def logged(sqlite_url: str) -> Store:
    store = Store.open(sqlite_url)
    with store.begin() as conn:
        conn.execute(text("CREATE TABLE order_log (n INTEGER PRIMARY KEY, who TEXT NOT NULL)"))
    return store


def test_a_waiting_process_writes_before_the_writer_that_just_committed(
    sqlite_url: str, logged: Store
) -> None:
    assert logged.writes is not None
    with logged.begin() as conn:
        conn.execute(text("INSERT INTO order_log (who) VALUES ('parent')"))
        child = _child(sqlite_url, "write")
        _until(lambda: _waiting(logged.writes), "the child waits at the turnstile")
    _log(logged, "parent again")  # asks again at once, while the child is waiting
    assert child.wait(timeout=60) == 0
    assert _order(logged) == ["parent", "child", "parent again"]


def test_a_writer_that_never_gets_its_turn_is_told_the_store_is_unavailable(
    sqlite_url: str, logged: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "WRITE_WAIT_SECONDS", 0.3)
    holder = _child(sqlite_url, "hold")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(StoreUnavailableError) as raised:
            _log(logged, "never")
        assert "another writer has held the SQLite database" in raised.value.message
        assert store_trouble(raised.value)  # the flusher and the controller retry it
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    assert _order(logged) == []
    _log(logged, "later")  # the turn is free again
    assert _order(logged) == ["later"]


def test_every_store_of_a_process_on_one_file_shares_its_queue(
    sqlite_url: str, tmp_path: Path
) -> None:
    first, second = Store.open(sqlite_url), Store.open(sqlite_url)
    other = Store.open(f"sqlite:///{tmp_path / 'other.db'}")
    assert first.writes is not None
    assert first.writes is second.writes
    assert other.writes is not first.writes
    with first.begin():  # a thread of this process writing through the second store waits
        assert second.writes._local.locked()
    assert not first.writes._local.locked()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_child_forked_while_a_thread_held_the_turn_still_writes(
    logged: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "WRITE_WAIT_SECONDS", 20.0)
    assert logged.writes is not None
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with logged.writes.turn():
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(30)
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread (and its turn) did not come along
        code = 1
        try:
            logged.engine.dispose(close=False)
            _log(logged, "child")
            code = 0
        finally:
            os._exit(code)
    _until(lambda: _waiting(logged.writes), "the forked child waits for its turn")
    release.set()
    holder.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _order(logged) == ["child"]


def test_without_room_for_the_queue_file_writers_queue_in_sqlite_alone_until_there_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_open = os.open
    refusing = True

    def refuse(path: str | os.PathLike[str], *args: int) -> int:
        if refusing and str(path).endswith("-writers"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args)

    monkeypatch.setattr(_sqlite.os, "open", refuse)
    path = tmp_path / "store.db"
    store = Store.open(f"sqlite:///{path}")
    for who in ("one", "two"):
        with store.begin() as conn:
            conn.execute(text(f"CREATE TABLE t_{who} (x INTEGER)"))
    warnings = [r for r in caplog.records if "queue in SQLite only" in r.getMessage()]
    assert len(warnings) == 1
    assert not Path(f"{path}-writers").exists()
    refusing = False  # the folder is writable again: the next write queues across processes
    with store.begin() as conn:
        conn.execute(text("CREATE TABLE t_three (x INTEGER)"))
    assert Path(f"{path}-writers").exists()


def test_without_posix_record_locks_threads_still_take_turns_and_no_file_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "_LOCKS", False)  # as on Windows, which has no fcntl
    path = tmp_path / "store.db"
    store = Store.open(f"sqlite:///{path}")
    assert store.writes is not None
    with store.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        assert store.writes._local.locked()
    assert not Path(f"{path}-writers").exists()


def test_the_queue_file_may_be_written_by_whoever_may_write_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shared.db"
    Store.open(f"sqlite:///{path}").close()
    assert Path(f"{path}-writers").exists()  # made by the first write, with the database's bits
    path.chmod(0o660)  # then a group of service users is given the database
    monkeypatch.setattr(_sqlite, "_queues", {})  # as in the next process to open it
    store = Store.open(f"sqlite:///{path}")
    with store.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    assert Path(f"{path}-writers").stat().st_mode & 0o777 == 0o660
