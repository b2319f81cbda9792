"""Routing changes pushed over PostgreSQL LISTEN/NOTIFY, with polling as the safety net.

Given a store on PostgreSQL (one schema per test) and a canary whose poll interval is a
minute, when a routing change commits through the library, then ``route()`` serves it long
before the next poll; notifications of another schema are ignored; a broken or unavailable
listener degrades to polling and comes back; and ``close()`` does not wait for the poll.

Every wait here is a condition polled in 20 ms steps with a generous deadline, never a fixed
sleep: the deadlines are there to fail a broken build, not to measure anything.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from _serving import POLICY, seed_policy
from policy_canary.clock import ManualClock
from policy_canary.controller import Rollouts
from policy_canary.errors import StoreError, StoreUnavailableError
from policy_canary.registry import Registry
from policy_canary.serving import Canary
from policy_canary.serving._refresher import retry_delay
from policy_canary.store import Store
from policy_canary.store._notify import ROUTING_CHANNEL, ChangeListener

# Far longer than any deadline below: a change that arrives in time came by notification.
NO_POLL = 60.0
DEADLINE = 10.0


def eventually(condition: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    """Poll ``condition`` every 20 ms until it holds or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def listening(canary: Canary) -> ChangeListener | None:
    return canary._refresher.listener


@pytest.fixture
def store(pg_url: str, clock: ManualClock) -> Iterator[Store]:
    """A migrated PostgreSQL store holding the policy (stable v1, candidate v2)."""
    opened = Store.open(pg_url)
    seed_policy(opened, clock)
    yield opened
    opened.close()


@pytest.fixture
def other_pg_url(pg_url: str) -> Iterator[str]:
    """A second store in the same database (another schema), as another tenant's would be."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    url = make_url(pg_url)
    admin = create_engine(url.difference_update_query(["options"]))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def admin(pg_url: str) -> Iterator[Callable[[str], object]]:
    """Run one statement on a connection of its own (to terminate backends, read activity)."""
    engine = create_engine(pg_url)

    def run(statement: str) -> object:
        with engine.begin() as conn:
            return conn.execute(text(statement)).scalar()

    yield run
    engine.dispose()


def test_a_rollout_and_its_rollback_reach_route_before_the_next_poll(
    store: Store, clock: ManualClock
) -> None:
    with Canary(store, clock=clock, refresh_interval=NO_POLL) as canary:
        gate = canary.gate(POLICY)
        # Until LISTEN is in place, the refresher's catch-up read could find the change.
        assert eventually(lambda: listening(canary) is not None)
        rollouts = Rollouts(store, clock=clock)
        started = rollouts.start(POLICY, candidate="v2", actor="test", reason="ship it")
        assert eventually(lambda: gate.route("user-1").rollout_id == started.id)
        assert gate.status().traffic_bp > 0
        rollouts.rollback(POLICY, reason="bad answers", actor="test")
        assert eventually(lambda: gate.route("user-1").rollout_id is None)
        assert gate.status().rollout_state is None
        assert {gate.route(f"user-{i}").version.number for i in range(200)} == {1}


def test_moving_stable_reaches_route_before_the_next_poll(store: Store, clock: ManualClock) -> None:
    with Canary(store, clock=clock, refresh_interval=NO_POLL) as canary:
        gate = canary.gate(POLICY)
        assert eventually(lambda: listening(canary) is not None)
        Registry(store, clock=clock).set_stable(POLICY, "v2", reason="hotfix", actor="test")
        assert eventually(lambda: gate.route("u").version.number == 2)


def test_a_listener_ignores_changes_announced_by_another_schema(
    store: Store, other_pg_url: str
) -> None:
    other = Store.open(other_pg_url)
    listener = store.listen()
    try:
        # The other store's changes commit first, so they reach the listener first; an
        # unfiltered listener would report one of their (higher) epochs.
        for _ in range(5):
            with other.begin() as conn:
                foreign = other.bump_epoch(conn)
        with store.begin() as conn:
            mine = store.bump_epoch(conn)
        assert foreign > mine
        assert listener.wait(DEADLINE) == mine
    finally:
        listener.close()
        other.close()


def test_a_rolled_back_change_is_never_announced(store: Store) -> None:
    listener = store.listen()
    try:
        with store.engine.connect() as conn:
            undone = conn.begin()
            store.bump_epoch(conn)
            store.bump_epoch(conn)
            undone.rollback()
        with store.begin() as conn:
            committed = store.bump_epoch(conn)
        # The rolled-back transaction announced committed + 1; only the commit is heard.
        assert listener.wait(DEADLINE) == committed
    finally:
        listener.close()


def test_a_killed_listener_falls_back_to_polling_and_listens_again(
    store: Store,
    clock: ManualClock,
    admin: Callable[[str], object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="policy_canary.serving")
    registry = Registry(store, clock=clock)
    with Canary(store, clock=clock, refresh_interval=NO_POLL) as canary:
        gate = canary.gate(POLICY)
        assert eventually(lambda: listening(canary) is not None)
        first = listening(canary)
        assert first is not None
        killed = first.backend_pid
        assert admin(f"SELECT pg_terminate_backend({killed})") is True
        # Committed while the listener is deaf: the fallback read after the break (or the
        # catch-up read on reconnecting) must still bring it in, well before the poll.
        registry.set_stable(POLICY, "v2", reason="while deaf", actor="test")
        assert eventually(lambda: gate.route("u").version.number == 2)

        def relistened() -> bool:
            current = listening(canary)
            return current is not None and current.backend_pid != killed

        assert eventually(relistened)
        registry.set_stable(POLICY, "v1", reason="heard again", actor="test")
        assert eventually(lambda: gate.route("u").version.number == 1)
        assert gate.status().last_error is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "polled" in warnings[0].getMessage()
    assert any("listening for routing changes again" in r.getMessage() for r in caplog.records)


def test_a_listener_that_cannot_open_warns_once_polls_and_retries(
    store: Store,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="policy_canary.serving")
    refused = threading.Event()
    refused.set()
    attempts: list[float] = []
    real_listen = store.listen

    def flaky_listen() -> ChangeListener:
        attempts.append(time.monotonic())
        if refused.is_set():
            raise StoreUnavailableError("the store is unavailable: connection refused")
        return real_listen()

    monkeypatch.setattr(store, "listen", flaky_listen)
    # A short poll: while the listener is down, polling is what carries the change.
    with Canary(store, clock=clock, refresh_interval=0.05) as canary:
        gate = canary.gate(POLICY)
        Registry(store, clock=clock).set_stable(POLICY, "v2", reason="polled", actor="test")
        assert eventually(lambda: gate.route("u").version.number == 2)
        assert eventually(lambda: len(attempts) >= 3)
        assert listening(canary) is None
        refused.clear()
        assert eventually(lambda: listening(canary) is not None)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "routing changes are polled every 0.05s until the listener is back: "
        "the store is unavailable: connection refused"
    ]


@pytest.mark.parametrize(
    ("failures", "interval", "delay"),
    [
        (0, 1.0, 1.0),
        (1, 1.0, 2.0),
        (3, 1.0, 8.0),
        (6, 1.0, 60.0),
        (10_000, 1.0, 60.0),
        (0, 0.05, 0.05),
        (2, 0.05, 0.2),
        (0, 60.0, 1.0),
    ],
)
def test_reopening_the_listener_backs_off_to_a_minute(
    failures: int, interval: float, delay: float
) -> None:
    assert retry_delay(failures, interval) == pytest.approx(delay)


def test_close_stops_a_listening_refresher_and_closes_its_connection(
    store: Store, clock: ManualClock, admin: Callable[[str], object]
) -> None:
    canary = Canary(store, clock=clock, refresh_interval=NO_POLL)
    canary.gate(POLICY)
    assert eventually(lambda: listening(canary) is not None)
    listener = listening(canary)
    assert listener is not None
    pid = listener.backend_pid
    # close() must not wait out the minute-long wait on the LISTEN socket.
    closer = threading.Thread(target=canary.close)
    closer.start()
    closer.join(timeout=DEADLINE)
    assert not closer.is_alive()
    assert not any(t.name == "policy-canary-refresh" and t.is_alive() for t in canary._threads)
    assert listening(canary) is None
    assert eventually(
        lambda: admin(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == 0
    )


def test_listen_false_keeps_to_polling(store: Store, clock: ManualClock) -> None:
    with Canary(store, clock=clock, refresh_interval=0.05, listen=False) as canary:
        gate = canary.gate(POLICY)
        Registry(store, clock=clock).set_stable(POLICY, "v2", reason="polled", actor="test")
        assert eventually(lambda: gate.route("u").version.number == 2)
        assert listening(canary) is None


def test_sqlite_has_no_listener_and_says_so(sqlite_url: str, clock: ManualClock) -> None:
    store = Store.open(sqlite_url)
    seed_policy(store, clock)
    assert store.can_listen is False
    with pytest.raises(StoreError, match="polled"):
        store.listen()
    with Canary(store, clock=clock, refresh_interval=0.05, owns_store=True) as canary:
        gate = canary.gate(POLICY)
        Registry(store, clock=clock).set_stable(POLICY, "v2", reason="polled", actor="test")
        assert eventually(lambda: gate.route("u").version.number == 2)
        assert listening(canary) is None


def test_notifications_use_the_documented_channel(store: Store) -> None:
    with store.read() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    listener = store.listen()
    try:
        dsn = make_url(store.url).set(drivername="postgresql").render_as_string(False)
        with psycopg.connect(dsn, autocommit=True) as raw:
            raw.execute(f"LISTEN {ROUTING_CHANNEL}")
            with store.begin() as conn:
                epoch = store.bump_epoch(conn)
            note = next(raw.notifies(timeout=DEADLINE, stop_after=1))
        assert (note.channel, note.payload) == (ROUTING_CHANNEL, f"{schema}:{epoch}")
        assert listener.wait(DEADLINE) == epoch
    finally:
        listener.close()
