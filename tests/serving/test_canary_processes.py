"""Several agent processes on one database: identical routing, all events stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from _serving import POLICY, seed_policy, start_rollout
from policy_canary.clock import ManualClock
from policy_canary.serving import Canary
from policy_canary.store import Store
from policy_canary.store.schema import events

# One agent process: route the given keys, record each, print (rollout, arms, ids).
AGENT = """
import json, sys
from policy_canary.serving._canary import Canary
url, policy, keys = json.loads(sys.argv[1])
with Canary.open(url, background=False) as canary:
    gate = canary.gate(policy)
    decisions = [gate.route(key) for key in keys]
    for d in decisions:
        d.record(latency_ms=1.0)
    print(json.dumps([decisions[0].rollout_id, [d.arm.value for d in decisions],
                      [d.decision_id for d in decisions]]))
"""

KEYS = [f"user-{i}" for i in range(300)]


def _agent(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", AGENT, json.dumps([url, POLICY, KEYS])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_processes_route_the_same_keys_identically_and_share_the_store(
    db_url: str, clock: ManualClock
) -> None:
    store = Store.open(db_url)
    stable_id, candidate_id = seed_policy(store, clock)
    rollout = start_rollout(
        store, clock, baseline=stable_id, candidate=candidate_id, traffic_bp=3000
    )
    agents = [_agent(db_url) for _ in range(2)]  # concurrently, on one database
    results = []
    for process in agents:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    with Canary(store, clock=clock, background=False) as here:
        gate = here.gate(POLICY)
        local = [gate.route(key).arm.value for key in KEYS]
    (rollout_a, arms_a, ids_a), (rollout_b, arms_b, ids_b) = results
    assert rollout_a == rollout_b == rollout
    assert arms_a == arms_b == local
    assert 0 < arms_a.count("candidate") < len(KEYS)
    assert not set(ids_a) & set(ids_b)
    with store.read() as conn:
        stored = set(conn.execute(select(events.c.decision_id)).scalars())
        count = conn.execute(select(func.count()).select_from(events)).scalar_one()
    assert stored == set(ids_a) | set(ids_b)
    assert count == 2 * len(KEYS)
    store.close()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")
def test_a_forked_worker_gets_its_own_ids_buffer_and_flusher(
    db_url: str, clock: ManualClock
) -> None:
    store = Store.open(db_url)
    seed_policy(store, clock)
    with Canary(store, clock=clock, flush_interval=0.01) as canary:
        gate = canary.gate(POLICY)
        parent = [gate.route(f"parent-{i}") for i in range(50)]
        for d in parent:
            d.record(latency_ms=1.0)
        parent_prefix = parent[0].decision_id.rsplit("-", 1)[0]
        pid = os.fork()
        if pid == 0:  # the worker: its flusher thread must write without being asked
            code = 1
            try:
                for i in range(50):
                    gate.route(f"child-{i}").record(latency_ms=2.0)
                deadline = time.monotonic() + 10
                while canary.stats().written < 50 and time.monotonic() < deadline:
                    time.sleep(0.01)
                stats = canary.stats()
                own_ids = not gate.route("x").decision_id.startswith(parent_prefix)
                code = 0 if (stats.written, stats.buffered, own_ids) == (50, 0, True) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    with store.read() as conn:
        rows = conn.execute(select(events.c.decision_id, events.c.latency_ms)).all()
    assert len(rows) == 100
    assert len({row.decision_id for row in rows}) == 100
    assert sorted(row.latency_ms for row in rows) == [1.0] * 50 + [2.0] * 50
    store.close()
