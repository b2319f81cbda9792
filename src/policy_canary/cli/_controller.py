"""``policy-canary controller``: tick every active rollout (and deliver alerts) in a loop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import typer

from policy_canary.alerts import Dispatcher, load_sinks
from policy_canary.cli._options import parse_interval
from policy_canary.cli._output import (
    JsonOption,
    console,
    emit_json,
    log_lines,
    render,
    reporting,
    shown,
    state,
)
from policy_canary.controller import MAX_PROCESSES, Controller, TickReport
from policy_canary.errors import InputError
from policy_canary.store import Store


def _human(report: TickReport) -> None:
    stamp = report.at.strftime("%H:%M:%S")
    if not report.acted:
        console.print(f"{stamp} standing by: {shown(report.holder)} holds the controller lock")
        return
    if not report.outcomes:
        console.print(f"{stamp} no active rollouts", highlight=False)
    for o in report.outcomes:
        if o.error:
            console.print(
                f"{stamp} {shown(o.policy)} [red]skipped[/]: {shown(o.error)}", highlight=False
            )
        elif o.action is not None and (o.recorded or o.action.kind.is_transition()):
            console.print(
                f"{stamp} {shown(o.policy)} {o.action.kind.value}: {shown(o.action.message)}",
                highlight=False,
            )


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM/SIGINT so the loop finishes its tick and releases the lock."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _controller(
    store: Store, holder: str | None, metrics_port: int | None, processes: int
) -> Controller:
    """The controller, metered and exposing /metrics on ``metrics_port`` when one is given."""
    if metrics_port is None:
        return Controller(store, holder=holder, processes=processes)
    try:
        from policy_canary.telemetry import serve_controller_metrics
    except ImportError as exc:
        raise InputError(
            f"--metrics-port needs the [prometheus] extra ({exc.name} is missing): "
            "pip install 'policy-canary[prometheus]'"
        ) from None
    return serve_controller_metrics(store, holder=holder, port=metrics_port, processes=processes)


def controller(
    ctx: typer.Context,
    interval: str = typer.Option("5s", "--interval", help="Time between ticks, e.g. 5s, 1m."),
    once: bool = typer.Option(False, "--once", help="Run one tick (and one alert pass), exit."),
    holder: str | None = typer.Option(
        None, "--holder", help="Name in the controller lock (default host:pid)."
    ),
    no_alerts: bool = typer.Option(
        False, "--no-alerts", help="Do not deliver alerts (another process runs the dispatcher)."
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        min=1,
        max=65535,
        help="Serve Prometheus metrics on this port (/metrics; needs the [prometheus] extra).",
    ),
    processes: int = typer.Option(
        1,
        "--processes",
        min=1,
        max=MAX_PROCESSES,
        help="Tick the rollouts in this many processes at once (one per core; see "
        "docs/operations.md, capacity planning).",
    ),
    json_output: bool = JsonOption,
) -> None:
    """Run the controller: promote healthy candidates stage by stage, roll bad ones back."""
    with reporting(json_output):
        pace = parse_interval(interval)
        store = state(ctx).store()
        dispatcher = None if no_alerts else Dispatcher(store, load_sinks())
        worker = _controller(store, holder, metrics_port, processes)
        dispatch = dispatcher.dispatch_once if dispatcher is not None else None
        if once:
            try:
                report = worker.tick()
                if dispatch is not None:
                    dispatch()
            finally:
                worker.close()
            render(json_output, report.to_dict(), lambda: _human(report))
            return

        def on_tick(report: TickReport) -> None:
            if json_output:
                emit_json(report.to_dict())
            else:
                _human(report)

        stop = threading.Event()
        with _stop_on_signals(stop), log_lines():
            ticks = worker.run(interval=pace, stop=stop, dispatch=dispatch, on_tick=on_tick)
        if not json_output:
            console.print(f"controller stopped after {ticks} ticks; lock released")
