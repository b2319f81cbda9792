"""The controller: load each active rollout, fold new events, decide, apply — one tick at a time."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from policy_canary.clock import Clock, SystemClock
from policy_canary.controller._apply import AppliedAction, apply_decision
from policy_canary.controller._decide import decide
from policy_canary.controller._lock import ControllerLock, default_holder
from policy_canary.controller._model import Action, ActionKind, RolloutSnapshot
from policy_canary.controller._monitoring import (
    Ledger,
    Monitor,
    MonitorFactory,
    StatisticalMonitors,
    event_from_row,
    feedback_from_row,
    routed_windows,
)
from policy_canary.controller._rows import (
    Cursors,
    Rollout,
    StaleRevisionError,
    active_rollouts,
    last_tick,
    load_rollout,
)
from policy_canary.controller._state import StoredState, require_state
from policy_canary.errors import InputError, first_line
from policy_canary.monitoring import GRACE_SECONDS, MonitorEvent
from policy_canary.plan import RolloutPlan
from policy_canary.registry import lock_policy
from policy_canary.resilience import Outage
from policy_canary.serving._feedback import first_observations
from policy_canary.store import Horizon, Store, visible_through
from policy_canary.store._audit import check_short_text
from policy_canary.store.schema import events, feedback

_log = logging.getLogger("policy_canary.controller")

#: Events read per query while folding; a tick keeps reading until it has seen them all.
DEFAULT_BATCH = 5_000
#: Rollouts ticked per transaction (each inside its own savepoint).
DEFAULT_CHUNK = 50
#: Frozen plans kept parsed (by hash); past it the memo starts again.
_PLANS_KEPT = 4_096
#: How long the controller lease lasts without renewal (SQLite's row, PostgreSQL's session).
DEFAULT_LEASE_TTL = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class _Warm:
    """A rollout's monitor, ledger and cursors in memory, valid while its revision is."""

    revision: int
    monitor: Monitor
    ledger: Ledger
    cursors: Cursors


@dataclass(frozen=True, slots=True)
class TickOutcome:
    """What one tick did with one rollout.

    ``recorded`` is false when nothing changed (no new events, the same hold as last time):
    that is what makes ticks idempotent. ``error`` explains a rollout the tick had to skip.
    """

    rollout_id: str
    policy: str
    action: Action | None
    recorded: bool
    revision: int
    events_folded: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "rollout_id": self.rollout_id,
            "policy": self.policy,
            "action": self.action.to_dict() if self.action else None,
            "recorded": self.recorded,
            "revision": self.revision,
            "events_folded": self.events_folded,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class TickReport:
    """One tick over every active rollout; ``acted`` is false when another controller leads."""

    at: datetime
    acted: bool
    holder: str
    outcomes: tuple[TickOutcome, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "at": self.at.isoformat(),
            "acted": self.acted,
            "holder": self.holder,
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


class Controller:
    """Walks every active rollout through its plan; see :meth:`tick` and :meth:`run`.

    Only one controller per store acts at a time (:class:`ControllerLock`); a controller that
    does not hold the lock ticks as a no-op. ``holder`` names this controller in the lock —
    a restarted controller given the same ``holder`` takes its SQLite lease back at once.
    ``chunk_size`` rollouts are ticked per transaction, each inside a savepoint of its own.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        monitors: MonitorFactory | None = None,
        holder: str | None = None,
        lease_ttl: timedelta = DEFAULT_LEASE_TTL,
        batch_size: int = DEFAULT_BATCH,
        chunk_size: int = DEFAULT_CHUNK,
        actor: str = "controller",
    ) -> None:
        if chunk_size < 1:
            raise InputError(
                f"chunk_size must be at least 1 (rollouts per transaction); got {chunk_size}"
            )
        self.store = store
        self.clock = clock or SystemClock()
        self.monitors: MonitorFactory = monitors or StatisticalMonitors()
        self.holder = check_short_text(holder or default_holder(), what="--holder")
        self.batch_size = batch_size
        self.actor = check_short_text(actor, what="the controller's actor")
        self.lock = ControllerLock(store, holder=self.holder, ttl=lease_ttl, clock=self.clock)
        self.chunk_size = chunk_size
        # Rollouts whose tick keeps failing: each run of failures is logged in full once.
        self._failing: dict[str, Outage] = {}
        # The ids this tick may read up to (store/_visibility.py); set at each tick's start.
        self._horizon = Horizon()
        # Each active rollout's monitor as of its last committed tick, keyed by revision.
        self._warm: dict[str, _Warm] = {}
        self._plans: dict[str, RolloutPlan] = {}

    # -- one tick -------------------------------------------------------------------------

    def tick(self) -> TickReport:
        """Evaluate every active rollout once (synchronously) and apply what decide() says."""
        now = self.clock.now()
        if not self.lock.acquire():
            return TickReport(at=now, acted=False, holder=self.lock.owner() or "another controller")
        with self.store.read() as conn:
            pending = [(r.id, r.policy) for r in active_rollouts(conn)]
            # Before any rollout's transaction: rows up to it are visible to the transactions
            # that follow, and a horizon stays valid once computed (store/_visibility.py).
            self._horizon = visible_through(conn)
        active = {rid for rid, _ in pending}
        for gone in self._warm.keys() - active:  # ended rollouts leave the memory
            del self._warm[gone]
        outcomes: list[TickOutcome] = []
        for first in range(0, len(pending), self.chunk_size):
            outcomes.extend(self._tick_chunk(pending[first : first + self.chunk_size], now))
        return TickReport(at=now, acted=True, holder=self.holder, outcomes=tuple(outcomes))

    def _tick_chunk(self, chunk: Sequence[tuple[str, str]], now: datetime) -> list[TickOutcome]:
        """Tick ``chunk``'s rollouts in one transaction, each inside a savepoint of its own.

        One commit per chunk instead of one per rollout is what keeps a tick over a thousand
        rollouts within seconds. A rollout whose tick fails rolls back to its savepoint and
        the others still commit; if the commit itself fails, none of the chunk applied.
        """
        done: list[tuple[TickOutcome, _Warm | None, BaseException | None, Action | None]] = []
        try:
            with self.store.begin() as conn:
                for rollout_id, policy in chunk:
                    done.append(self._tick_one(conn, rollout_id, policy, now))
        except Exception as exc:  # the commit (or the connection) failed: nothing applied
            for rollout_id, _ in chunk:
                self._warm.pop(rollout_id, None)
            return [self._failed(rid, policy, exc) for rid, policy in chunk]
        outcomes = []
        for outcome, warm, error, transition in done:
            rid, policy = outcome.rollout_id, outcome.policy
            if warm is not None:
                self._warm[rid] = warm
            if error is not None:
                outcomes.append(self._failed(rid, policy, error))
                continue
            if transition is not None:
                _log.info("%s %s: %s", policy, transition.kind.value, transition.message)
            if (failing := self._failing.pop(rid, None)) is not None:
                failing.recovered(f"rollout {rid} ({policy}) ticks again")
            outcomes.append(outcome)
        return outcomes

    def _failed(self, rollout_id: str, policy: str, exc: BaseException) -> TickOutcome:
        """The outcome of a rollout whose tick failed; each run of failures is logged once."""
        if isinstance(exc, StaleRevisionError):
            return TickOutcome(rollout_id, policy, None, False, -1, error=exc.message)
        failing = self._failing.get(rollout_id)
        if failing is None:
            failing = self._failing[rollout_id] = _outage(
                f"tick of rollout {rollout_id} ({policy}) failed; it is retried every tick"
            )
        failing.failed(exc)
        return TickOutcome(rollout_id, policy, None, False, -1, error=first_line(exc))

    def _tick_one(
        self, conn: Connection, rollout_id: str, policy: str, now: datetime
    ) -> tuple[TickOutcome, _Warm | None, BaseException | None, Action | None]:
        """One rollout's tick inside the chunk's transaction; what to keep once it commits.

        Returns the outcome, the monitor state to keep in memory after the commit (None:
        nothing to keep), the error that rolled this rollout back, and the transition to log.
        """
        # Whatever happens below, the in-memory state is this tick's to change: it is kept
        # again only once the chunk commits (a rollback must not leave folded events behind).
        warm = self._warm.pop(rollout_id, None)
        try:
            with conn.begin_nested():
                # The policy lock serialises this tick with manual commands and with any other
                # controller; the revision CAS inside apply_decision is the last line.
                lock_policy(self.store, conn, policy)
                row = load_rollout(conn, rollout_id)
                if row.state.is_terminal():
                    return (
                        TickOutcome(rollout_id, policy, None, False, row.revision),
                        None,
                        None,
                        None,
                    )
                return self._evaluate(conn, row, now, warm)
        except Exception as exc:  # one broken rollout must not stop the others' ticks
            blank = TickOutcome(rollout_id, policy, None, False, -1)
            return blank, None, exc, None

    def _evaluate(
        self, conn: Connection, row: Rollout, now: datetime, warm: _Warm | None
    ) -> tuple[TickOutcome, _Warm | None, BaseException | None, Action | None]:
        plan = self._plan(row)
        stage = plan.stage(row.stage_index)
        if warm is None or warm.revision != row.revision:
            # Not in memory, or changed by someone else (a manual command, another
            # controller): read the stored state. The revision moves with every state write.
            stored = require_state(conn, row.id)
            warm = _Warm(row.revision, self.monitors.load(stored.monitor), stored.ledger,
                         stored.cursors)  # fmt: skip
        monitor, ledger, cursors = warm.monitor, warm.ledger, warm.cursors
        routed_before = ledger.routed_through
        names = {s.name for s in plan.stages}
        folded = 0
        new_cursors = cursors
        for batch, after_batch in self._new_events(conn, row.id, cursors):
            new_cursors = after_batch
            monitor.fold(event for _, event in batch)
            ledger.fold((s if s in names else stage.name, e) for s, e in batch)
            folded += len(batch)
        folded += self._fold_routed(conn, row.id, monitor, ledger, now)
        verdicts = tuple(monitor.verdicts(stage.name))
        snapshot = RolloutSnapshot(
            state=row.state,
            stage_index=row.stage_index,
            stage_started_at=row.stage_started_at,
            samples=ledger.samples(stage.name),
            alerted=frozenset(ledger.alerted),
        )
        action = decide(plan, snapshot, verdicts, now)
        if folded == 0 and not action.alerts and _same_hold(last_tick(conn, row.id), action):
            # Nothing written: memory still equals the stored state unless the routed
            # cursor moved without folding anything, in which case it is read again.
            keep = warm if ledger.routed_through == routed_before else None
            return TickOutcome(row.id, row.policy, action, False, row.revision), keep, None, None
        after = apply_decision(
            self.store,
            conn,
            row,
            AppliedAction(action, snapshot, verdicts, now, self.actor),
            state=StoredState(monitor.to_dict(), ledger, new_cursors),
        )
        kept = _Warm(after.revision, monitor, ledger, new_cursors)
        transition = action if action.kind.is_transition() else None
        outcome = TickOutcome(row.id, row.policy, action, True, after.revision, folded)
        return outcome, kept, None, transition

    def _plan(self, row: Rollout) -> RolloutPlan:
        """The rollout's frozen plan, parsed once per plan hash (it never changes)."""
        plan = self._plans.get(row.plan_hash)
        if plan is None:
            if len(self._plans) >= _PLANS_KEPT:
                self._plans.clear()
            plan = self._plans[row.plan_hash] = row.plan
        return plan

    @staticmethod
    def _fold_routed(
        conn: Connection, rollout_id: str, monitor: Monitor, ledger: Ledger, now: datetime
    ) -> int:
        """Fold routing windows older than the grace period into outcomes_recorded, once each.

        Outcomes recorded for a window after it was folded are not counted (GRACE_SECONDS,
        docs/statistics.md); a monitor without the built-in guardrail (a custom factory, or a
        state stored before it existed) folds nothing.
        """
        fold = getattr(monitor, "fold_routed", None)
        if fold is None or getattr(monitor, "missing", True) is None:
            return 0
        until = now - timedelta(seconds=GRACE_SECONDS)
        if ledger.routed_through is not None and until <= ledger.routed_through:
            return 0
        windows = routed_windows(conn, rollout_id, after=ledger.routed_through, until=until)
        if not windows:
            return 0
        ledger.routed_through = until
        return int(fold(windows))

    def _new_events(
        self, conn: Connection, rollout_id: str, cursors: Cursors
    ) -> Iterator[tuple[list[tuple[str | None, MonitorEvent]], Cursors]]:
        """Yield batches of new events, then new feedback, with the cursors after each."""
        through = cursors.events_through
        # Never past an id that a writer still in flight may commit (store/_visibility.py).
        ev_bound = [] if self._horizon.events is None else [events.c.id <= self._horizon.events]
        fb_bound = (
            [] if self._horizon.feedback is None else [feedback.c.id <= self._horizon.feedback]
        )
        while True:
            rows = (
                conn.execute(
                    select(events)
                    .where(events.c.rollout_id == rollout_id, events.c.id > through, *ev_bound)
                    .order_by(events.c.id)
                    .limit(self.batch_size)
                )
                .mappings()
                .all()
            )
            if not rows:
                break
            through = int(rows[-1]["id"])
            yield (
                [(r["stage"], event_from_row(r)) for r in rows],
                Cursors(through, cursors.feedback_through),
            )
            if len(rows) < self.batch_size:
                break
        fb_through = cursors.feedback_through
        while True:
            # Two steps, not one join: joined on decision_id, SQLite walks every event of the
            # rollout on each tick (O(history)); the feedback primary key keeps this O(new).
            fresh = conn.execute(
                select(
                    feedback.c.id,
                    feedback.c.decision_id,
                    feedback.c.at,
                    feedback.c.quality,
                    feedback.c.metrics,
                )
                .where(feedback.c.id > fb_through, *fb_bound)
                .order_by(feedback.c.id)
                .limit(self.batch_size)
            ).all()
            if not fresh:
                break
            folded_through, fb_through = fb_through, int(fresh[-1].id)
            decisions, values = _first_values(conn, rollout_id, fresh, folded_through)
            batch = []
            for f, added in zip(fresh, values, strict=True):
                if added is not None:  # None: unknown decision, or nothing new (counted once)
                    decision = decisions[f.decision_id]
                    row = {
                        "at": f.at,
                        "quality": added[0],
                        "metrics": json.dumps(added[1]),
                        "arm": decision.arm,
                        "traffic_bp": decision.traffic_bp,
                    }
                    batch.append((decision.stage, feedback_from_row(row)))
            yield batch, Cursors(through, fb_through)
            if len(fresh) < self.batch_size:
                break

    # -- the loop -------------------------------------------------------------------------

    def run(
        self,
        *,
        interval: timedelta,
        stop: threading.Event,
        dispatch: Callable[[], object] | None = None,
        on_tick: Callable[[TickReport], None] | None = None,
    ) -> int:
        """Tick (then dispatch alerts) every ``interval`` until ``stop`` is set; return ticks.

        No exception from a tick or a dispatch ends the loop. A run of failures (a store
        outage) is logged once as an error, with the traceback only when the error is not
        store trouble, then as one warning line per failed tick, and its end at INFO. The
        lock is released on the way out, so a standby controller takes over at once; a
        controller that stops renewing it (killed, or cut off from the database) loses it
        after ``lease_ttl`` (at least three intervals), on SQLite and PostgreSQL alike.
        """
        wait = interval.total_seconds()
        # Each tick renews the lease: one that lapsed between two ticks would hand the lock
        # to a standby every time, so it lasts at least three intervals.
        self.lock.ttl = max(self.lock.ttl, 3 * interval)
        # Each tick during an outage is one failed connection: the loop keeps its pace, so
        # the first tick after the store returns acts (a rollback must not wait out a backoff).
        ticking = _outage(f"controller tick failed; retrying every {wait:g}s")
        dispatching = _outage("alert dispatch failed; alerts stay pending, retried next tick")
        ticks = 0
        try:
            while not stop.is_set():
                try:
                    report = self.tick()
                except Exception as error:  # store down, or a bug: nothing was half-applied
                    ticking.failed(error)
                    stop.wait(wait)
                    continue
                ticking.recovered("controller ticks again")
                ticks += 1
                if on_tick is not None:
                    on_tick(report)
                if dispatch is not None:
                    try:
                        dispatch()
                    except Exception as error:
                        dispatching.failed(error)
                    else:
                        dispatching.recovered("alerts are dispatched again")
                stop.wait(wait)
        finally:
            self.close()
        return ticks

    def close(self) -> None:
        """Release the controller lock."""
        self.lock.release()


def _first_values(
    conn: Connection, rollout_id: str, fresh: Sequence[Any], folded_through: int
) -> tuple[dict[str, Any], list[tuple[float | None, dict[str, Any]] | None]]:
    """The rollout's decisions named by ``fresh`` feedback, and what each row adds to them.

    A decision keeps one value per metric, the first: its event's own, then feedback in
    store order (``_feedback.py``), so feedback folded by earlier ticks is read again here.
    """
    named = {f.decision_id for f in fresh}
    decisions = {
        r.decision_id: r
        for r in conn.execute(
            select(
                events.c.decision_id,
                events.c.arm,
                events.c.traffic_bp,
                events.c.stage,
                events.c.quality,
                events.c.metrics,
            ).where(events.c.rollout_id == rollout_id, events.c.decision_id.in_(named))
        )
    }
    earlier = conn.execute(
        select(feedback.c.decision_id, feedback.c.quality, feedback.c.metrics)
        .where(feedback.c.decision_id.in_(set(decisions)), feedback.c.id <= folded_through)
        .order_by(feedback.c.id)
    ).all()
    values = first_observations(
        {d: (r.quality, r.metrics) for d, r in decisions.items()},
        [(e.decision_id, e.quality, e.metrics) for e in earlier],
        [(f.decision_id, f.quality, f.metrics) for f in fresh],
    )
    return decisions, values


def _outage(what: str) -> Outage:
    """A controller outage: the first failure logged as an error, one warning line per repeat."""
    return Outage(_log, what, level=logging.ERROR, repeat_level=logging.WARNING)


def _same_hold(previous: Any, action: Action) -> bool:
    """True when the last trace row already says this: same hold, same reason, same guardrails."""
    if previous is None or action.kind is not ActionKind.HOLD or previous["action"] != "hold":
        return False
    before = json.loads(previous["inputs"]).get("decision", {})
    return bool(
        before.get("reason") == action.reason.value
        and tuple(before.get("guardrails", ())) == action.guardrails
    )
