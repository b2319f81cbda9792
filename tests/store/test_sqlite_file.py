"""A SQLite store never creates a database where one was expected, and a vanished file is
"unavailable", not a reason to refuse events.

Given an agent writing events to a SQLite file, when the file is deleted (or replaced by a
different database) while traffic flows, then no empty database appears at the path, the
events stay buffered (none counted as rejected), ``gate.status()`` reports the error, and
the events are written once the original database is back. A store is created only by an
explicit first use of a new path (``migrate=True``), which it reports.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from _serving import POLICY, seed_policy
from policy_canary.clock import ManualClock
from policy_canary.errors import StoreUnavailableError
from policy_canary.registry import Registry
from policy_canary.serving import Canary
from policy_canary.store import Store
from policy_canary.store.schema import events


def _delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _backup(path: Path, to: Path) -> None:
    with sqlite3.connect(path) as source, sqlite3.connect(to) as target:
        source.backup(target)


def _events_in(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def _traffic(canary: Canary, n: int, prefix: str) -> None:
    gate = canary.gate(POLICY)
    for i in range(n):
        gate.route(f"{prefix}-{i}").record(latency_ms=float(i % 50))


def test_a_deleted_file_keeps_events_buffered_and_no_empty_database_appears(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "store.db"
    store = Store.open(f"sqlite:///{path}")
    seed_policy(store, clock)
    canary = Canary(store, clock=clock, background=False, rng=random.Random(2))
    _traffic(canary, 500, "before")
    canary.flush()
    _backup(path, tmp_path / "backup.db")
    _delete(path)
    _traffic(canary, 2_000, "during")
    assert canary.flush() == 0
    stats = canary.stats()
    assert (stats.written, stats.buffered, stats.rejected, stats.dropped) == (500, 2_000, 0, 0)
    assert stats.last_error is not None
    assert "no longer exists" in stats.last_error
    assert not path.exists()  # nothing re-created it
    assert canary.refresh_now() is False
    status = canary.gate(POLICY).status()
    assert status.stale
    assert status.last_error
    assert "no longer exists" in status.last_error
    assert canary.gate(POLICY).route("still-served").version.number == 1
    # The operator restores the backup: the same database, so it is taken up again.
    _backup(tmp_path / "backup.db", path)
    assert canary.flush() == 2_000
    assert canary.refresh_now() is True
    assert _events_in(path) == 2_500  # the backup held the first 500
    assert canary.stats().rejected == 0
    canary.close()
    store.close()


def test_a_different_database_at_the_path_is_not_written_to(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "store.db"
    store = Store.open(f"sqlite:///{path}")
    seed_policy(store, clock)
    canary = Canary(store, clock=clock, background=False)
    _traffic(canary, 10, "before")
    canary.flush()
    _delete(path)
    fresh = Store.open(f"sqlite:///{path}")  # e.g. a CLI run on the missing path: first use
    assert fresh.created
    _traffic(canary, 20, "during")
    assert canary.flush() == 0
    stats = canary.stats()
    assert (stats.buffered, stats.rejected) == (20, 0)
    assert stats.last_error is not None
    assert "replaced by a different database" in stats.last_error
    with fresh.read() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0
    assert Registry(fresh).policies() == []
    canary.close()
    fresh.close()
    store.close()


def test_the_background_flusher_keeps_events_while_the_file_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = Store.open(f"sqlite:///{path}")
    seed_policy(store, ManualClock())
    _backup(path, tmp_path / "backup.db")
    canary = Canary(store, flush_interval=0.02, refresh_interval=0.05)
    canary.gate(POLICY)  # its routing table is loaded while the file is there
    _delete(path)
    _traffic(canary, 2_000, "during")
    deadline = time.monotonic() + 5
    while canary.stats().last_error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = canary.stats()
    assert stats.last_error is not None
    assert "no longer exists" in stats.last_error
    assert (stats.buffered, stats.rejected, stats.written) == (2_000, 0, 0)
    assert not path.exists()
    _backup(tmp_path / "backup.db", path)
    while canary.stats().written < 2_000 and time.monotonic() < deadline + 5:
        time.sleep(0.01)
    assert (canary.stats().written, canary.stats().rejected) == (2_000, 0)
    canary.close()
    store.close()


def test_only_a_first_use_with_migrate_creates_a_database(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with pytest.raises(StoreUnavailableError, match=r"no database at .*db upgrade"):
        Store.open(f"sqlite:///{path}", migrate=False)
    with pytest.raises(StoreUnavailableError, match="no database"):
        Canary.open(f"sqlite:///{path}", migrate=False, background=False)
    assert not path.exists()
    created = Store.open(f"sqlite:///{path}")
    assert created.created
    assert path.exists()
    created.close()
    again = Store.open(f"sqlite:///{path}", migrate=False)
    assert not again.created
    again.close()


def test_the_write_ahead_log_stays_open_between_transactions_and_closes_with_the_store(
    tmp_path: Path,
) -> None:
    """No transaction's close is the last one: SQLite would checkpoint and delete the whole
    log on every commit (the anchor, ``store/_sqlite.py``); closing the store lets it go."""
    path = tmp_path / "anchored.db"
    store = Store.open(f"sqlite:///{path}")
    try:
        for _ in range(3):
            with store.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS scratch (x INTEGER)")
                conn.exec_driver_sql("INSERT INTO scratch VALUES (1)")
            assert Path(f"{path}-wal").exists(), "the log was closed with the transaction"
        with store.read() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM scratch").scalar_one() == 3
    finally:
        store.close()
    assert not Path(f"{path}-wal").exists(), "closing the store left the log open"
    with sqlite3.connect(path) as plain:
        assert plain.execute("SELECT count(*) FROM scratch").fetchone()[0] == 3


def test_a_fresh_store_on_a_new_path_anchors_its_log_once_it_has_tables(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    store = Store.open(f"sqlite:///{path}")
    try:
        with store.begin():
            pass
        assert Path(f"{path}-wal").exists()
    finally:
        store.close()
