"""Fakes for your own tests: a manual clock, an in-memory alert sink, a throw-away store,
monitors whose verdicts the test decides, and a real server on a loopback port.

::

    from policy_canary import Canary, Controller, Registry
    from policy_canary.testing import ManualClock, MemorySink, ScriptedMonitors, temporary_store

    def test_my_agent_survives_a_rollback() -> None:
        clock, monitors = ManualClock(), ScriptedMonitors()
        with temporary_store() as store:
            ...                                   # register versions, start a rollout
            monitors.set("error_rate", "breach", reason="errors doubled")
            Controller(store, clock=clock, monitors=monitors).tick()   # rolls back

Nothing here is needed in production; the module imports the controller, so import it from
tests only.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from policy_canary.alerts import MemorySink
from policy_canary.clock import ManualClock
from policy_canary.controller import Monitor, MonitorFactory
from policy_canary.guardrails import GuardrailKind
from policy_canary.monitoring import MonitorEvent, Verdict, VerdictStatus
from policy_canary.plan import RolloutPlan
from policy_canary.store import Store

__all__ = ["ManualClock", "MemorySink", "ScriptedMonitors", "running_server", "temporary_store"]


@contextmanager
def temporary_store(url: str | None = None) -> Iterator[Store]:
    """A freshly migrated store, closed (and, for the default SQLite file, deleted) afterwards.

    Without ``url`` the store is a SQLite file in a new temporary folder; pass a URL to use
    an empty database of your own (e.g. a PostgreSQL schema your test created).
    """
    folder = None
    if url is None:
        folder = tempfile.mkdtemp(prefix="policy-canary-test-")
        url = f"sqlite:///{folder}/store.db"
    store = Store.open(url)
    try:
        yield store
    finally:
        store.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def running_server(store: Store, *, auth: bool = True, open_metrics: bool = False) -> Iterator[str]:
    """``policy-canary serve`` on ``store`` in a background thread; yields its base URL.

    The real app (the ``server`` extra) under uvicorn on a free 127.0.0.1 port, so an agent's
    OTLP exporter, an OpenFeature provider over ``Canary.connect()`` or a Prometheus scrape
    can be tested end to end in one process. With ``auth`` requests need tokens
    (:class:`~policy_canary.tokens.Tokens`). On exit the server drains and writes every
    event it accepted.
    """
    import uvicorn

    from policy_canary.server import create_app
    from policy_canary.serving import Canary

    canary = Canary(store)
    app = create_app(canary, auth=auth, close_canary=True, open_metrics=open_metrics)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="policy-canary-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    try:
        while not server.started:  # bounded: the thread binds its port
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test server did not start on 127.0.0.1:{port}")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        app.state.server.watch.close(wait=False)  # ends open streams, as `serve` does
        server.should_exit = True
        thread.join(timeout=30)
        canary.close()  # no-op when the app's shutdown closed it


class ScriptedMonitors:
    """A :class:`~policy_canary.controller.MonitorFactory` whose verdicts the test sets.

    Every guardrail of every rollout reports ``default`` (``pass``, with the positive evidence
    a strict stage needs, unless told otherwise) until :meth:`set` changes it; the events the
    controller folds are counted per arm in the stored state (:meth:`folded`), so a test can
    also check what reached the monitors.
    """

    def __init__(self, default: VerdictStatus | str = VerdictStatus.PASS) -> None:
        self._default = VerdictStatus(default)
        self._script: dict[str, tuple[VerdictStatus, str | None]] = {}
        self._monitors: dict[int, _ScriptedMonitor] = {}

    def set(
        self, guardrail: str, status: VerdictStatus | str, *, reason: str | None = None
    ) -> None:
        """From now on, ``guardrail`` reports ``status`` (with ``reason``) in every rollout."""
        self._script[guardrail] = (VerdictStatus(status), reason)

    def reset(self) -> None:
        """Every guardrail reports the default again."""
        self._script.clear()

    def folded(self) -> dict[str, int]:
        """Events folded so far by the monitors this factory made, per arm."""
        totals: dict[str, int] = {}
        for monitor in self._monitors.values():
            for arm, n in monitor.data["folded"].items():
                totals[arm] = totals.get(arm, 0) + int(n)
        return totals

    def status_of(self, guardrail: str) -> tuple[VerdictStatus, str | None]:
        """The scripted status and reason of ``guardrail`` (the default if never set)."""
        return self._script.get(guardrail, (self._default, None))

    def create(self, plan: RolloutPlan, baseline: Sequence[MonitorEvent]) -> Monitor:
        """A monitor for ``plan``; ``baseline`` is only counted."""
        data = {
            "plan": plan.canonical(),
            "monitor": len(self._monitors) + 1,
            "folded": {},
            "baseline": len(baseline),
        }
        return self._track(_ScriptedMonitor(self, data))

    def load(self, data: Mapping[str, Any]) -> Monitor:
        """The monitor an earlier tick stored."""
        return self._track(_ScriptedMonitor(self, dict(data)))

    def _track(self, monitor: _ScriptedMonitor) -> _ScriptedMonitor:
        # The controller reloads a rollout's monitor every tick; only the newest copy counts.
        self._monitors[int(monitor.data["monitor"])] = monitor
        return monitor


class _ScriptedMonitor:
    def __init__(self, factory: ScriptedMonitors, data: dict[str, Any]) -> None:
        self._factory = factory
        self.data = data
        self.data["folded"] = dict(self.data.get("folded", {}))

    def fold(self, events: Iterable[MonitorEvent]) -> int:
        n = 0
        folded = self.data["folded"]
        for event in events:
            folded[event.arm] = folded.get(event.arm, 0) + 1
            n += 1
        return n

    def verdicts(self, stage: str | None = None) -> list[Verdict]:
        plan = RolloutPlan.from_frozen(self.data["plan"])
        index = next((i for i, s in enumerate(plan.stages) if s.name == stage), 0)
        verdicts = []
        for guardrail in plan.stage_guardrails(index):
            status, reason = self._factory.status_of(guardrail.name)
            verdicts.append(
                Verdict(
                    guardrail=guardrail.name,
                    metric=guardrail.metric,
                    status=status,
                    action=guardrail.action,
                    reason=reason or f"{guardrail.name}: scripted {status.value}",
                    evidence={"scripted": True, "folded": dict(self.data["folded"])},
                    non_inferior=status is VerdictStatus.PASS,
                    tripwire=guardrail.kind is GuardrailKind.TRIPWIRE,
                )
            )
        return verdicts

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


# Structural checks: the fakes satisfy the protocols the controller expects.
_factory: MonitorFactory = ScriptedMonitors()
del _factory
