"""A server, a controller and an agent on the remote SDK, as three processes.

The agent serves stable; the server is killed mid-traffic and restarted; a candidate that
regresses (its replies trip a safety tripwire) is rolled out, reaches the agent over the
stream, and is rolled back by the controller; the agent serves stable within the push
latency, and every event it recorded reached the store.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
from _live import CLI, free_port, start, stop
from sqlalchemy import func, select

from _serving import seed_policy
from policy_canary.clock import SystemClock
from policy_canary.store import Store
from policy_canary.store.schema import events, rollouts
from policy_canary.tokens import Tokens

AGENT = Path(__file__).with_name("_agent.py")
PLAN = """\
guardrails:
  - {name: critical, metric: safety_flags, tripwire: true, flags: [critical]}
stages:
  - {name: canary, traffic: 50, min_duration: 10m, max_duration: 1h, min_samples: 10}
"""
#: Rollback commit → the agent's route() answers stable (push: watcher poll + stream).
PUSH_LATENCY = 1.0


def _count(store: Store) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


def _wait(check: object, seconds: float) -> object:
    deadline = time.monotonic() + seconds
    while not (value := check()) and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)
    return value


def test_rollback_reaches_a_remote_agent_across_a_server_restart(
    db_url: str, tmp_path: Path
) -> None:
    store = Store.open(db_url)
    seed_policy(store, SystemClock())
    tokens = Tokens(store)
    agent_token = tokens.create("agent", role="agent", actor="t").secret
    ops = tokens.create("ops", role="operator", actor="t").secret
    port = free_port()
    server, base = start(db_url, port=port)
    controller = agent = None
    try:

        def ops_post(path: str, body: dict[str, object]) -> httpx.Response:
            return httpx.post(
                f"{base}/api/v1/policies/support-agent/{path}",
                json=body,
                headers={"Authorization": f"Bearer {ops}"},
                timeout=10,
            )

        controller = subprocess.Popen(
            [*CLI, "--db", db_url, "controller", "--interval", "0.2s", "--no-alerts"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        agent = subprocess.Popen(
            [sys.executable, str(AGENT), base, agent_token, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert _wait(lambda: _count(store) > 100, 15), "the agent's events do not arrive"
        server.kill()  # mid-traffic: no drain, no flush
        server.wait(timeout=10)
        time.sleep(0.5)  # a real outage: the agent keeps serving and buffering
        server, _ = start(db_url, port=port)
        started = ops_post("rollouts", {"candidate": "v2", "plan": PLAN, "reason": "e2e"})
        assert started.status_code == 201, started.text
        rollout_id = started.json()["id"]

        def ended() -> object:
            with store.read() as conn:
                row = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).one()
            # Seen by this process, polling: at most a poll after the rollback committed.
            return row.state == "rolled_back" and time.time()

        rolled_back_at = _wait(ended, 20)
        assert rolled_back_at, "the controller did not roll the candidate back"
        assert _wait(lambda: (tmp_path / "stable").exists(), 10)
        served_stable = float((tmp_path / "stable").read_text())
        assert served_stable - rolled_back_at < PUSH_LATENCY  # type: ignore[operator]
        (tmp_path / "stop").touch()
        out, err = agent.communicate(timeout=30)
        assert agent.returncode == 0, err
        stats = json.loads(out.splitlines()[-1])
        assert stats["dropped"] == 0
        assert stats["buffered"] == 0
        acked = (tmp_path / "acked").read_text().split()
        assert len(acked) == stats["recorded"] == stats["written"]
        with store.read() as conn:
            kept = set(conn.execute(select(events.c.decision_id)).scalars())
        assert set(acked) <= kept  # no acknowledged event lost
    finally:
        for proc in (agent, controller):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        stop(server)
        store.close()
