"""The controller: load each active rollout, fold new events, decide, apply — one tick at a time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from policy_canary.clock import Clock, SystemClock
from policy_canary.controller._chunk import ChunkTick, TickOutcome, Warm
from policy_canary.controller._lock import ControllerLock, default_holder
from policy_canary.controller._model import Action
from policy_canary.controller._monitoring import (
    MonitorFactory,
    StatisticalMonitors,
)
from policy_canary.controller._rows import (
    Rollout,
    StaleRevisionError,
    active_rollouts,
)
from policy_canary.controller._shards import ShardConfig, Shards, check_processes
from policy_canary.errors import InputError, first_line
from policy_canary.plan import RolloutPlan
from policy_canary.resilience import Outage
from policy_canary.store import Horizon, Store, visible_through
from policy_canary.store._audit import check_short_text

_log = logging.getLogger("policy_canary.controller")

#: Events read per query while folding; a tick keeps reading until it has seen them all.
DEFAULT_BATCH = 5_000
#: Rollouts ticked per transaction (each inside its own savepoint).
DEFAULT_CHUNK = 50
#: Frozen plans kept parsed (by hash); past it the memo starts again.
_PLANS_KEPT = 4_096
#: How long the controller lease lasts without renewal (SQLite's row, PostgreSQL's session).
DEFAULT_LEASE_TTL = timedelta(seconds=30)


#: What one rollout's tick did, before it is logged: its id and policy, the outcome (None
#: when it failed), the error that ended it, and the transition it applied.
Ticked = tuple[str, str, TickOutcome | None, BaseException | None, Action | None]


class ShardError(Exception):
    """A rollout's tick failed because its controller process did (logged once for it)."""


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
    ``processes`` > 1 ticks the rollouts in that many processes at once, this one and
    children it starts (``_shards.py``): one per core that the controller may use.
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
        processes: int = 1,
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
        self._warm: dict[str, Warm] = {}
        self._plans: dict[str, RolloutPlan] = {}
        check_processes(processes, self.monitors)
        self.processes = processes
        config = ShardConfig(store.url, self.monitors, batch_size, chunk_size, self.actor,
                             self.holder)  # fmt: skip
        self._shards = Shards(config, processes) if processes > 1 else None
        self._shard_failing: dict[int, Outage] = {}

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
            horizon = visible_through(conn)
        ticked: list[Ticked] = []
        if self._shards is None:
            ticked = self.tick_part(pending, now, horizon)
        else:
            parts = self._shards.split(pending)
            # The children tick their parts while this process ticks its own.
            running = [
                (shard, part, self._shards.submit(shard, part, now, horizon))
                for shard, part in enumerate(parts)
                if shard and part
            ]
            ticked = self.tick_part(parts[0], now, horizon)
            for shard, part, future in running:
                ticked.extend(self._collect(shard, part, future))
        by_id = {t[0]: self._outcome(*t) for t in ticked}
        outcomes = tuple(by_id[rid] for rid, _ in pending)
        return TickReport(at=now, acted=True, holder=self.holder, outcomes=outcomes)

    def tick_part(
        self, part: Sequence[tuple[str, str]], now: datetime, horizon: Horizon
    ) -> list[Ticked]:
        """Tick ``part``'s rollouts, chunk by chunk, reading no further than ``horizon``.

        These are all the rollouts this process ticks (its shard): the memory of any other
        is dropped. What each rollout's tick did comes back unlogged (:meth:`tick` logs it).
        """
        self._horizon = horizon
        active = {rid for rid, _ in part}
        for gone in self._warm.keys() - active:  # ended rollouts leave the memory
            del self._warm[gone]
        ticked: list[Ticked] = []
        for first in range(0, len(part), self.chunk_size):
            ticked.extend(self._tick_chunk(part[first : first + self.chunk_size], now))
        return ticked

    def _tick_chunk(self, chunk: Sequence[tuple[str, str]], now: datetime) -> list[Ticked]:
        """Tick ``chunk``'s rollouts: read for all and decide each, then write in one commit.

        One commit per chunk instead of one per rollout, and one statement per kind of read
        or write for the whole chunk, are what keep a tick over a thousand rollouts within
        seconds; the reads and decisions take no lock, so only the writes hold SQLite's
        write turn (``ChunkTick``). A rollout whose tick fails writes nothing (a transition
        rolls back to its savepoint) and the others still commit; if the commit itself fails,
        none applied.
        """
        # Whatever happens below, the in-memory states are this tick's to change: each is
        # kept again only once the chunk commits (a rollback must not leave folded events).
        warm = {rid: self._warm.pop(rid, None) for rid, _ in chunk}
        tick = ChunkTick(self, now)
        try:
            with self.store.read() as conn:
                tick.prepare(conn, chunk, warm)
            with self.store.begin() as conn:
                done = tick.commit(conn)
        except Exception as exc:  # the commit (or the connection) failed: nothing applied
            return [(rid, policy, None, exc, None) for rid, policy in chunk]
        ticked: list[Ticked] = []
        for rid, policy in chunk:
            outcome, kept, error, transition = done[rid]
            if kept is not None:
                self._warm[rid] = kept
            ticked.append((rid, policy, outcome, error, transition))
        return ticked

    def _outcome(
        self,
        rid: str,
        policy: str,
        outcome: TickOutcome | None,
        error: BaseException | None,
        transition: Action | None,
    ) -> TickOutcome:
        """A rollout's outcome, logged: its transition, or its failure (once per run of them)."""
        if error is not None or outcome is None:
            return self._failed(rid, policy, error or RuntimeError("the tick returned nothing"))
        if transition is not None:
            _log.info("%s %s: %s", policy, transition.kind.value, transition.message)
        if (failing := self._failing.pop(rid, None)) is not None:
            failing.recovered(f"rollout {rid} ({policy}) ticks again")
        return outcome

    def _collect(
        self, shard: int, part: Sequence[tuple[str, str]], future: Future[list[Ticked]]
    ) -> list[Ticked]:
        """What shard ``shard``'s process did with ``part``; if it failed, its rollouts fail."""
        assert self._shards is not None, "only a controller with processes has shards"
        problem = self._shard_failing.get(shard)
        if problem is None:
            problem = self._shard_failing[shard] = _outage(
                f"controller process {shard} failed; it is started again next tick"
            )
        try:
            ticked = future.result()
        except Exception as exc:  # it died, could not start, or could not return its results
            self._shards.lost(shard)
            # A process that died has no traceback to show; an error it raised brings its own.
            problem.failed(f"{type(exc).__name__}: {exc}" if isinstance(exc, BrokenProcessPool)
                           else exc)  # fmt: skip
            error = ShardError(
                f"controller process {shard} failed ({first_line(exc)}); its rollouts are "
                "ticked again next tick"
            )
            return [(rid, policy, None, error, None) for rid, policy in part]
        problem.recovered(f"controller process {shard} ticks again")
        return ticked

    def _failed(self, rollout_id: str, policy: str, exc: BaseException) -> TickOutcome:
        """The outcome of a rollout whose tick failed; each run of failures is logged once."""
        if isinstance(exc, StaleRevisionError):
            return TickOutcome(rollout_id, policy, None, False, -1, error=exc.message)
        if isinstance(exc, ShardError):  # logged once for the whole process (_collect)
            return TickOutcome(rollout_id, policy, None, False, -1, error=str(exc))
        failing = self._failing.get(rollout_id)
        if failing is None:
            failing = self._failing[rollout_id] = _outage(
                f"tick of rollout {rollout_id} ({policy}) failed; it is retried every tick"
            )
        failing.failed(exc)
        return TickOutcome(rollout_id, policy, None, False, -1, error=first_line(exc))

    def _plan(self, row: Rollout) -> RolloutPlan:
        """The rollout's frozen plan, parsed once per plan hash (it never changes)."""
        plan = self._plans.get(row.plan_hash)
        if plan is None:
            if len(self._plans) >= _PLANS_KEPT:
                self._plans.clear()
            plan = self._plans[row.plan_hash] = row.plan
        return plan

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
        """Stop the controller's other processes (if any) and release the controller lock.

        A controller may tick again after it: its processes are started again then.
        """
        try:
            if self._shards is not None:
                self._shards.close()
        finally:
            self.lock.release()


def _outage(what: str) -> Outage:
    """A controller outage: the first failure logged as an error, one warning line per repeat."""
    return Outage(_log, what, level=logging.ERROR, repeat_level=logging.WARNING)
