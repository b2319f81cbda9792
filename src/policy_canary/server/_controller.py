"""``serve --controller``: the controller loop in a daemon thread of the serving process.

The loop is the standalone ``policy-canary controller``'s (:meth:`Controller.run`: tick, then
deliver alerts, every interval), so the lease keeps one controller acting across replicas and
standalone controllers alike; the others tick as standbys and take over when it frees. The
app starts the thread once it is ready and stops it (joined, within a bound) before the
canary closes; with ``--workers N`` the supervisor process runs the one controller instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client.registry import CollectorRegistry

from policy_canary.alerts import AlertSink, Dispatcher, load_sinks
from policy_canary.clock import Clock
from policy_canary.controller import TickReport
from policy_canary.resilience import Outage, describe
from policy_canary.store import Store
from policy_canary.telemetry import ControllerMetrics, MeteredController

_log = logging.getLogger("policy_canary.controller")

#: How long shutdown waits for a tick in progress before the process exits without it.
STOP_SECONDS = 10.0
#: The standalone controller's default pace.
DEFAULT_INTERVAL = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class ControllerOptions:
    """How ``serve --controller`` runs its controller (the standalone command's options)."""

    interval: timedelta = DEFAULT_INTERVAL
    #: The name in the controller lock; ``None``: ``host:pid``.
    holder: str | None = None
    #: Deliver alerts after each tick (``--no-alerts``: another process runs the dispatcher).
    alerts: bool = True
    #: Processes that tick the rollouts at once (``--controller-processes``; see
    #: :class:`Controller`): this one and ``processes - 1`` children it spawns.
    processes: int = 1


class ServedController:
    """One serving process's controller: ticks in a daemon thread until :meth:`stop`.

    No exception ends the thread: :meth:`Controller.run` survives its ticks' and dispatches'
    errors, and should ``run`` itself end by one (releasing the lease on a store that is
    down, say), the thread logs it and runs the loop again. ``echo`` prints one line per
    change of leadership and per transition applied; a failing ``echo`` (a closed stdout) is
    logged once and ignored.
    """

    def __init__(
        self,
        store: Store,
        options: ControllerOptions,
        *,
        clock: Clock | None = None,
        sinks: Sequence[AlertSink] | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.options = options
        self.worker = MeteredController(
            store, clock=clock, holder=options.holder, processes=options.processes
        )
        self.dispatcher = (
            Dispatcher(store, list(load_sinks() if sinks is None else sinks), clock=clock)
            if options.alerts
            else None
        )
        self._echo = echo
        self._echo_failing = Outage(_log, "the in-process controller cannot print its lines")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._released = False
        #: Whether the last tick acted (``None`` before the first tick).
        self.leading: bool | None = None
        #: Ticks completed (acting or standing by).
        self.ticks = 0

    @property
    def holder(self) -> str:
        """This controller's name in the lock."""
        return self.worker.holder

    def banner(self) -> str:
        """The start-up banner's controller line."""
        alerts = "delivers alerts" if self.dispatcher is not None else "no alerts (--no-alerts)"
        processes = self.options.processes
        spread = f" in {processes} processes" if processes > 1 else ""
        return (
            f"controller: in-process as {self.holder}, ticking every "
            f"{self.options.interval.total_seconds():g}s{spread}, {alerts}; the lease keeps "
            "one controller acting across replicas"
        )

    def meter(self, registry: CollectorRegistry) -> None:
        """Report leadership and tick durations in ``registry`` (the server's ``/metrics``)."""
        self.worker.metrics = ControllerMetrics(registry)

    def start(self) -> None:
        """Start ticking in a daemon thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._loop, name="policy-canary-controller", daemon=True
        )
        self._thread.start()

    def stop_soon(self) -> None:
        """Ask the loop to stop after its current tick (safe from a signal handler)."""
        self._stop.set()

    def stop(self, timeout: float = STOP_SECONDS) -> bool:
        """Stop the loop and wait up to ``timeout`` seconds; return whether it ended.

        Idempotent. The loop releases the lease on its way out, so a standby takes over at
        once. A tick
        still running after ``timeout`` (a store that stopped answering) is left behind: the
        thread is a daemon, and a transaction it never committed changes nothing.
        """
        self._stop.set()
        thread = self._thread
        if thread is None or self._stopped:
            return True
        thread.join(timeout)
        if thread.is_alive():
            self._say(
                f"controller {self.holder}: a tick is still running after {timeout:g}s; "
                "exiting without it (an uncommitted tick changes nothing)"
            )
            return False
        self._stopped = True
        lease = (
            "lease released"
            if self._released
            else f"the lease could not be released; it lapses within {self.worker.lock.ttl}"
        )
        self._say(f"controller {self.holder} stopped after {self.ticks} ticks; {lease}")
        return True

    def _loop(self) -> None:
        wait = self.options.interval.total_seconds()
        dispatch = self.dispatcher.dispatch_once if self.dispatcher is not None else None
        while not self._stop.is_set():
            try:
                self.worker.run(
                    interval=self.options.interval,
                    stop=self._stop,
                    dispatch=dispatch,
                    on_tick=self._on_tick,
                )
            except Exception as error:  # run() survives its ticks; this is the line behind it
                # run() ends by an error only in its finally (releasing the lease), or by a bug.
                self._released = False
                if self._stop.is_set():
                    _log.warning("the controller could not release its lease: %s", describe(error))
                else:
                    _log.exception("the in-process controller loop failed; it runs again")
                    self._stop.wait(wait)
            else:
                self._released = True

    def _on_tick(self, report: TickReport) -> None:
        self.ticks += 1
        before, self.leading = self.leading, report.acted
        if report.acted != before:
            self._say(_leadership(self.holder, report, first=before is None))
        for outcome in report.outcomes:
            action = outcome.action
            if outcome.recorded and action is not None and action.kind.is_transition():
                self._say(
                    f"controller {self.holder}: {outcome.policy} {action.kind.value} "
                    f"(revision {outcome.revision}): {action.message}"
                )

    def _say(self, line: str) -> None:
        try:
            self._echo(line)
        except Exception as error:  # e.g. stdout closed: the loop must go on
            self._echo_failing.failed(error)
        else:
            self._echo_failing.recovered("the in-process controller prints again")


def _leadership(holder: str, report: TickReport, *, first: bool) -> str:
    if report.acted:
        verb = "holds" if first else "took"
        return f"controller {holder} {verb} the lease and acts"
    if first:
        return f"controller {holder} stands by: {report.holder} holds the lease"
    return f"controller {holder} lost the lease and stands by: {report.holder} holds it"
