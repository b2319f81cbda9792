"""The SDK's entry point: one :class:`Canary` per process, one :class:`Gate` per policy.

::

    canary = Canary.open()                      # $POLICY_CANARY_DB or ./policy-canary.db
    gate = canary.gate("support-agent")
    with gate.route(user_id) as d:
        reply = run_agent(d.spec)
    ...
    canary.feedback(decision_id, quality=0.8)   # minutes or hours later

Routing state comes from the store: the policy's stable version and, while a rollout is
``running`` or ``paused``, its candidate, share and salt. A paused rollout keeps serving its
current share (pausing stops the controller from advancing, it does not reshuffle users);
``promoted``, ``rolled_back`` and ``aborted`` rollouts serve nothing but stable.

A canary owns two background threads: the *refresher* polls the store's cheap routing change
counter (every ``refresh_interval`` seconds) and reloads the routing tables when it moved; the
*flusher* writes buffered events in batches. On PostgreSQL the refresher also LISTENs: each
routing change NOTIFYs on commit and is reloaded at once, polling remaining the safety net
(``_refresher.py``). Tests pass ``background=False`` and drive both with
:meth:`Canary.refresh_now` and :meth:`Canary.flush`.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import random
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING

from policy_canary.clock import Clock, SystemClock
from policy_canary.errors import (
    ConflictError,
    InputError,
    InvalidMetricError,
    NotFoundError,
    first_line,
)
from policy_canary.resilience import loop_interval
from policy_canary.serving._buffer import EventBuffer, IngestStats
from policy_canary.serving._fork import renew_after_fork
from policy_canary.serving._gate import Gate, GateStatus, install_table, rebind_gate
from policy_canary.serving._link import Link, PruneResult, checked_retention
from policy_canary.serving._outcomes import metrics_json, quality_value
from policy_canary.serving._refresher import Refresher
from policy_canary.serving._routed import RoutedCounts
from policy_canary.serving._routing import SpecCache

if TYPE_CHECKING:  # loaded on first use: an agent that only routes never pays for them
    from policy_canary.controller import Controller, Rollouts, TickReport
    from policy_canary.registry import Registry
    from policy_canary.serving._spans import RouteHook
    from policy_canary.store import Store

__all__ = ["Canary", "IngestStats", "PruneResult"]

#: Longest decision id the schema stores.
MAX_DECISION_ID = 40


class Canary:
    """The in-agent SDK: routing tables, gates, the event buffer and its flusher.

    Thread-safe; several processes may share one database. Open with :meth:`open`, close
    with :meth:`close` (also run at interpreter exit) so buffered events are written.

    Options (keyword-only):

    - ``refresh_interval``: seconds between polls of the routing change counter (default 1);
      a new rollout, share change or rollback reaches ``route()`` within one interval.
    - ``listen``: on PostgreSQL, also wait for change notifications (LISTEN/NOTIFY) on one
      dedicated connection per canary, so changes arrive at once (default True). Turn it
      off behind a pooler that does not carry LISTEN (PgBouncer in transaction mode); polling
      works either way, and a listener that fails falls back to it.
    - ``flush_interval``: longest seconds an event waits in the buffer (default 0.5); a full
      batch is written at once.
    - ``buffer_size``: events (and, separately, feedback rows) held before new ones are
      dropped and counted (default 100,000); ``batch_size``: rows per transaction.
    - ``retention``: raw events and feedback older than this are pruned (default 30 days;
      None keeps everything); the flusher prunes every ``prune_interval`` seconds (default
      one hour). Events of a rollout still running or paused are kept.
    - ``stale_after``: the age beyond which :meth:`Gate.status` calls a table stale
      (default three refresh intervals).
    - ``background``: start the refresher and flusher threads (default True).
    - ``clock`` and ``rng``: injected time and randomness (tests, simulations).
    - ``owns_store``: close the store with the canary (:meth:`open` sets it).
    - ``link``: where tables come from and events go instead of ``store``
      (:meth:`connect` passes a server's).
    - ``trace_spans``: add each assignment to the current OpenTelemetry span as a
      ``feature_flag.evaluation`` event (needs the ``otel`` extra; default off, and then
      OpenTelemetry is never imported). See docs/integrations.md.
    """

    def __init__(
        self,
        store: Store | None,
        *,
        clock: Clock | None = None,
        refresh_interval: float = 1.0,
        flush_interval: float = 0.5,
        buffer_size: int = 100_000,
        batch_size: int = 5_000,
        retention: timedelta | None = timedelta(days=30),
        prune_interval: float = 3600.0,
        stale_after: timedelta | None = None,
        background: bool = True,
        rng: random.Random | None = None,
        listen: bool = True,
        owns_store: bool = False,
        link: Link | None = None,
        trace_spans: bool = False,
    ) -> None:
        refresh_interval = loop_interval("refresh_interval", refresh_interval)
        flush_interval = loop_interval("flush_interval", flush_interval)
        prune_interval = loop_interval("prune_interval", prune_interval)
        if retention is not None:
            checked_retention(retention)
        if link is None:
            if store is None:
                raise InputError("Canary() needs a store; or use Canary.open() / .connect()")
            # The store's side of the serving path; loaded with the store (and SQLAlchemy).
            from policy_canary.serving._direct import StoreLink

            link = StoreLink(store)
        self._store = store
        self._link: Link = link
        self._clock: Clock = clock or SystemClock()
        # Every record() stamps its event; for the wall clock, calling datetime.now directly
        # skips a Python frame (a tenth of record()'s budget). Any other clock is honoured.
        self._event_time: Callable[[], datetime] = (
            functools.partial(datetime.now, UTC)
            if type(self._clock) is SystemClock
            else self._clock.now
        )
        self._refresh_interval = refresh_interval
        self._listen = listen
        self._flush_interval = flush_interval
        self._retention = retention
        self._prune_interval = prune_interval
        self._stale_after = stale_after or timedelta(seconds=3 * refresh_interval)
        self._rng = rng or random.Random()
        self._owns_store = owns_store
        self._on_route: RouteHook | None = None
        if trace_spans:  # only then is OpenTelemetry imported
            from policy_canary.serving._spans import span_hook

            self._on_route = span_hook()
        # Decision ids: a random per-canary prefix plus a counter. Unique across processes
        # and restarts without a database round trip, and cheap: the id text is only built
        # when it is read or recorded. ``count.__next__`` is atomic under the GIL.
        self._id_prefix = secrets.token_hex(8) + "-"
        self._next_id = itertools.count(1).__next__
        self._next_feedback = itertools.count(1).__next__
        self._specs = SpecCache()
        self._gates: dict[str, Gate] = {}
        self._refresh_lock = threading.Lock()
        self._epoch: int | None = None
        # (last success, last attempt, last error): replaced as one tuple so status() can
        # read it without waiting for a refresh that is stuck on a slow store.
        self._refreshed: tuple[datetime | None, datetime | None, str | None] = (None, None, None)
        self._buffer_size = buffer_size
        self._batch_size = batch_size
        self._background = background
        self._closed = False
        self._start_pipeline()
        renew_after_fork(self)
        atexit.register(self.close)

    @classmethod
    def open(
        cls,
        db_url: str | None = None,
        *,
        migrate: bool = True,
        clock: Clock | None = None,
        refresh_interval: float = 1.0,
        flush_interval: float = 0.5,
        buffer_size: int = 100_000,
        batch_size: int = 5_000,
        retention: timedelta | None = timedelta(days=30),
        prune_interval: float = 3600.0,
        stale_after: timedelta | None = None,
        background: bool = True,
        rng: random.Random | None = None,
        listen: bool = True,
        trace_spans: bool = False,
    ) -> Canary:
        """Open the store (``db_url``, else ``$POLICY_CANARY_DB``, else ./policy-canary.db).

        Raises :class:`StoreUnavailableError` when the database cannot be reached: without a
        routing table there is nothing safe to serve. See the class for the options.
        """
        from policy_canary.store import Store

        store = Store.open(db_url, migrate=migrate)
        return cls(
            store,
            clock=clock,
            refresh_interval=refresh_interval,
            flush_interval=flush_interval,
            buffer_size=buffer_size,
            batch_size=batch_size,
            retention=retention,
            prune_interval=prune_interval,
            stale_after=stale_after,
            background=background,
            rng=rng,
            listen=listen,
            owns_store=True,
            trace_spans=trace_spans,
        )

    @classmethod
    def connect(
        cls,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        timeout: float = 5.0,
        clock: Clock | None = None,
        refresh_interval: float = 1.0,
        flush_interval: float = 0.5,
        buffer_size: int = 100_000,
        batch_size: int = 1_000,
        stale_after: timedelta | None = None,
        background: bool = True,
        rng: random.Random | None = None,
        listen: bool = True,
        trace_spans: bool = False,
    ) -> Canary:
        """A canary served by a ``policy-canary serve`` (no database credentials needed).

        ``url`` is one server URL or a list to fail over across (replicas behind different
        addresses); ``token`` an agent (or viewer, to route only) token. Routing tables
        arrive over the server's event stream (``listen``) and are polled every
        ``refresh_interval`` seconds either way; events and feedback go in batches of
        ``batch_size``. Same API and guarantees as :meth:`open`: a server that goes away
        leaves ``route()`` on its last tables and ``gate.status()`` stale; the buffer keeps
        what was recorded, bounded, and a batch counts as written once the server committed
        it. Raises :class:`StoreUnavailableError` when no server answers and
        :class:`AuthenticationError` for a refused token. ``registry``, ``rollouts``,
        ``tick()`` and ``prune()`` need a store and raise :class:`ConflictError` here.
        """
        from policy_canary.serving._remote import connect_link

        return cls(
            None,
            link=connect_link(url, token=token, timeout=timeout),
            clock=clock,
            refresh_interval=refresh_interval,
            flush_interval=flush_interval,
            buffer_size=buffer_size,
            batch_size=batch_size,
            retention=None,
            stale_after=stale_after,
            background=background,
            rng=rng,
            listen=listen,
            owns_store=True,
            trace_spans=trace_spans,
        )

    @property
    def store(self) -> Store:
        """The store this canary reads routing tables from and writes events to."""
        if self._store is None:
            raise ConflictError(
                "this canary is connected to a server (Canary.connect) and has no store; "
                "use the server's API, or Canary.open(db_url) where the database is reachable"
            )
        return self._store

    @functools.cached_property
    def registry(self) -> Registry:
        """The policy registry of this canary's store (same clock)."""
        from policy_canary.registry import Registry

        return Registry(self.store, clock=self._clock)

    @functools.cached_property
    def rollouts(self) -> Rollouts:
        """Start, inspect and steer rollouts in this canary's store (same clock)."""
        from policy_canary.controller import Rollouts

        return Rollouts(self.store, clock=self._clock)

    @functools.cached_property
    def controller(self) -> Controller:
        """A controller on this canary's store; production runs ``policy-canary controller``."""
        from policy_canary.controller import Controller

        return Controller(self.store, clock=self._clock)

    def tick(self) -> TickReport:
        """Run one synchronous controller evaluation (for tests, scripts and simulations).

        Buffered events are flushed first so the controller sees them, and routing tables
        are refreshed afterwards so the next ``route()`` reflects what the tick decided.
        Raises :class:`ConflictError` once the canary is closed.
        """
        self._check_open("tick()")
        self.flush()
        report = self.controller.tick()
        self.refresh_now()
        return report

    # -- routing --------------------------------------------------------------------------

    def gate(self, policy: str) -> Gate:
        """Return the gate of ``policy``, loading its routing table on first use.

        Raises :class:`NotFoundError` for an unknown policy,
        :class:`StoreUnavailableError` if the table cannot be loaded the first time, and
        :class:`ConflictError` for a new gate once the canary is closed.
        """
        gate = self._gates.get(policy)
        if gate is not None:
            return gate
        self._check_open("gate()")
        if not isinstance(policy, str) or not policy:
            raise InputError("policy must be a non-empty policy name, e.g. 'support-agent'")
        with self._refresh_lock:
            gate = self._gates.get(policy)
            if gate is not None:
                return gate
            epoch, tables = self._link.load([policy], specs=self._specs, known_epoch=None)
            table = self._routed.attach(tables[policy], self._clock.now())
            gate = Gate(
                self._gate_status,
                table,
                add=self._buffer.add,
                now=self._event_time,
                rng=self._rng,
                ids=self._next_id,
                id_prefix=self._id_prefix,
                on_route=self._on_route,
            )
            self._gates[policy] = gate
            if self._epoch is None:
                self._epoch = epoch
                now = self._clock.now()
                self._refreshed = (now, now, None)
            return gate

    def gate_statuses(self) -> list[GateStatus]:
        """The status of every gate opened so far, by policy (metrics read this)."""
        return [self._gate_status(g) for _, g in sorted(self._gates.items())]

    def refresh_now(self) -> bool:
        """Reload the routing tables if the store's change counter moved; True on success.

        Never raises for store trouble: the gates keep their last tables, and
        :meth:`Gate.status` reports the error and the tables' age. Raises
        :class:`ConflictError` once the canary is closed.
        """
        self._check_open("refresh_now()")
        return self._refresh() is None

    def _refresh(self) -> BaseException | None:
        """Reload the tables if the counter moved; return the error when that failed."""
        with self._refresh_lock:
            now = self._clock.now()
            loaded_at = self._refreshed[0]
            try:
                epoch, tables = self._link.load(
                    self._gates, specs=self._specs, known_epoch=self._epoch
                )
            except Exception as error:  # whatever went wrong, the gates keep their last tables
                self._refreshed = (loaded_at, now, f"{type(error).__name__}: {first_line(error)}")
                return error
            for name, table in tables.items():
                # One reference assignment per gate: route() sees the old or the new table,
                # never a mix.
                install_table(self._gates[name], self._routed.attach(table, now))
            self._epoch = epoch
            self._refreshed = (now, now, None)
            return None

    def _gate_status(self, gate: Gate) -> GateStatus:
        stats = self._buffer.stats()
        loaded, attempt, error = self._refreshed
        return GateStatus.of(
            gate.table,
            loaded_at=loaded,
            attempt=attempt,
            error=error,
            now=self._clock.now(),
            stale_after=self._stale_after,
            buffered=stats.buffered,
            dropped=stats.dropped,
        )

    # -- late feedback --------------------------------------------------------------------

    def feedback(
        self,
        decision_id: str,
        *,
        quality: float | None = None,
        metrics: Mapping[str, float | bool] | None = None,
    ) -> None:
        """Attach a late score (an LLM judge, a user's thumbs) to an earlier decision.

        Safe to retry: a decision keeps one value per metric, the first (its own recorded
        value, else the first feedback); repeats are ignored and counted in
        :attr:`IngestStats.feedback_duplicates`, in this process or any later one.
        The decision may be from this process (even if not yet written) or from any process
        whose events reached the store, including before a restart. Raises
        :class:`NotFoundError` for an unknown decision and :class:`InvalidMetricError` for a
        bad value. A decision of another process costs one indexed lookup; if the store
        cannot be reached for it, the feedback is buffered and checked when it is written
        (refused ones are counted in :meth:`stats`). After :meth:`close`, valid feedback is
        dropped and counted (``stats().feedback_dropped_closed``), like ``record()``.
        """
        if not isinstance(decision_id, str) or not 0 < len(decision_id) <= MAX_DECISION_ID:
            raise NotFoundError(
                f"{decision_id!r} is not a decision id; pass Decision.decision_id as recorded"
            )
        if quality is None and not metrics:
            raise InvalidMetricError("feedback needs a quality score or metrics, got neither")
        score = quality_value(quality) if quality is not None else None
        metrics_text = metrics_json(metrics)
        if self._closed:
            self._buffer.drop_closed_feedback()
            return
        verified = decision_id.startswith(self._id_prefix)
        # While the refresher is failing the store is known to be down: do not make the
        # agent wait for a connection timeout, check the id when the row is written.
        store_down = self._refreshed[2] is not None
        if not verified and not store_down:
            found = self._link.decision_known(decision_id)
            if found is False:
                raise NotFoundError(
                    f"no decision {decision_id!r} in the store; feedback must name a "
                    "decision routed by a gate (its events reach the store within a "
                    "flush interval)"
                )
            # None: cannot check now; buffered, and checked when it is written.
            verified = found is True
        key = f"{self._id_prefix}f{self._next_feedback()}"
        self._buffer.add_feedback(
            (decision_id, self._clock.now(), score, metrics_text, verified, key)
        )

    # -- the event pipeline ---------------------------------------------------------------

    def flush(self) -> int:
        """Write everything buffered now; return the number of events written.

        Never raises for store trouble; what could not be written stays buffered (see
        :meth:`stats`). Raises :class:`ConflictError` once the canary is closed.
        """
        self._check_open("flush()")
        return self._buffer.flush()

    def stats(self) -> IngestStats:
        """Counters of the event pipeline: written, buffered, dropped, errors."""
        return self._buffer.stats()

    def prune(
        self, now: datetime | None = None, *, retention: timedelta | None = None
    ) -> PruneResult:
        """Delete events and feedback older than ``now - retention``; return the counts.

        Events of rollouts that are still running or paused, and their feedback, are kept
        whatever their age: their monitors may still need them. ``retention`` (default: the
        canary's) must be a positive timedelta; zero or negative is refused.
        """
        keep_for = self._retention if retention is None else checked_retention(retention)
        if keep_for is None:
            raise InputError("no retention configured; pass retention=timedelta(days=...)")
        return self._link.prune((now or self._clock.now()) - keep_for)

    # -- background threads ---------------------------------------------------------------

    def _start_pipeline(self) -> None:
        """Create the event buffer and (with ``background``) start the two threads."""
        self._wake = threading.Event()
        self._closing = threading.Event()
        # Routed decisions per window, written with the events (serving/_routed.py).
        self._routed = RoutedCounts(self._id_prefix.rstrip("-"))
        self._buffer = EventBuffer(
            self._link,
            routed=self._routed,
            now=self._clock.now,
            capacity=self._buffer_size,
            batch_size=self._batch_size,
            wake=self._wake,
        )
        self._refresher = Refresher(
            self._link,
            refresh=self._refresh,
            interval=self._refresh_interval,
            closing=self._closing,
            listen=self._listen,
            on_recovered=self._buffer.retry_now,
        )
        self._threads: list[threading.Thread] = []
        if self._background:
            self._threads.append(self._refresher.start())
            flusher = functools.partial(
                self._buffer.run,
                interval=self._flush_interval,
                closing=self._closing,
                housekeeping=self.prune if self._retention is not None else None,
                housekeeping_interval=self._prune_interval,
            )
            thread = threading.Thread(target=flusher, name="policy-canary-flush", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _after_fork(self) -> None:
        """Give a forked child its own identity, buffer, threads and connections.

        Without this a pre-fork server's workers would mint the parent's decision ids (and
        lose events to the unique constraint), share its pooled connections, and have no
        flusher, because threads do not survive fork. The parent's LISTEN connection is
        left alone (psycopg only closes a connection in the process that opened it); the
        child's refresher opens its own.
        """
        if self._closed:
            return
        self._link.after_fork()  # never touch the parent's connections
        self._refresh_lock = threading.Lock()
        self._id_prefix = secrets.token_hex(8) + "-"
        self._next_id = itertools.count(1).__next__
        # The parent still owns (and will write) what it had buffered.
        self._start_pipeline()
        now = self._clock.now()
        for gate in self._gates.values():
            rebind_gate(gate, add=self._buffer.add, ids=self._next_id, id_prefix=self._id_prefix)
            install_table(gate, self._routed.attach(gate.table, now))

    # -- life cycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background threads, write what is buffered, release the store.

        Idempotent; registered with :mod:`atexit`. Events that cannot be written because
        the store is down are counted in :meth:`stats` as still buffered. Afterwards
        ``route()`` still answers from the last tables, ``record()`` and :meth:`feedback`
        drop their rows and count them (``stats().dropped_closed``), and :meth:`flush`,
        :meth:`tick`, :meth:`refresh_now` and new gates raise :class:`ConflictError`.
        """
        if self._closed:
            return
        self._closed = True
        for gate in self._gates.values():  # before the last flush: nothing may queue behind it
            rebind_gate(
                gate, add=self._buffer.drop_closed, ids=self._next_id, id_prefix=self._id_prefix
            )
        self._closing.set()
        self._wake.set()
        self._buffer.retry_now()  # a flusher backing off must not hold close() up
        self._refresher.wake()  # it may be waiting on its LISTEN connection
        for thread in self._threads:
            thread.join(timeout=30)
        self._buffer.flush()
        atexit.unregister(self.close)
        if "controller" in self.__dict__:  # only if tick() ever built one
            self.controller.close()
        if self._owns_store:
            self._link.close()

    def _check_open(self, call: str) -> None:
        if self._closed:
            raise ConflictError(
                f"{call} on a closed canary; open a new one with Canary.open() "
                "(close() runs last, when the agent stops)"
            )

    def __enter__(self) -> Canary:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
