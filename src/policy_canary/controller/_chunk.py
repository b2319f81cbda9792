"""One chunk of a controller tick: read for all and decide each, then write what nobody changed.

:class:`~policy_canary.controller._loop.Controller` cuts a tick's rollouts into chunks and
runs each chunk's :class:`ChunkTick`, a read transaction then a write one; each read here is
one statement for the whole chunk (``_inputs.py``), each rollout's part runs alone (an error
ends its tick, not the chunk's), and what a rollout's monitor became is kept in memory as
:class:`Warm` once the chunk commits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from policy_canary.controller._apply import (
    AppliedAction,
    apply_decision,
    apply_holds,
    is_quiet_hold,
)
from policy_canary.controller._decide import decide
from policy_canary.controller._inputs import (
    ID,
    STAGE,
    new_events,
    new_feedback,
    routed_windows,
)
from policy_canary.controller._model import Action, ActionKind, RolloutSnapshot
from policy_canary.controller._monitoring import Ledger, Monitor, batch_from_rows
from policy_canary.controller._rows import (
    Cursors,
    Rollout,
    last_ticks,
    load_rollouts,
    missing_rollout,
)
from policy_canary.controller._state import StoredState, read_states
from policy_canary.monitoring import GRACE_SECONDS, EventBatch, RoutedWindow
from policy_canary.plan import RolloutPlan
from policy_canary.registry import lock_policies

if TYPE_CHECKING:
    from policy_canary.controller._loop import Controller


@dataclass(frozen=True, slots=True)
class Warm:
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


#: What a chunk's tick did with one rollout: the outcome, the monitor state to keep in memory
#: once the chunk commits (None: nothing to keep), the error that ended the rollout's tick,
#: and the transition to log.
_Done = tuple[TickOutcome, Warm | None, BaseException | None, Action | None]


@dataclass(slots=True)
class _Work:
    """One rollout's tick in progress: its row and plan, its monitor state, what it folded."""

    row: Rollout
    plan: RolloutPlan
    warm: Warm
    #: How far it has folded this tick (``warm.cursors``: how far its stored state had).
    cursors: Cursors
    routed_before: datetime | None
    folded: int = 0

    def fold(self, stages: Sequence[str | None], batch: EventBatch) -> None:
        """Fold events, each of the stage of the same index; one the plan does not name counts
        as the current stage's."""
        names = {s.name for s in self.plan.stages}
        current = self.plan.stage(self.row.stage_index).name
        self.warm.monitor.fold(batch)
        self.warm.ledger.fold([s if s in names else current for s in stages], batch)
        self.folded += len(batch)

    def decide(self, now: datetime, actor: str) -> AppliedAction:
        """What decide() makes of the rollout's verdicts now, with everything it saw."""
        row, ledger = self.row, self.warm.ledger
        stage = self.plan.stage(row.stage_index)
        verdicts = tuple(self.warm.monitor.verdicts(stage.name))
        snapshot = RolloutSnapshot(
            state=row.state,
            stage_index=row.stage_index,
            stage_started_at=row.stage_started_at,
            samples=ledger.samples(stage.name),
            alerted=frozenset(ledger.alerted),
        )
        action = decide(self.plan, snapshot, verdicts, now)
        return AppliedAction(action, snapshot, verdicts, now, actor)

    def state(self) -> StoredState:
        """The stored state after this tick's folds."""
        return StoredState(self.warm.monitor.to_dict(), self.warm.ledger, self.cursors)


#: A rollout's decision ready to be written, with the state written with it.
_Write = tuple[_Work, AppliedAction, StoredState]


class ChunkTick:
    """One chunk's tick: read and decide in a read transaction, then write in a short one.

    :meth:`prepare` reads everything its rollouts fold and decides each, writing nothing and
    taking no lock; :meth:`commit` then takes the chunk's policy locks and writes each
    decision whose rollout nobody changed meanwhile (its revision, which moves with every
    write of a rollout, is the one read). A rollout that did change (a manual command,
    another controller) is ticked again under the locks, from its stored state. So the write
    turn (SQLite's single writer) is held for the writes alone, and chunks of other
    controller processes read and decide while this one writes.

    Each read, and each table the holds write, is one statement for the whole chunk; a
    transition, or a hold that raises an alert, is written by apply_decision in a savepoint
    of its own. An error in one rollout's part ends that rollout's tick alone: it writes
    nothing and keeps no memory. An error in a statement the chunk shares fails the chunk.
    """

    def __init__(self, controller: Controller, now: datetime) -> None:
        self.controller = controller
        self.now = now
        self.work: dict[str, _Work] = {}
        self.done: dict[str, _Done] = {}
        self._holds: list[_Write] = []
        self._writes: list[_Write] = []
        self._last: Mapping[str, Mapping[Any, Any]] = {}
        self._conn: Connection | None = None

    @property
    def conn(self) -> Connection:
        """The connection of the phase in progress."""
        assert self._conn is not None, "prepare() or commit() gives the chunk its connection"
        return self._conn

    def prepare(
        self, conn: Connection, chunk: Sequence[tuple[str, str]], warm: Mapping[str, Warm | None]
    ) -> None:
        """Read, fold and decide every rollout of ``chunk`` (``warm``: each one's memory, if
        any) on ``conn``, a read transaction: nothing is written."""
        self._conn = conn
        if self.controller.store.dialect == "postgresql":
            # psycopg prepares a statement from its fifth execution on, and PostgreSQL may
            # then plan it once for any values: blind to the cursors, that plan read a
            # chunk's new events by walking the whole id range past the lowest cursor and
            # testing every rollout's term on each row (0.3 s a chunk at 1,000 rollouts, 12 of
            # a tick's 25 s; planned for its values, the index's ranges take 20 ms). A
            # tick's statements run once per chunk with new values: each is planned for them.
            conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
        self._load(chunk, warm)
        self._fold_events()
        self._fold_feedback()
        self._fold_routed()
        self._last = last_ticks(conn, list(self.work)) if self.work else {}
        self._holds, self._writes = self._decide(self._last)

    def commit(self, conn: Connection) -> dict[str, _Done]:
        """Write what :meth:`prepare` decided on ``conn``, a write transaction; by id.

        The policy locks serialise the writes with manual commands and with any other
        controller; a rollout whose revision moved since it was read is ticked again here,
        under them, from its stored state.
        """
        self._conn = conn
        pending = [*self._holds, *self._writes]
        if not pending:
            return self.done
        lock_policies(self.controller.store, conn, (work.row.policy for work, _, _ in pending))
        current = load_rollouts(conn, [work.row.id for work, _, _ in pending])
        moved = {
            work.row.id: work.row.policy
            for work, _, _ in pending
            if (row := current.get(work.row.id)) is None or row.revision != work.row.revision
        }
        holds = [w for w in self._holds if w[0].row.id not in moved]
        self._write_holds(holds, self._last)
        for write in self._writes:
            if write[0].row.id not in moved:
                self._write(*write)
        if moved:  # its memory folded what the stored state may not have: start from that
            again = ChunkTick(self.controller, self.now)
            again.prepare(conn, list(moved.items()), dict.fromkeys(moved))
            self.done.update(again.commit_locked())
        return self.done

    def commit_locked(self) -> dict[str, _Done]:
        """:meth:`commit` on :meth:`prepare`'s connection, whose transaction already holds
        the policy locks and read every row under them: nothing can have moved."""
        self._write_holds(self._holds, self._last)
        for write in self._writes:
            self._write(*write)
        return self.done

    # -- read and fold --------------------------------------------------------------------

    def _load(self, chunk: Sequence[tuple[str, str]], warm: Mapping[str, Warm | None]) -> None:
        """Each rollout's row, plan and monitor state: the one in memory, else the stored one."""
        rows = load_rollouts(self.conn, [rid for rid, _ in chunk])
        live: dict[str, Rollout] = {}
        for rid, policy in chunk:
            row = rows.get(rid)
            if row is None:
                self._fail(rid, policy, missing_rollout(rid))
            elif row.state.is_terminal():
                self.done[rid] = (TickOutcome(rid, policy, None, False, row.revision), None,
                                  None, None)  # fmt: skip
            else:
                live[rid] = row
        # Not in memory, or changed by someone else (a manual command, another controller):
        # read the stored state. The revision moves with every state write.
        cold = [rid for rid, row in live.items() if _stale(warm[rid], row)]
        stored = read_states(self.conn, cold) if cold else {}
        for rid, row in live.items():
            try:
                plan = self.controller._plan(row)
                kept = self._thaw(row, stored[rid]) if rid in stored else warm[rid]
                assert kept is not None, "a rollout without memory is read from the store"
                self.work[rid] = _Work(row, plan, kept, kept.cursors, kept.ledger.routed_through)
            except Exception as exc:  # one broken rollout must not stop the others' ticks
                self._fail(rid, row.policy, exc)

    def _thaw(self, row: Rollout, stored: StoredState | Exception) -> Warm:
        """A stored state made a monitor in memory (or the error reading it raised)."""
        if isinstance(stored, Exception):
            raise stored
        monitor = self.controller.monitors.load(stored.monitor)
        return Warm(row.revision, monitor, stored.ledger, stored.cursors)

    def _fold_events(self) -> None:
        """Fold the events past each rollout's cursor, a page at a time."""
        cursors = {rid: w.cursors.events_through for rid, w in self.work.items()}
        horizon, batch = self.controller._horizon.events, self.controller.batch_size
        for page in new_events(self.conn, cursors, horizon=horizon, batch=batch):
            for rid, rows in page.items():
                if (work := self.work.get(rid)) is None:
                    continue  # its tick failed on an earlier page
                with self._alone(rid):
                    work.fold([r[STAGE] for r in rows], batch_from_rows(rows))
                    work.cursors = Cursors(int(rows[-1][ID]), work.cursors.feedback_through)

    def _fold_feedback(self) -> None:
        """Fold the feedback past each rollout's cursor; its cursor moves past every page."""
        cursors = {rid: w.cursors.feedback_through for rid, w in self.work.items()}
        horizon, batch = self.controller._horizon.feedback, self.controller.batch_size
        for folds, through in new_feedback(self.conn, cursors, horizon=horizon, batch=batch):
            for rid, work in list(self.work.items()):
                if through <= cursors[rid]:
                    continue  # the whole page is behind its cursor: folded by earlier ticks
                with self._alone(rid):
                    if mine := folds.get(rid):
                        work.fold([s for s, _ in mine], EventBatch.of([e for _, e in mine]))
                    work.cursors = Cursors(work.cursors.events_through, through)

    def _fold_routed(self) -> None:
        """Fold routing windows older than the grace period into outcomes_recorded, once each.

        Outcomes recorded for a window after it was folded are not counted (GRACE_SECONDS,
        docs/statistics.md); a monitor without the built-in guardrail (a custom factory, or
        a state stored before it existed) folds nothing.
        """
        until = self.now - timedelta(seconds=GRACE_SECONDS)
        after = {
            rid: w.routed_before
            for rid, w in self.work.items()
            if _routed_fold(w.warm.monitor) is not None
            and (w.routed_before is None or until > w.routed_before)
        }
        for rid, windows in routed_windows(self.conn, after, until=until).items():
            work = self.work[rid]
            with self._alone(rid):
                work.warm.ledger.routed_through = until
                fold = _routed_fold(work.warm.monitor)
                assert fold is not None, "only monitors that fold windows asked for them"
                work.folded += int(fold(windows))

    # -- decide and write -----------------------------------------------------------------

    def _decide(self, last: Mapping[str, Mapping[Any, Any]]) -> tuple[list[_Write], list[_Write]]:
        """Decide each rollout: the quiet holds to write together, and the other writes.

        ``last`` holds each rollout's newest trace row: a tick that folded nothing and would
        record the same hold again writes nothing (what keeps ticks idempotent).
        """
        holds: list[_Write] = []
        writes: list[_Write] = []
        for rid, work in list(self.work.items()):
            with self._alone(rid):
                applied = work.decide(self.now, self.controller.actor)
                action, row = applied.action, work.row
                if work.folded == 0 and not action.alerts and _same_hold(last.get(rid), action):
                    # Nothing written: memory still equals the stored state unless the
                    # routed cursor moved without folding anything; then it is read again.
                    moved = work.warm.ledger.routed_through != work.routed_before
                    outcome = TickOutcome(rid, row.policy, action, False, row.revision)
                    self.done[rid] = (outcome, None if moved else work.warm, None, None)
                    continue
                (holds if is_quiet_hold(action) else writes).append((work, applied, work.state()))
        return holds, writes

    def _write_holds(self, holds: Sequence[_Write], last: Mapping[str, Mapping[Any, Any]]) -> None:
        """Write the quiet holds together; an error here fails the chunk (nothing applies)."""
        if not holds:
            return
        seqs = {rid: int(tick["seq"]) for rid, tick in last.items()}
        written = [(work.row, applied, state) for work, applied, state in holds]
        afters = apply_holds(self.conn, written, last_seqs=seqs)
        for (work, applied, _), after in zip(holds, afters, strict=True):
            self._written(work, applied, after)

    def _write(self, work: _Work, applied: AppliedAction, state: StoredState) -> None:
        """Write one decision in a savepoint of its own: if it fails, it rolls back alone."""
        try:
            with self.conn.begin_nested():
                store = self.controller.store
                after = apply_decision(store, self.conn, work.row, applied, state=state)
        except Exception as exc:  # one broken rollout must not stop the others' ticks
            self._fail(work.row.id, work.row.policy, exc)
            return
        self._written(work, applied, after)

    def _written(self, work: _Work, applied: AppliedAction, after: Rollout) -> None:
        action, row = applied.action, work.row
        kept = Warm(after.revision, work.warm.monitor, work.warm.ledger, work.cursors)
        outcome = TickOutcome(row.id, row.policy, action, True, after.revision, work.folded)
        transition = action if action.kind.is_transition() else None
        self.done[row.id] = (outcome, kept, None, transition)

    # -- failures -------------------------------------------------------------------------

    @contextmanager
    def _alone(self, rollout_id: str) -> Iterator[None]:
        """One rollout's part of the chunk: an exception ends its tick, not the chunk's."""
        try:
            yield
        except Exception as exc:  # one broken rollout must not stop the others' ticks
            self._fail(rollout_id, self.work[rollout_id].row.policy, exc)

    def _fail(self, rollout_id: str, policy: str, exc: BaseException) -> None:
        """End a rollout's tick: nothing of it is written and it keeps no memory."""
        self.work.pop(rollout_id, None)
        self.done[rollout_id] = (TickOutcome(rollout_id, policy, None, False, -1), None, exc,
                                 None)  # fmt: skip


def _stale(warm: Warm | None, row: Rollout) -> bool:
    """True when the memory kept of a rollout is missing or older than its row."""
    return warm is None or warm.revision != row.revision


def _routed_fold(monitor: Monitor) -> Callable[[list[RoutedWindow]], int] | None:
    """The monitor's fold of routing windows, if it has the built-in outcomes_recorded."""
    fold = getattr(monitor, "fold_routed", None)
    return None if fold is None or getattr(monitor, "missing", True) is None else fold


def _same_hold(previous: Any, action: Action) -> bool:
    """True when the last trace row already says this: same hold, same reason, same guardrails."""
    if previous is None or action.kind is not ActionKind.HOLD or previous["action"] != "hold":
        return False
    before = json.loads(previous["inputs"]).get("decision", {})
    return bool(
        before.get("reason") == action.reason.value
        and tuple(before.get("guardrails", ())) == action.guardrails
    )
