"""``Canary.connect()`` against a real ``policy-canary serve`` process, on both backends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from _live import free_port, start, stop
from sqlalchemy import select

from _serving import POLICY, seed_policy, start_rollout, update_rollout
from policy_canary import Canary
from policy_canary.clock import SystemClock
from policy_canary.errors import (
    AuthenticationError,
    ConflictError,
    InputError,
    NotFoundError,
    StoreUnavailableError,
)
from policy_canary.store import Store
from policy_canary.store.schema import events, feedback
from policy_canary.tokens import Tokens


@dataclass
class Setup:
    db_url: str
    store: Store
    stable: str
    candidate: str
    agent: str
    ops: str

    def ops_post(self, base: str, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{base}{path}", json=body, timeout=10, headers={"Authorization": f"Bearer {self.ops}"}
        )


@pytest.fixture
def setup(db_url: str) -> Iterator[Setup]:
    store = Store.open(db_url)
    stable, candidate = seed_policy(store, SystemClock())
    tokens = Tokens(store)
    agent = tokens.create("agent", role="agent", actor="t").secret
    ops = tokens.create("ops", role="operator", actor="t").secret
    yield Setup(db_url, store, stable, candidate, agent, ops)
    store.close()


def until(check: Callable[[], Any], seconds: float = 10.0, step: float = 0.005) -> Any:
    """Bounded polling of real threads and processes."""
    deadline = time.monotonic() + seconds
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(step)
    return value


def stored(store: Store) -> dict[str, Any]:
    with store.read() as conn:
        return {row.decision_id: row for row in conn.execute(select(events))}


def test_route_record_and_feedback_match_direct_mode(setup: Setup) -> None:
    rollout_id = start_rollout(
        setup.store,
        SystemClock(),
        baseline=setup.stable,
        candidate=setup.candidate,
        traffic_bp=3_000,
    )
    proc, base = start(setup.db_url)
    try:
        remote = Canary.connect(base, token=setup.agent, flush_interval=0.05)
        direct = Canary(setup.store, background=False)
        gate, twin = remote.gate(POLICY), direct.gate(POLICY)
        units = [f"user-{i}" for i in range(400)]
        arms = [gate.route(u).arm for u in units]
        assert arms == [twin.route(u).arm for u in units]  # the same splitter, locally
        assert 0 < arms.count("candidate") < 400
        d = gate.route("user-7")
        d.record(
            latency_ms=12.5,
            quality=0.75,
            cost_usd=0.002,
            input_tokens=10,
            output_tokens=20,
            model="m1",
            safety_flags=["pii"],
            metrics={"solved": True},
        )
        with gate.route("user-8") as block:
            pass
        remote.feedback(block.decision_id, quality=0.5)
        remote.feedback(d.decision_id, metrics={"thumbs": 1.0})
        remote.close()
        direct.close()
        assert remote.stats().written == 2
        assert remote.stats().dropped == 0
        rows = stored(setup.store)
        row = rows[d.decision_id]
        assert (row.policy, row.arm, row.rollout_id, row.traffic_bp, row.scheme) == (
            POLICY,
            d.arm.value,
            rollout_id,
            3_000,
            1,
        )
        assert row.version_digest == d.version.id
        assert row.sticky is True
        assert (row.latency_ms, row.quality, row.cost_usd, row.model) == (12.5, 0.75, 0.002, "m1")
        assert json.loads(row.safety_flags) == ["pii"]
        assert row.flag_count == 1
        assert json.loads(row.metrics) == {"solved": True}
        assert rows[block.decision_id].error is False
        with setup.store.read() as conn:
            attached = {(r.decision_id, r.metric) for r in conn.execute(select(feedback))}
        assert attached == {(block.decision_id, "quality"), (d.decision_id, "metrics.thumbs")}
    finally:
        stop(proc)


def test_a_rollback_is_pushed_to_route_within_the_push_latency(setup: Setup) -> None:
    proc, base = start(setup.db_url)
    try:
        # Polling every 30 s cannot explain anything below: only the stream can.
        remote = Canary.connect(base, token=setup.agent, refresh_interval=30)
        gate = remote.gate(POLICY)
        assert until(lambda: remote._refresher.listener is not None)
        started = setup.ops_post(
            base, f"/api/v1/policies/{POLICY}/rollouts", {"candidate": "v2", "reason": "try"}
        )
        assert started.status_code == 201, started.text
        update_rollout(setup.store, started.json()["id"], traffic_bp=10_000)
        assert until(lambda: gate.route("u1").arm == "candidate", 2.0)
        t0 = time.monotonic()
        rolled = setup.ops_post(
            base, f"/api/v1/policies/{POLICY}/rollout/rollback", {"reason": "bad"}
        )
        assert rolled.status_code == 200, rolled.text
        assert until(lambda: gate.route("u1").arm == "stable", 1.0)
        assert time.monotonic() - t0 < 1.0
        assert gate.status().stale is False
        assert gate.status().rollout_id is None
        remote.close()
    finally:
        stop(proc)


def test_server_killed_and_restarted_mid_traffic_loses_no_acknowledged_event(
    setup: Setup,
) -> None:
    port = free_port()
    proc, base = start(setup.db_url, port=port)
    remote = Canary.connect(base, token=setup.agent, refresh_interval=0.2, flush_interval=0.05)
    gate = remote.gate(POLICY)
    recorded: list[str] = []
    stop_traffic = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop_traffic.is_set():
            d = gate.route(f"user-{i}")  # never raises, server or not
            d.record(latency_ms=1.0)
            recorded.append(d.decision_id)
            i += 1
            time.sleep(0.001)

    agent = threading.Thread(target=traffic)
    agent.start()
    try:
        assert until(lambda: remote.stats().written > 50)
        proc.kill()  # no drain, no flush: mid-traffic
        proc.wait(timeout=10)
        assert until(lambda: gate.status().stale, 5.0)
        outage = len(recorded)
        assert until(lambda: len(recorded) > outage + 100)  # route() and record() go on
        assert remote.stats().buffered > 0
        assert gate.status().last_error
        proc, _ = start(setup.db_url, port=port)
        assert until(lambda: not gate.status().stale, 5.0)
    finally:
        stop_traffic.set()
        agent.join(timeout=10)
    remote.close()
    try:
        stats = remote.stats()
        assert stats.dropped == 0, stats
        assert stats.buffered == 0, stats
        assert stats.written == len(recorded)
        assert set(recorded) <= set(stored(setup.store))
    finally:
        stop(proc)


def test_failover_to_the_next_server_when_one_dies(setup: Setup) -> None:
    first, a = start(setup.db_url)
    second, b = start(setup.db_url)
    try:
        remote = Canary.connect(
            [a, b], token=setup.agent, refresh_interval=0.2, flush_interval=0.05
        )
        gate = remote.gate(POLICY)
        gate.route("u0").record(latency_ms=1.0)
        assert until(lambda: remote.stats().written == 1)
        first.kill()
        first.wait(timeout=10)
        ids = []
        for i in range(20):
            d = gate.route(f"u{i + 1}")
            d.record(latency_ms=1.0)
            ids.append(d.decision_id)
        assert until(lambda: remote.stats().written == 21)
        rollout = start_rollout(
            setup.store,
            SystemClock(),
            baseline=setup.stable,
            candidate=setup.candidate,
            traffic_bp=10_000,
        )
        assert until(lambda: gate.table.rollout_id == rollout, 5.0)  # served by b
        assert not gate.status().stale
        remote.close()
        assert set(ids) <= set(stored(setup.store))
    finally:
        stop(second)


def test_connect_refuses_clearly(setup: Setup) -> None:
    with pytest.raises(InputError, match="not a server URL"):
        Canary.connect("ftp://example.com")
    with pytest.raises(InputError, match="at least one server URL"):
        Canary.connect([])
    with pytest.raises(StoreUnavailableError, match="cannot reach the policy-canary server"):
        Canary.connect(f"http://127.0.0.1:{free_port()}", timeout=1)
    proc, base = start(setup.db_url)
    try:
        with pytest.raises(AuthenticationError):
            Canary.connect(base, token="pc_wrong")
        remote = Canary.connect(base, token=setup.agent)
        with pytest.raises(NotFoundError, match="no policy 'nope'"):
            remote.gate("nope")
        with pytest.raises(ConflictError, match="connected to a server"):
            _ = remote.store
        with pytest.raises(ConflictError, match="does not prune"):
            remote.prune(retention=__import__("datetime").timedelta(days=1))
        remote.close()
    finally:
        stop(proc)
