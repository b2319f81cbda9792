"""Rollouts: start one, watch it, and intervene by hand (pause, resume, promote, roll back, abort).

Every command is one transaction under the policy's lock and compare-and-swaps the rollout's
revision, exactly like the controller's own transitions, so a human and the controller can
never apply two transitions from the same state. A manual rollback is the same atomic write
as an automatic one (design invariant 6); after a promotion, :meth:`Rollouts.rollback`
restores the previous stable version from the release history.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from policy_canary.canonical import jsonable
from policy_canary.clock import Clock, SystemClock
from policy_canary.controller._apply import AppliedAction, apply_decision
from policy_canary.controller._bundle import trace
from policy_canary.controller._model import (
    Action,
    ActionKind,
    Reason,
    RolloutSnapshot,
    RolloutState,
    message,
)
from policy_canary.controller._monitoring import (
    Ledger,
    MonitorFactory,
    StatisticalMonitors,
    routed_totals,
)
from policy_canary.controller._restore import restore_previous_stable
from policy_canary.controller._rows import (
    Rollout,
    Tick,
    active_rollout,
    compare_and_swap,
    last_tick,
    load_rollout,
    record_transition,
)
from policy_canary.controller._start import (
    baseline_events,
    stable_baseline,
    stable_coverage,
    start_rollout,
)
from policy_canary.controller._state import read_cursors, read_state, require_state
from policy_canary.errors import ConflictError, InputError, NotFoundError
from policy_canary.monitoring import MetricCoverage, Verdict
from policy_canary.plan import RolloutPlan, Stage, format_duration
from policy_canary.registry import (
    ReleaseEntry,
    lock_policy,
    require_policy,
    resolve_in,
)
from policy_canary.store import Store
from policy_canary.store._audit import actor_or_default, check_text
from policy_canary.store.schema import rollouts

#: A caller-chosen rollout salt (see :meth:`Rollouts.start`).
_SALT = re.compile(r"[0-9a-f]{32,64}")

__all__ = [
    "RollbackResult",
    "RolloutStatus",
    "Rollouts",
    "baseline_events",
    "stable_baseline",
    "stable_coverage",
]


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    """A rollout as people and programs read it: row, stage, dwell, samples, last decision."""

    rollout: Rollout
    candidate_label: str
    baseline_label: str
    stage: Stage
    stages: int
    dwell: timedelta
    samples: Mapping[str, int]
    verdicts: tuple[Verdict, ...] = ()
    last_action: Mapping[str, Any] | None = None
    aggregates: Mapping[str, Any] = field(default_factory=dict)
    #: Per arm, decisions routed and outcomes recorded so far (the SDKs' counts, including
    #: windows still in outcomes_recorded's grace period).
    routed: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``--json`` contract of ``rollout status``)."""
        data: dict[str, Any] = jsonable(
            {
                **self.rollout.to_dict(),
                "candidate": self.candidate_label,
                "baseline": self.baseline_label,
                "stage": self.stage.name,
                "stage_number": self.rollout.stage_index + 1,
                "stages": self.stages,
                "traffic_percent": self.rollout.traffic_bp / 100,
                "dwell_seconds": int(self.dwell.total_seconds()),
                "min_duration": format_duration(self.stage.min_duration),
                "samples": dict(self.samples),
                "min_samples": self.stage.min_samples,
                "verdicts": [v.to_dict() for v in self.verdicts],
                "last_action": dict(self.last_action) if self.last_action else None,
                "aggregates": dict(self.aggregates),
                "routed": {arm: dict(counts) for arm, counts in self.routed.items()},
            }
        )
        return data


@dataclass(frozen=True, slots=True)
class RollbackResult:
    """What :meth:`Rollouts.rollback` did: rolled an active rollout back, or restored stable."""

    policy: str
    rollout: Rollout | None
    release: ReleaseEntry | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "policy": self.policy,
            "rollout": self.rollout.to_dict() if self.rollout else None,
            "release": self.release.to_dict() if self.release else None,
            "message": self.message,
        }


class Rollouts:
    """Start, inspect and steer rollouts in one store (the library behind ``rollout ...``)."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        monitors: MonitorFactory | None = None,
    ) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.monitors: MonitorFactory = monitors or StatisticalMonitors()

    # -- start ----------------------------------------------------------------------------

    def start(
        self,
        policy: str,
        *,
        candidate: str,
        plan: RolloutPlan | Path | str | None = None,
        actor: str | None = None,
        reason: str = "",
        force: bool = False,
        salt: str | None = None,
        require_metrics: bool = False,
    ) -> Rollout:
        """Start rolling ``candidate`` out under ``plan`` (default: :meth:`RolloutPlan.default`).

        ``salt`` fixes which units the candidate gets (32-64 lowercase hex characters);
        by default every rollout draws a fresh random salt, so rollouts assign independently.
        Fix it only to reproduce an experiment, such as a seeded simulation.

        Refused when the policy already has an active rollout, when the candidate is the
        stable version, or when an earlier rollout rejected it (unless ``force`` with a
        ``reason``). The frozen plan and the monitors' initial state (with the baseline
        snapshot of stable's recent events) are written in the same transaction that gives
        the candidate its first share, so the rollback triggers exist before its first request.
        With ``require_metrics`` it is also refused when stable's recent traffic does not
        carry some guardrail's metric (see :meth:`metrics_coverage`).
        """
        if force and not reason.strip():
            raise InputError("--force overrides an earlier rejection; say why with --reason TEXT")
        if salt is not None and not _SALT.fullmatch(salt):
            raise InputError(f"salt {salt!r} must be 32 to 64 lowercase hex characters")
        who = actor_or_default(actor)
        check_text(reason, what="--reason")
        frozen = _plan(plan)
        now = self.clock.now()
        return start_rollout(
            self.store,
            policy=policy,
            candidate=candidate,
            plan=frozen,
            actor=who,
            reason=reason,
            force=force,
            now=now,
            monitors=self.monitors,
            salt=salt,
            require_metrics=require_metrics,
        )

    def metrics_coverage(
        self, policy: str, plan: RolloutPlan | Path | str | None = None
    ) -> tuple[MetricCoverage, ...]:
        """Per guardrail of ``plan``, whether stable's recent traffic carries its metric.

        Read from the events a start would freeze its baseline from (and their feedback): a
        guardrail whose metric none of them carry would hold every stage until it pauses.
        """
        return stable_coverage(self.store, policy, _plan(plan))

    # -- manual transitions ---------------------------------------------------------------

    def pause(self, policy: str, *, reason: str, actor: str | None = None) -> Rollout:
        """Hold the candidate at its current share until someone resumes it."""

        def build(row: Rollout) -> Action:
            if row.state is not RolloutState.RUNNING:
                raise ConflictError(f"rollout {row.id} is {row.state.value}, not running")
            return _manual(ActionKind.PAUSE, "paused", actor, reason)

        return self._transition(policy, reason, actor, build)

    def resume(self, policy: str, *, reason: str, actor: str | None = None) -> Rollout:
        """Resume a paused rollout; its stage's dwell clock starts again from now."""
        who = actor_or_default(actor)
        _need_reason(reason)
        now = self.clock.now()
        with self.store.begin() as conn:
            row = self._locked_active(conn, policy)
            if row.state is not RolloutState.PAUSED:
                raise ConflictError(f"rollout {row.id} is {row.state.value}, not paused")
            after = compare_and_swap(
                conn, row, state=RolloutState.RUNNING.value, stage_started_at=now
            )
            self._trace_manual(conn, row, after, "resume", who, reason, now)
            return after

    def promote(
        self, policy: str, *, reason: str, actor: str | None = None, full: bool = False
    ) -> Rollout:
        """Advance one stage (promote from the last); ``full`` skips every remaining stage."""

        def build(row: Rollout) -> Action:
            last = row.plan.is_last(row.stage_index)
            kind = ActionKind.PROMOTE if full or last else ActionKind.ADVANCE
            return _manual(kind, "promoted" if kind is ActionKind.PROMOTE else "advanced", actor,
                           reason)  # fmt: skip

        return self._transition(policy, reason, actor, build)

    def rollback(self, policy: str, *, reason: str, actor: str | None = None) -> RollbackResult:
        """Roll the active rollout back; with none active, restore the previous stable.

        After a promotion the previous stable is the ``from`` version of the release-history
        entry that made the current version stable — the same deterministic rule as an
        automatic rollback, recorded as kind ``rollback``.
        """
        _need_reason(reason)
        who = actor_or_default(actor)
        with self.store.read() as conn:
            require_policy(conn, policy)
            active = active_rollout(conn, policy)
        if active is not None:
            row = self._transition(
                policy,
                reason,
                who,
                lambda _: _manual(ActionKind.ROLLBACK, "rolled back", who, reason),
            )
            return RollbackResult(policy, row, None, row.end_reason or "")
        return self._restore_previous(policy, reason, who)

    def abort(self, policy: str, *, reason: str, actor: str | None = None) -> Rollout:
        """Stop the rollout without judging the candidate (no rejection, no incident)."""
        who = actor_or_default(actor)
        _need_reason(reason)
        now = self.clock.now()
        with self.store.begin() as conn:
            row = self._locked_active(conn, policy)
            text = message(Reason.MANUAL, verb="aborted", actor=who, reason=reason)
            after = compare_and_swap(
                conn,
                row,
                state=RolloutState.ABORTED.value,
                traffic_bp=0,
                ended_at=now,
                end_reason=text,
            )
            self._trace_manual(conn, row, after, "abort", who, reason, now)
            return after

    # -- reading --------------------------------------------------------------------------

    def get(self, rollout_id: str) -> RolloutStatus:
        """The status of one rollout by id."""
        with self.store.read() as conn:
            return self._status(conn, load_rollout(conn, rollout_id))

    def status(self, policy: str | None = None) -> list[RolloutStatus]:
        """Active rollouts (of ``policy``, or all); for a policy with none, its latest one."""
        with self.store.read() as conn:
            query = select(rollouts)
            if policy is not None:
                require_policy(conn, policy)
                query = query.where(rollouts.c.policy == policy)
            rows = [
                Rollout.from_row(r)
                for r in conn.execute(query.order_by(rollouts.c.created_at.desc())).mappings()
            ]
            active = [r for r in rows if r.state.is_active()]
            chosen = active or (rows[:1] if policy is not None else [])
            return [self._status(conn, r) for r in chosen]

    def trace(self, rollout_id: str) -> list[dict[str, Any]]:
        """The decision trace of one rollout: every recorded tick with its verdicts, oldest first.

        Each entry holds the tick's action, message, stage and share, every guardrail's
        verdict with its evidence (estimate, confidence bounds, e-value, threshold, counts)
        and what ``decide()`` saw; the dashboard draws its charts from these.
        """
        with self.store.read() as conn:
            load_rollout(conn, rollout_id)  # a clear error for an unknown id
            return trace(conn, rollout_id)

    def history(self, policy: str) -> list[RolloutStatus]:
        """Every rollout of ``policy``, newest first."""
        with self.store.read() as conn:
            require_policy(conn, policy)
            rows = conn.execute(
                select(rollouts)
                .where(rollouts.c.policy == policy)
                .order_by(rollouts.c.created_at.desc())
            ).mappings()
            return [self._status(conn, Rollout.from_row(r)) for r in rows]

    # -- internals ------------------------------------------------------------------------

    def _status(self, conn: Connection, row: Rollout) -> RolloutStatus:
        plan = row.plan
        stage = plan.stage(row.stage_index)
        stored = read_state(conn, row.id)
        ledger = stored.ledger if stored else Ledger()
        tick = last_tick(conn, row.id)
        verdicts: tuple[Verdict, ...] = ()
        last: dict[str, Any] | None = None
        if tick is not None:
            verdicts = tuple(Verdict.from_dict(v) for v in json.loads(tick["verdicts"]))
            last = {
                "seq": tick["seq"],
                "at": tick["at"].isoformat(),
                "action": tick["action"],
                "message": tick["reason"],
            }
        end = row.ended_at or self.clock.now()
        return RolloutStatus(
            rollout=row,
            candidate_label=resolve_in(conn, row.policy, row.candidate_digest).label,
            baseline_label=resolve_in(conn, row.policy, row.baseline_digest).label,
            stage=stage,
            stages=len(plan.stages),
            dwell=max(end - row.stage_started_at, timedelta(0)),
            samples=ledger.samples(stage.name),
            verdicts=verdicts,
            last_action=last,
            aggregates=ledger.to_dict()["stages"],
            routed=routed_totals(conn, row.id),
        )

    def _locked_active(self, conn: Connection, policy: str) -> Rollout:
        lock_policy(self.store, conn, policy)
        require_policy(conn, policy)
        row = active_rollout(conn, policy)
        if row is None:
            raise NotFoundError(
                f"policy {policy!r} has no active rollout; start one with "
                f"'policy-canary rollout start {policy} --candidate REF'"
            )
        return row

    def _transition(
        self, policy: str, reason: str, actor: str | None, build: Callable[[Rollout], Action]
    ) -> Rollout:
        _need_reason(reason)
        who = actor_or_default(actor)
        now = self.clock.now()
        with self.store.begin() as conn:
            row = self._locked_active(conn, policy)
            action = build(row)
            state = require_state(conn, row.id)
            tick = last_tick(conn, row.id)
            verdicts = (
                tuple(Verdict.from_dict(v) for v in json.loads(tick["verdicts"])) if tick else ()
            )
            ledger = state.ledger
            stage = row.plan.stage(row.stage_index)
            snapshot = RolloutSnapshot(
                row.state,
                row.stage_index,
                row.stage_started_at,
                ledger.samples(stage.name),
                frozenset(ledger.alerted),
            )
            return apply_decision(
                self.store,
                conn,
                row,
                AppliedAction(action, snapshot, verdicts, now, who, manual=True),
                state=state,
            )

    def _trace_manual(
        self,
        conn: Connection,
        row: Rollout,
        after: Rollout,
        verb: str,
        actor: str,
        reason: str,
        now: datetime,
    ) -> None:
        text = message(Reason.MANUAL, verb=f"{verb}d" if verb.endswith("e") else f"{verb}ed",
                       actor=actor, reason=reason)  # fmt: skip
        inputs = {"manual": True, "actor": actor, "now": now.isoformat()}
        cursors = read_cursors(conn, row.id)
        tick = Tick(row.id, now, after.revision, row.stage_index, row.traffic_bp, verb, text,
                    inputs, cursors)  # fmt: skip
        record_transition(
            self.store,
            conn,
            tick,
            policy=row.policy,
            actor=actor,
            reason=reason,
            details={"revision": after.revision, "state": after.state.value},
        )

    def _restore_previous(self, policy: str, reason: str, actor: str) -> RollbackResult:
        entry, text = restore_previous_stable(
            self.store, policy=policy, actor=actor, reason=reason, now=self.clock.now()
        )
        return RollbackResult(policy, None, entry, text)


def _plan(plan: RolloutPlan | Path | str | None) -> RolloutPlan:
    if plan is None:
        return RolloutPlan.default()
    if isinstance(plan, RolloutPlan):
        return plan
    return RolloutPlan.load(plan)


def _need_reason(reason: str) -> None:
    if not reason.strip():
        raise InputError("say why with --reason TEXT (it is recorded in the audit trail)")
    check_text(reason, what="--reason")


def _manual(kind: ActionKind, verb: str, actor: str | None, reason: str) -> Action:
    who = actor_or_default(actor)
    return Action(kind, Reason.MANUAL, message(Reason.MANUAL, verb=verb, actor=who, reason=reason))
