"""The SDK's background threads through real store outages: they survive, say so, and recover.

Given an agent whose canary runs its refresher and flusher threads, when the store goes away
for a few seconds (PostgreSQL behind a loopback TCP proxy that the test stops and restarts;
a SQLite database whose folder is moved away and back) and a rollback is committed after it
came back, then ``route()`` serves stable within the refresh interval, ``gate.status()``
reported the outage while it lasted, the events recorded meanwhile are written, and each
thread logged the outage once rather than once per attempt.

Waits are conditions polled in 20 ms steps with deadlines (``eventually``): the outage is
real, so these tests wait on real threads, each for a few seconds at most.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from _outage import eventually, sqlite_unreadable, tcp_proxy
from _serving import POLICY, seed_policy
from policy_canary.clock import ManualClock, SystemClock
from policy_canary.controller import Rollouts
from policy_canary.errors import StoreUnavailableError
from policy_canary.registry import Registry
from policy_canary.serving import Arm, Canary, Gate
from policy_canary.store import Store

#: Short, so that "within the refresh interval after recovery" is a tight promise.
INTERVAL = 0.5
#: What a loaded 2-core machine may add to one poll (a connection, two reads).
SLACK = 1.0


def _candidate_key(gate: Gate) -> str:
    """A unit key the rollout's 1% share sends to the candidate."""
    for i in range(20_000):
        if gate.route(f"user-{i}").arm is Arm.CANDIDATE:
            return f"user-{i}"
    raise AssertionError("no key on the candidate among 20,000")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("policy_canary")
    ]


def _outage_and_rollback(
    canary: Canary, admin: Store, hold: Iterator[None], *, listening: bool
) -> None:
    """Route and record through an outage (``hold`` lasts it), then roll back and time it."""
    rollouts = Rollouts(admin, clock=SystemClock())
    rollouts.start(POLICY, candidate="v2", actor="test", reason="ship it")
    gate = canary.gate(POLICY)
    assert eventually(lambda: gate.status().rollout_id is not None)
    if listening:
        assert eventually(lambda: canary._refresher.listener is not None)
    key = _candidate_key(gate)

    next(hold)  # the store goes away
    assert eventually(lambda: gate.status().last_error is not None), "the outage went unseen"
    down = gate.status()
    assert down.stale is True
    assert "unavailable" in (down.last_error or "")
    for i in range(20):  # the agent keeps serving its last table and recording
        d = gate.route(key)
        assert d.arm is Arm.CANDIDATE
        d.record(latency_ms=float(i))
    assert eventually(lambda: canary.stats().flush_errors > 0)
    # Long enough for every thread to retry (and fail) more than once.
    started = time.monotonic()
    assert eventually(lambda: time.monotonic() - started > 6 * INTERVAL)
    assert gate.status().stale is True
    next(hold, None)  # the store is back

    assert eventually(lambda: gate.status().last_error is None), "never refreshed again"
    rollouts.rollback(POLICY, reason="bad answers", actor="test")
    committed = time.monotonic()
    assert eventually(lambda: gate.route(key).arm is Arm.STABLE, timeout=INTERVAL + SLACK), (
        "the rollback did not reach route() within the refresh interval"
    )
    assert time.monotonic() - committed <= INTERVAL + SLACK
    status = gate.status()
    assert (status.stale, status.rollout_id, status.traffic_bp) == (False, None, 0)
    assert eventually(lambda: canary.stats().buffered == 0)
    assert canary.stats().written >= 20
    assert all(t.is_alive() for t in canary._threads)
    if listening:
        assert eventually(lambda: canary._refresher.listener is not None)


def test_a_postgres_outage_does_not_stop_routing_changes_from_reaching_the_gate(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="policy_canary")
    admin = Store.open(pg_url)
    seed_policy(admin, SystemClock())
    with tcp_proxy(pg_url) as proxy:
        canary = Canary.open(proxy.url_for(pg_url), refresh_interval=INTERVAL)

        def hold() -> Iterator[None]:
            proxy.stop()
            yield
            proxy.start()

        try:
            _outage_and_rollback(canary, admin, hold(), listening=True)
        finally:
            canary.close()
            admin.close()
    # One warning per thread for the whole outage, however many attempts failed.
    warnings = _warnings(caplog)
    assert len(warnings) == 3, warnings
    assert any("routing tables cannot be refreshed" in w for w in warnings)
    assert any("routing changes are polled" in w for w in warnings)
    assert any("events cannot be written" in w for w in warnings)


def test_a_sqlite_outage_does_not_stop_routing_changes_from_reaching_the_gate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="policy_canary")
    database = tmp_path / "db" / "store.db"
    database.parent.mkdir()
    admin = Store.open(str(database))
    seed_policy(admin, SystemClock())
    canary = Canary.open(str(database), refresh_interval=INTERVAL)

    def hold() -> Iterator[None]:
        with sqlite_unreadable(database):
            yield

    try:
        _outage_and_rollback(canary, admin, hold(), listening=False)
    finally:
        canary.close()
        admin.close()
    warnings = _warnings(caplog)
    assert len(warnings) == 2, warnings
    assert any("routing tables cannot be refreshed" in w for w in warnings)
    assert any("events cannot be written" in w for w in warnings)


# -- failures that are not outages: the threads outlive bugs and odd driver errors too -------


class Flaky:
    """Raises ``error`` while ``failing``; otherwise calls through. Counts its calls."""

    def __init__(self, real: Callable[..., Any], error: Exception) -> None:
        self.real = real
        self.error = error
        self.failing = True
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.failing:
            raise self.error
        return self.real(*args, **kwargs)


def test_the_refresher_outlives_an_unexpected_error_and_recovers(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="policy_canary")
    clock = ManualClock()
    seed_policy(store, clock)
    flaky = Flaky(store.read_epoch, RuntimeError("a bug in the refresh"))
    with Canary(store, clock=clock, refresh_interval=0.05, listen=False) as canary:
        gate = canary.gate(POLICY)
        monkeypatch.setattr(store, "read_epoch", flaky)
        assert eventually(lambda: flaky.calls >= 5)
        status = gate.status()
        assert status.stale is True
        assert status.last_error == "RuntimeError: a bug in the refresh"
        flaky.failing = False
        Registry(store, clock=clock).set_stable(POLICY, "v2", reason="after the bug", actor="t")
        assert eventually(lambda: gate.route("u").version.number == 2)
        assert gate.status().last_error is None
        assert all(t.is_alive() for t in canary._threads)
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(failures) == 1  # once for the whole run of failures, with its traceback
    assert failures[0].exc_info is not None
    assert "a bug in the refresh" in failures[0].getMessage()
    assert any("refreshed again" in r.getMessage() for r in caplog.records)


def test_a_raw_driver_error_while_opening_the_listener_is_survived(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(pg_url)
    clock = ManualClock()
    seed_policy(store, clock)
    # What engine.raw_connection() raised during a real outage: the driver's own error.
    flaky = Flaky(store.listen, psycopg.OperationalError("connection refused"))
    monkeypatch.setattr(store, "listen", flaky)
    with Canary(store, clock=clock, refresh_interval=0.05, owns_store=True) as canary:
        gate = canary.gate(POLICY)
        assert eventually(lambda: flaky.calls >= 2)
        flaky.failing = False
        assert eventually(lambda: canary._refresher.listener is not None)
        Registry(store, clock=clock).set_stable(POLICY, "v2", reason="heard", actor="t")
        assert eventually(lambda: gate.route("u").version.number == 2)
        assert all(t.is_alive() for t in canary._threads)


def test_the_listener_reports_an_unreachable_server_as_unavailable(pg_url: str) -> None:
    with tcp_proxy(pg_url) as proxy:
        store = Store.open(proxy.url_for(pg_url))
        proxy.stop()
        try:
            with pytest.raises(StoreUnavailableError, match="cannot listen for routing changes"):
                store.listen()
        finally:
            store.close()


def test_the_flusher_outlives_unexpected_errors_in_flushing_and_pruning(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="policy_canary")
    clock = ManualClock()
    seed_policy(store, clock)
    canary = Canary(store, clock=clock, flush_interval=0.02, prune_interval=0.01)
    try:
        buffer = canary._buffer
        flushing = Flaky(buffer.flush, RuntimeError("a bug in the flush"))
        pruning = Flaky(canary._link.prune, ValueError("a bug in the pruning"))
        monkeypatch.setattr(buffer, "flush", flushing)
        # The flusher thread was handed canary.prune when it started; the loop calls the
        # bound method it holds, so patch what that method calls instead.
        monkeypatch.setattr(canary._link, "prune", pruning)
        gate = canary.gate(POLICY)
        gate.route("u").record(latency_ms=1.0)
        assert eventually(lambda: flushing.calls >= 3 and pruning.calls >= 1)
        flushing.failing = False
        assert eventually(lambda: canary.stats().written == 1)
        assert all(t.is_alive() for t in canary._threads)
    finally:
        canary.close()
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    messages = [r.getMessage() for r in failures]
    assert len(failures) == 2, messages  # one per failing step, however often it failed
    assert all(r.exc_info is not None for r in failures)  # bugs get their traceback, once
    assert any("a bug in the flush" in m for m in messages)
    assert any("a bug in the pruning" in m for m in messages)


def test_a_full_sqlite_database_keeps_events_buffered_until_it_has_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="policy_canary")
    store = Store.open(str(tmp_path / "store.db"))
    seed_policy(store, ManualClock())
    with store.read() as conn:
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())

    def full(dbapi_conn: Any, _record: Any) -> None:
        # SQLITE_FULL, exactly as a full disk reports it: the file may not grow any more.
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(store.engine, "connect", full)
    canary = Canary(store, clock=ManualClock(), flush_interval=0.02, owns_store=True)
    try:
        gate = canary.gate(POLICY)
        for i in range(2_000):
            gate.route(f"user-{i}").record(latency_ms=float(i), model="m" * 100)
        assert eventually(lambda: canary.stats().flush_errors >= 2)
        stats = canary.stats()
        assert "full" in (stats.last_error or "")
        assert stats.buffered > 0
        assert (stats.rejected, stats.dropped) == (0, 0)  # full is "retry", never "refuse"
        event.remove(store.engine, "connect", full)  # room again (new connections only)
        assert eventually(lambda: canary.stats().written == 2_000)
        assert canary.stats().dropped == 0
        assert all(t.is_alive() for t in canary._threads)
    finally:
        canary.close()
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "events cannot be written" in warnings[0]


def test_events_kept_through_an_outage_are_written_when_the_refresher_reaches_the_store(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a flusher deep in its backoff, the refresher's first good poll ends the wait."""
    from policy_canary.serving import _buffer

    # A backoff longer than the test: only the refresher's recovery can end it in time.
    monkeypatch.setattr(_buffer, "retry_delay", lambda *args, **kwargs: 3600.0)
    clock = ManualClock()
    seed_policy(store, clock)
    with Canary(
        store, clock=clock, refresh_interval=0.05, flush_interval=0.05, listen=False
    ) as canary:
        gate = canary.gate(POLICY)
        down = StoreUnavailableError("the store is unavailable")
        read = Flaky(store.read_epoch, down)
        write = Flaky(canary._link.write, down)
        monkeypatch.setattr(store, "read_epoch", read)
        monkeypatch.setattr(canary._link, "write", write)
        gate.route("u").record(latency_ms=1.0)
        assert eventually(lambda: write.calls >= 1 and canary.stats().flush_errors >= 1)
        assert eventually(lambda: read.calls >= 2 and gate.status().stale)
        calls = write.calls
        read.failing = write.failing = False
        assert eventually(lambda: canary.stats().written == 1), canary.stats()
        assert write.calls == calls + 1  # one retry, made when the store came back
        assert gate.status().stale is False
