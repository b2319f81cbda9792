"""policy_canary.testing: the fakes users write their own tests with, used as a user would."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from policy_canary import (
    Canary,
    Controller,
    Dispatcher,
    MemorySink,
    Registry,
    RolloutPlan,
    Rollouts,
    RolloutState,
)
from policy_canary.testing import ManualClock, ScriptedMonitors, temporary_store

PLAN = """\
guardrails:
  - {name: error_rate, metric: error, max_increase: 50%}
stages:
  - {name: canary, traffic: 10, min_duration: 10m, min_samples: 1}
  - {name: soak, traffic: 50, min_duration: 10m, min_samples: 1}
"""


def test_temporary_store_is_migrated_and_removed_afterwards() -> None:
    with temporary_store() as store:
        path = Path(store.url.removeprefix("sqlite:///"))
        assert store.current_revision() == store.head_revision()
        assert path.exists()
    assert not path.parent.exists()


def test_scripted_breach_rolls_back_and_alerts() -> None:
    # Given a running rollout whose monitors the test scripts
    clock, monitors, sink = ManualClock(), ScriptedMonitors(), MemorySink()
    with temporary_store() as store:
        registry = Registry(store, clock=clock)
        registry.register("agent", {"prompt": "v1"}, author="t", message="one")
        registry.register("agent", {"prompt": "v2"}, author="t", message="two")
        rollouts = Rollouts(store, clock=clock, monitors=monitors)
        rollouts.start("agent", candidate="v2", plan=RolloutPlan.loads(PLAN, source="t"))
        controller = Controller(store, clock=clock, monitors=monitors, holder="test")
        with Canary(store, clock=clock, background=False) as canary:
            gate = canary.gate("agent")
            for i in range(50):
                gate.route(f"user-{i}").record(error=False)
            canary.flush()
            # When the monitors say nothing is wrong, the controller holds, then advances
            assert controller.tick().outcomes[0].action.kind.value == "hold"
            assert sum(monitors.folded().values()) == 50
            clock.advance(timedelta(minutes=11))
            assert controller.tick().outcomes[0].action.kind.value == "advance"
            # When error_rate breaches, it rolls back
            monitors.set("error_rate", "breach", reason="error_rate: scripted doubling")
            report = controller.tick()
        assert report.outcomes[0].action.kind.value == "rollback"
        assert rollouts.status("agent")[0].rollout.state is RolloutState.ROLLED_BACK
        controller.close()
        Dispatcher(store, [sink], clock=clock).dispatch_once()
    assert [alert.kind.value for alert in sink.sent][-1] == "rollback"


def test_running_server_serves_the_store_and_writes_what_it_accepted() -> None:
    import httpx
    from sqlalchemy import func, select

    from policy_canary.store.schema import events
    from policy_canary.testing import running_server
    from policy_canary.tokens import Tokens

    with temporary_store() as store:
        Registry(store).register("support-agent", {"prompt": "hi"}, message="m", author="t")
        token = Tokens(store).create("agent", role="agent", actor="t").secret
        with running_server(store) as url:
            assert url.startswith("http://127.0.0.1:")
            assert httpx.get(f"{url}/api/v1/policies").status_code == 401  # auth is on
            agent = Canary.connect(url, token=token, background=False)
            agent.gate("support-agent").route("user-1").record(latency_ms=5.0)
            assert agent.flush() == 1  # the server acknowledged it
            agent.close()
        # Leaving the block drained the server; the store stays open: it is the caller's.
        with store.read() as conn:
            assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 1
