"""`controller --metrics-port`: a controller's leadership, ticks and release state over HTTP."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from _rollout_support import POLICY, setup_policy
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller
from policy_canary.controller._rollouts import Rollouts
from policy_canary.errors import InputError
from policy_canary.store import Store
from policy_canary.telemetry import serve_controller_metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_a_controller_exports_leadership_ticks_and_release_state(
    store: Store, clock: ManualClock
) -> None:
    setup_policy(store, clock)
    Rollouts(store, clock=clock).start(POLICY, candidate="v2", reason="test")
    port = _free_port()
    worker = serve_controller_metrics(store, holder="leader", port=port, host="127.0.0.1")
    standby = Controller(store, holder="standby")
    try:
        before = _scrape(port)
        assert before["policy_canary_controller_leader[]"] == 0
        worker.tick()
        worker.tick()
        after = _scrape(port)
        assert after["policy_canary_controller_leader[]"] == 1
        assert after["policy_canary_controller_ticks_total[('outcome', 'ok')]"] == 2
        assert after["policy_canary_controller_tick_duration_seconds_count[]"] == 2
        assert after["policy_canary_controller_tick_duration_seconds_sum[]"] > 0
        assert after[f"policy_canary_candidate_traffic_ratio[('policy', '{POLICY}')]"] == 0.01
        assert standby.tick().acted is False  # the lock is held: only one leader
    finally:
        worker.close()
        standby.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_busy_metrics_port_is_a_clear_error(store: Store) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InputError, match=f"--metrics-port {port}: cannot listen"):
            serve_controller_metrics(store, holder="x", port=port, host="127.0.0.1")
