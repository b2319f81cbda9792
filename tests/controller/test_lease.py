"""The controller lock is a lease on both backends: a silent holder loses it after its ttl.

On PostgreSQL the lock is a session advisory lock; a controller cut off by the network
leaves its session open on the server (nothing tells it otherwise), so the lock's session
sets ``idle_session_timeout`` to the lease's length. Here the first controller takes the
lock and then simply stops renewing it, as a partitioned one would.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import text

from policy_canary.controller import Controller
from policy_canary.store import Store


def test_a_postgres_lock_whose_holder_goes_silent_passes_to_the_standby(pg_url: str) -> None:
    store = Store.open(pg_url)
    leader = Controller(store, holder="leader", lease_ttl=timedelta(seconds=0.5))
    standby = Controller(store, holder="standby", lease_ttl=timedelta(seconds=0.5))
    try:
        assert leader.tick().acted
        assert not standby.tick().acted  # held: the standby waits
        assert leader.tick().acted  # renewed by a tick
        # The leader now goes silent; the server ends its session after the ttl.
        deadline = time.monotonic() + 20
        while not standby.tick().acted and time.monotonic() < deadline:
            time.sleep(0.05)  # bounded polling of the real server's timeout
        assert standby.lock.held, "the standby never got the lock of a silent leader"
        # Back, the old leader finds the lock taken and does not act.
        assert not leader.tick().acted
        assert standby.tick().acted
    finally:
        leader.close()
        standby.close()
        store.close()


def test_the_lock_session_carries_the_lease_length(pg_url: str) -> None:
    store = Store.open(pg_url)
    controller = Controller(store, holder="c", lease_ttl=timedelta(seconds=7))
    try:
        assert controller.tick().acted
        conn = controller.lock._pg
        assert conn is not None
        assert conn.execute(text("SHOW idle_session_timeout")).scalar_one() == "7s"
        conn.commit()
        controller.close()
        # Back in the pool, the connection must not carry the timeout to other work (a
        # LISTEN connection waits silently for minutes): every pooled one shows none.
        held = [store.engine.connect() for _ in range(3)]
        try:
            shown = {c.execute(text("SHOW idle_session_timeout")).scalar_one() for c in held}
        finally:
            for c in held:
                c.close()
        assert shown == {"0"}
    finally:
        controller.close()
        store.close()


def test_run_keeps_the_lease_longer_than_three_intervals(sqlite_url: str) -> None:
    store = Store.open(sqlite_url)
    controller = Controller(store, holder="c", lease_ttl=timedelta(seconds=1))
    stop = threading.Event()
    stop.set()  # run() sets the lease up, then returns at once
    try:
        controller.run(interval=timedelta(seconds=2), stop=stop)
        assert controller.lock.ttl == timedelta(seconds=6)
    finally:
        store.close()
