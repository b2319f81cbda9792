"""Routed counts through the server: OFREP evaluations, ``POST /api/v1/routed``, remote SDKs."""

from __future__ import annotations

from typing import Any

from _api_support import Api, push
from _live import start, stop
from sqlalchemy import func, select

from _serving import POLICY, seed_policy, start_rollout
from policy_canary import Canary
from policy_canary.clock import SystemClock
from policy_canary.registry import Registry
from policy_canary.store import Store
from policy_canary.store.schema import routed_counts
from policy_canary.tokens import Tokens

SPEC_V2 = {"system_prompt": "v2", "tools": []}


def _totals(store: Store) -> tuple[int, int, int, int]:
    c = routed_counts.c
    with store.read() as conn:
        row = conn.execute(
            select(
                func.coalesce(func.sum(c.routed_stable), 0),
                func.coalesce(func.sum(c.routed_candidate), 0),
                func.coalesce(func.sum(c.recorded_stable), 0),
                func.coalesce(func.sum(c.recorded_candidate), 0),
            )
        ).one()
    return tuple(int(x) for x in row)  # type: ignore[return-value]


def _rollout(api: Api) -> str:
    push(api)
    push(api, spec=SPEC_V2)
    registry = Registry(api.store)
    v1, v2 = registry.resolve(POLICY, "v1").id, registry.resolve(POLICY, "v2").id
    rollout_id = start_rollout(api.store, api.clock, baseline=v1, candidate=v2, traffic_bp=5000)
    api.canary.refresh_now()
    return rollout_id


def test_ofrep_evaluations_count_their_own_routed_decisions(api: Api) -> None:
    _rollout(api)
    ids = []
    for i in range(200):
        body = {"context": {"targetingKey": f"user-{i}"}}
        response = api.post(f"/ofrep/v1/evaluate/flags/{POLICY}", body, "agent")
        assert response.status_code == 200, response.text
        ids.append(response.json()["metadata"]["decisionId"])
    batch = {"events": [{"decision_id": d, "latency_ms": 5} for d in ids[:50]]}
    assert api.post("/api/v1/events", batch, "agent").status_code == 200
    api.canary.flush()
    rs, rc, ks, kc = _totals(api.store)
    assert rs + rc == 200
    assert ks + kc == 50
    assert 0 < rc < 200


def _row(rollout_id: str, **overrides: Any) -> dict[str, Any]:
    row = {
        "policy": POLICY,
        "rollout_id": rollout_id,
        "source": "sdk-1",
        "window_start": "2026-01-01T00:00:00+00:00",
        "window_end": "2026-01-01T00:01:00+00:00",
        "traffic_bp": 5000,
        "stage": "canary",
        "routed_stable": 10,
        "routed_candidate": 12,
        "recorded_stable": 10,
        "recorded_candidate": 3,
    }
    return {**row, **overrides}


def test_routed_rows_are_validated_and_stored_idempotently(api: Api) -> None:
    rollout_id = _rollout(api)
    bad = api.post("/api/v1/routed", {"routed": [_row(rollout_id, routed_stable=-1)]}, "agent")
    assert bad.status_code == 400
    assert "routed_stable must be an integer >= 0" in bad.text
    unknown = api.post("/api/v1/routed", {"routed": [_row("ro_nope")]}, "agent")
    assert unknown.status_code == 404
    assert _totals(api.store) == (0, 0, 0, 0)
    for _ in range(2):  # a retried batch changes nothing
        ok = api.post("/api/v1/routed", {"routed": [_row(rollout_id)]}, "agent")
        assert ok.status_code == 200, ok.text
    assert _totals(api.store) == (10, 12, 10, 3)
    # A later, larger cumulative count replaces the stored one; a stale smaller one does not.
    later = _row(rollout_id, recorded_candidate=9, routed_candidate=13)
    assert api.post("/api/v1/routed", {"routed": [later]}, "agent").status_code == 200
    assert api.post("/api/v1/routed", {"routed": [_row(rollout_id)]}, "agent").status_code == 200
    assert _totals(api.store) == (10, 13, 10, 9)
    assert api.post("/api/v1/routed", {"routed": [_row(rollout_id)]}, "viewer").status_code == 403


def test_remote_sdk_counts_reach_the_store(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        stable, candidate = seed_policy(store, SystemClock())
        agent = Tokens(store).create("agent", role="agent", actor="t").secret
        start_rollout(store, SystemClock(), baseline=stable, candidate=candidate, traffic_bp=3000)
        proc, base = start(db_url)
        try:
            remote = Canary.connect(base, token=agent, flush_interval=0.05)
            gate = remote.gate(POLICY)
            recorded = 0
            for i in range(300):
                decision = gate.route(f"user-{i}")
                if i % 3 == 0:
                    decision.record(latency_ms=1.0)
                    recorded += 1
            remote.close()
            assert remote.stats().last_error is None
        finally:
            stop(proc)
        rs, rc, ks, kc = _totals(store)
        assert (rs + rc, ks + kc) == (300, recorded)
        assert 0 < rc < 300
    finally:
        store.close()
