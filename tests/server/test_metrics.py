"""Prometheus metrics: scraped from the server's /metrics and parsed with prometheus-client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _api_support import Api, make_api
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from _rollout_support import POLICY, insert_events, setup_policy
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller, RolloutState
from policy_canary.controller._rollouts import Rollouts
from policy_canary.store import Store
from policy_canary.telemetry import ReleaseCollector, metrics_registry


@contextmanager
def _serving(store: Store, clock: ManualClock, **kw: Any) -> Iterator[Api]:
    apis = make_api(store, clock, **kw)
    try:
        yield next(apis)
    finally:
        apis.close()


def _scrape(store: Store) -> list[Sample]:
    return _samples(generate_latest(metrics_registry(ReleaseCollector(store))).decode())


def _samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and dict(s.labels) == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def _regressing_rollout(store: Store, clock: ManualClock) -> str:
    """A real rollout that the real monitors roll back on its error rate."""
    setup_policy(store, clock)
    insert_events(store, rollout_id=None, stage=None, at=clock.now(), stable=500, traffic_bp=0)
    row = Rollouts(store, clock=clock).start(POLICY, candidate="v2", reason="test")
    controller = Controller(store, clock=clock, holder="metrics")
    for _ in range(3):
        clock.advance(timedelta(minutes=5))
        insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=100,
                      stable=3000, errors=40)  # fmt: skip
        controller.tick()
    return row.id


def test_scrape_shows_a_running_rollout_its_share_and_its_verdicts(
    store: Store, clock: ManualClock
) -> None:
    setup_policy(store, clock)
    insert_events(store, rollout_id=None, stage=None, at=clock.now(), stable=500, traffic_bp=0)
    row = Rollouts(store, clock=clock).start(POLICY, candidate="v2", reason="test")
    insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=20,
                  stable=2000)  # fmt: skip
    Controller(store, clock=clock, holder="metrics").tick()
    with _serving(store, clock) as api:
        response = api.get("/metrics", who="viewer")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    info = [s for s in samples if s.name == "policy_canary_rollout_info"]
    assert [dict(s.labels) for s in info] == [
        {"policy": POLICY, "rollout": row.id, "state": "running", "stage": "canary"}
    ]
    assert _value(samples, "policy_canary_candidate_traffic_ratio", policy=POLICY) == 0.01
    assert _value(samples, "policy_canary_rollout_phase", policy=POLICY, state="running") == 1
    assert _value(samples, "policy_canary_rollout_phase", policy=POLICY, state="paused") == 0
    statuses = {
        s.labels["status"]: s.value
        for s in samples
        if s.name == "policy_canary_guardrail_verdict" and s.labels["guardrail"] == "error_rate"
    }
    assert sorted(statuses) == ["breach", "insufficient_data", "pass"]
    assert sum(statuses.values()) == 1
    labels = {"policy": POLICY, "guardrail": "error_rate", "metric": "error"}
    (stored,) = [
        v for v in Rollouts(store, clock=clock).get(row.id).verdicts if v.guardrail == "error_rate"
    ]
    threshold = _value(samples, "policy_canary_guardrail_evidence_threshold", **labels)
    assert threshold == pytest.approx(1 / stored.evidence["alpha"])
    assert threshold > 1
    assert _value(samples, "policy_canary_guardrail_evidence", **labels) == pytest.approx(
        stored.evidence["e_value"]
    )
    assert _value(samples, "policy_canary_store_up") == 1
    # Never a unit key or decision id in a label.
    assert not any(k in s.labels for s in samples for k in ("unit_key", "decision_id"))


def test_a_rollback_is_counted_by_its_breached_guardrail(store: Store, clock: ManualClock) -> None:
    rollout_id = _regressing_rollout(store, clock)
    assert Rollouts(store, clock=clock).get(rollout_id).rollout.state is RolloutState.ROLLED_BACK
    samples = _scrape(store)
    assert _value(samples, "policy_canary_rollbacks_total", policy=POLICY, reason="error_rate") == 1
    assert (
        _value(samples, "policy_canary_rollout_transitions_total", policy=POLICY,
               action="rollback", trigger="controller") == 1
    )  # fmt: skip
    assert _value(samples, "policy_canary_rollout_phase", policy=POLICY, state="rolled_back") == 1
    assert _value(samples, "policy_canary_candidate_traffic_ratio", policy=POLICY) == 0


def test_pipeline_counters_come_from_the_servers_canary(store: Store, clock: ManualClock) -> None:
    setup_policy(store, clock)
    with _serving(store, clock, buffer_size=2) as api:
        _pipeline_checks(api, clock)


def _pipeline_checks(api: Api, clock: ManualClock) -> None:
    gate = api.canary.gate(POLICY)
    for i in range(3):  # the third finds the buffer full and is dropped
        gate.route(f"user-{i}").record(latency_ms=5.0)
    samples = _samples(api.get("/metrics", who="viewer").text)
    assert _value(samples, "policy_canary_event_buffer_depth", kind="event") == 2
    assert _value(samples, "policy_canary_events_dropped_total", kind="event",
                  reason="buffer_full") == 1  # fmt: skip
    assert _value(samples, "policy_canary_event_buffer_capacity") == 2
    assert _value(samples, "policy_canary_routing_stale", policy=POLICY) == 0
    api.canary.flush()
    samples = _samples(api.get("/metrics", who="viewer").text)
    assert _value(samples, "policy_canary_events_written_total", kind="event") == 2
    assert _value(samples, "policy_canary_event_buffer_depth", kind="event") == 0
    clock.advance(timedelta(minutes=1))
    samples = _samples(api.get("/metrics", who="viewer").text)
    assert _value(samples, "policy_canary_routing_age_seconds", policy=POLICY) == 60
    assert _value(samples, "policy_canary_routing_stale", policy=POLICY) == 1


def test_metrics_need_a_token_unless_opened(store: Store, clock: ManualClock) -> None:
    with _serving(store, clock) as api:
        _auth_checks(api)


def _auth_checks(api: Api) -> None:
    assert api.get("/metrics", who=None).status_code == 401
    assert api.get("/metrics", who="pc_not_a_real_token").status_code == 401
    assert api.get("/metrics", who="viewer").status_code == 200
    api.client.app.state.metrics_open = True  # what `serve --open-metrics` sets
    assert api.get("/metrics", who=None).status_code == 200


def test_a_scrape_during_a_store_outage_reports_store_down(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'gone.db'}")
    setup_policy(store, ManualClock())
    registry = metrics_registry(ReleaseCollector(store))
    (tmp_path / "gone.db").unlink()
    samples = _samples(generate_latest(registry).decode())
    assert _value(samples, "policy_canary_store_up") == 0
    assert not [s for s in samples if s.name == "policy_canary_rollout_info"]
    store.close()


@pytest.mark.parametrize("name", ["policy_canary_rollbacks", "policy_canary_rollout_transitions"])
def test_counters_follow_the_total_convention(store: Store, clock: ManualClock, name: str) -> None:
    _regressing_rollout(store, clock)
    text = generate_latest(metrics_registry(ReleaseCollector(store))).decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    assert family.type == "counter"
    assert all(s.name == name + "_total" for s in family.samples)
