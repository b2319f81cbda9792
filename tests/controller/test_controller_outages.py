"""The controller loop through failures: one full log entry per outage, then one line per tick.

Given ``Controller.run`` ticking every 10 ms, when the store goes away for a while (or a tick
keeps hitting a bug), then the loop keeps running, logs the first failure as one ERROR (with
the traceback only for a bug: store trouble has a message that says what to check), logs one
WARNING line per further failed tick, logs the recovery at INFO, and ticks normally again.
The same holds for one rollout whose tick keeps failing while the others' succeed.

The loop runs on a real thread, so the test waits on it with bounded polling (``eventually``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from _outage import eventually
from _rollout_support import POLICY, CountingMonitors, setup_policy, small_plan
from _serving import store_down
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller, Rollouts, TickReport, _chunk, _loop
from policy_canary.store import Store

INTERVAL = timedelta(milliseconds=10)
LOGGER = "policy_canary.controller"


class Loop:
    """``controller.run`` on a thread; collects its reports, stops and joins on exit."""

    def __init__(self, controller: Controller) -> None:
        self.reports: list[TickReport] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=controller.run,
            kwargs={"interval": INTERVAL, "stop": self.stop, "on_tick": self.reports.append},
        )

    def __enter__(self) -> Loop:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


def _one_line_each(records: list[logging.LogRecord]) -> bool:
    return all(r.exc_info is None and "\n" not in r.getMessage() for r in records)


@pytest.fixture
def controller(store: Store, clock: ManualClock) -> Iterator[Controller]:
    setup_policy(store, clock)
    worker = Controller(store, clock=clock, monitors=CountingMonitors(), holder="outage-test")
    yield worker
    worker.close()


def test_a_store_outage_is_one_error_then_one_line_per_tick_and_no_traceback(
    store: Store, controller: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with store_down(store), Loop(controller) as loop:
        assert eventually(lambda: len(_records(caplog, logging.WARNING)) >= 5)
        assert loop.reports == []
    with Loop(controller) as loop:
        assert eventually(lambda: len(loop.reports) >= 2)
    [error] = _records(caplog, logging.ERROR)
    assert error.getMessage().startswith("controller tick failed; retrying every 0.01s: the store")
    assert "unavailable" in error.getMessage()
    warnings = _records(caplog, logging.WARNING)
    assert _one_line_each([error, *warnings])
    assert all("attempts)" in w.getMessage() for w in warnings)


def test_a_tick_that_keeps_failing_on_a_bug_gets_one_traceback_per_run_of_failures(
    store: Store,
    controller: Controller,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    failing = threading.Event()
    failing.set()
    real = _loop.active_rollouts

    def flaky(*args: Any) -> Any:
        if failing.is_set():
            raise KeyError("a bug in loading rollouts")
        return real(*args)

    monkeypatch.setattr(_loop, "active_rollouts", flaky)
    with Loop(controller) as loop:
        assert eventually(lambda: len(_records(caplog, logging.WARNING)) >= 5)
        failing.clear()
        assert eventually(lambda: len(loop.reports) >= 2)
        assert eventually(lambda: len(_records(caplog, logging.INFO)) >= 1)
    [error] = _records(caplog, logging.ERROR)
    assert error.exc_info is not None  # the one traceback of this run of failures
    assert "KeyError" in error.getMessage()
    assert _one_line_each(_records(caplog, logging.WARNING))
    assert any("controller ticks again" in r.getMessage() for r in _records(caplog, logging.INFO))


def test_one_rollout_failing_every_tick_is_logged_once_then_one_line_per_tick(
    store: Store,
    clock: ManualClock,
    controller: Controller,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    row = Rollouts(store, clock=clock, monitors=CountingMonitors()).start(
        POLICY, candidate="v2", plan=small_plan()
    )
    failing = threading.Event()
    failing.set()
    real: Callable[..., Any] = _chunk.decide

    def flaky(*args: Any) -> Any:
        if failing.is_set():
            raise RuntimeError("a bug in this rollout's tick")
        return real(*args)

    monkeypatch.setattr(_chunk, "decide", flaky)
    with Loop(controller) as loop:
        assert eventually(lambda: len(_records(caplog, logging.WARNING)) >= 4)
        failing.clear()
        assert eventually(lambda: len(_records(caplog, logging.INFO)) >= 1)
        assert loop.reports[0].outcomes[0].error == "a bug in this rollout's tick"
    [error] = _records(caplog, logging.ERROR)
    assert error.exc_info is not None
    assert f"tick of rollout {row.id} ({POLICY}) failed" in error.getMessage()
    assert _one_line_each(_records(caplog, logging.WARNING))
    assert any(f"rollout {row.id} ({POLICY}) ticks again" in r.getMessage() for r in caplog.records)
