"""Typed views of the controller's rows and the small queries both the controller and the
manual rollout API share (load, compare-and-swap, tick records, a transition's tail,
rejections)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, select, tuple_

from policy_canary.canonical import json_text
from policy_canary.clock import utc
from policy_canary.controller._model import ACTIVE_STATES, RolloutState
from policy_canary.errors import ConflictError, NotFoundError, StoreError
from policy_canary.monitoring import Verdict
from policy_canary.plan import RolloutPlan
from policy_canary.store import Store
from policy_canary.store._audit import record_audit
from policy_canary.store.schema import rejections, rollout_ticks, rollouts


class StaleRevisionError(ConflictError):
    """Someone else changed the rollout since it was read; this write did not apply."""


@dataclass(frozen=True, slots=True)
class Rollout:
    """One ``rollouts`` row, typed."""

    id: str
    policy: str
    baseline_digest: str
    candidate_digest: str
    state: RolloutState
    stage_index: int
    traffic_bp: int
    salt: str
    plan_text: str
    plan_hash: str
    revision: int
    actor: str
    reason: str
    created_at: datetime
    stage_started_at: datetime
    ended_at: datetime | None
    end_reason: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Rollout:
        """Read a mapping of the ``rollouts`` columns."""
        return cls(
            id=row["id"],
            policy=row["policy"],
            baseline_digest=row["baseline_digest"],
            candidate_digest=row["candidate_digest"],
            state=RolloutState(row["state"]),
            stage_index=int(row["stage_index"]),
            traffic_bp=int(row["traffic_bp"]),
            salt=row["salt"],
            plan_text=row["plan"],
            plan_hash=row["plan_hash"],
            revision=int(row["revision"]),
            actor=row["actor"],
            reason=row["reason"],
            created_at=utc(row["created_at"]),
            stage_started_at=utc(row["stage_started_at"]),
            ended_at=utc(row["ended_at"]) if row["ended_at"] is not None else None,
            end_reason=row["end_reason"],
        )

    @property
    def plan(self) -> RolloutPlan:
        """The frozen plan (parsed from the stored canonical JSON)."""
        return RolloutPlan.from_frozen(self.plan_text)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (part of ``--json`` and incident bundles)."""
        return {
            "id": self.id,
            "policy": self.policy,
            "baseline_id": self.baseline_digest,
            "candidate_id": self.candidate_digest,
            "state": self.state.value,
            "stage_index": self.stage_index,
            "traffic_bp": self.traffic_bp,
            "salt": self.salt,
            "plan_hash": self.plan_hash,
            "revision": self.revision,
            "actor": self.actor,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
            "stage_started_at": self.stage_started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "end_reason": self.end_reason,
        }


def load_rollout(conn: Connection, rollout_id: str) -> Rollout:
    """The rollout with this id, or a NotFoundError."""
    row = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).mappings().first()
    if row is None:
        raise missing_rollout(rollout_id)
    return Rollout.from_row(row)


def load_rollouts(conn: Connection, rollout_ids: Sequence[str]) -> dict[str, Rollout]:
    """The rollouts with these ids, by id, in one query (an id without a row is left out)."""
    rows = conn.execute(select(rollouts).where(rollouts.c.id.in_(rollout_ids))).mappings()
    return {r["id"]: Rollout.from_row(r) for r in rows}


def missing_rollout(rollout_id: str) -> NotFoundError:
    """The error of a rollout id without a row."""
    return NotFoundError(
        f"no rollout {rollout_id!r}; list them with 'policy-canary rollout status'"
    )


def active_rollout(conn: Connection, policy: str) -> Rollout | None:
    """The policy's running or paused rollout, if any."""
    row = (
        conn.execute(
            select(rollouts).where(rollouts.c.policy == policy, rollouts.c.state.in_(ACTIVE_STATES))
        )
        .mappings()
        .first()
    )
    return Rollout.from_row(row) if row is not None else None


def active_rollouts(conn: Connection) -> list[Rollout]:
    """Every running or paused rollout, oldest first."""
    rows = conn.execute(
        select(rollouts)
        .where(rollouts.c.state.in_(ACTIVE_STATES))
        .order_by(rollouts.c.created_at, rollouts.c.id)
    ).mappings()
    return [Rollout.from_row(r) for r in rows]


def compare_and_swap(conn: Connection, row: Rollout, **values: Any) -> Rollout:
    """Write ``values`` and bump the revision only if nobody did since ``row`` was read.

    This is what makes a transition apply at most once (design invariant 7), whatever the
    locks did: a second writer holding the same old revision updates nothing and raises.
    """
    result = conn.execute(
        rollouts.update()
        .where(rollouts.c.id == row.id, rollouts.c.revision == row.revision)
        .values(revision=row.revision + 1, **values)
    )
    if result.rowcount != 1:
        raise StaleRevisionError(
            f"rollout {row.id} changed while this write was prepared (revision "
            f"{row.revision} is stale); read its status and try again"
        )
    return load_rollout(conn, row.id)


def bump_revisions(conn: Connection, rows: Sequence[Rollout]) -> list[Rollout]:
    """:func:`compare_and_swap` of many rows that change nothing but their revision, at once.

    The caller holds the rows' policy locks since it read them, so a row whose revision moved
    means the locks did not hold: a StoreError (and the caller's transaction rolls back).
    """
    if not rows:
        return []
    result = conn.execute(
        rollouts.update()
        .where(tuple_(rollouts.c.id, rollouts.c.revision).in_([(r.id, r.revision) for r in rows]))
        .values(revision=rollouts.c.revision + 1)
    )
    if result.rowcount != len(rows):
        raise StoreError(
            f"{len(rows) - result.rowcount} of {len(rows)} rollouts changed under their policy "
            "locks while their holds were prepared; none was written, the next tick retries them"
        )
    return [replace(r, revision=r.revision + 1) for r in rows]


@dataclass(frozen=True, slots=True)
class Cursors:
    """How far the monitor state has folded the ``events`` and ``feedback`` tables."""

    events_through: int = 0
    feedback_through: int = 0


def last_tick(conn: Connection, rollout_id: str) -> Mapping[Any, Any] | None:
    """The newest decision-trace row of a rollout."""
    return (
        conn.execute(
            select(rollout_ticks)
            .where(rollout_ticks.c.rollout_id == rollout_id)
            .order_by(rollout_ticks.c.seq.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )


def last_ticks(conn: Connection, rollout_ids: Sequence[str]) -> dict[str, Mapping[Any, Any]]:
    """:func:`last_tick` of each of these rollouts (those with any), by id, in one query."""
    t = rollout_ticks.c
    newest = (
        select(t.rollout_id, func.max(t.seq).label("seq"))
        .where(t.rollout_id.in_(rollout_ids))
        .group_by(t.rollout_id)
        .subquery()
    )
    rows = conn.execute(
        select(rollout_ticks).join(
            newest, and_(t.rollout_id == newest.c.rollout_id, t.seq == newest.c.seq)
        )
    ).mappings()
    return {r["rollout_id"]: r for r in rows}


@dataclass(frozen=True, slots=True)
class Tick:
    """One row of the decision trace (its sequence number is given when it is recorded)."""

    rollout_id: str
    at: datetime
    revision: int
    stage_index: int
    traffic_bp: int
    action: str
    message: str
    inputs: Mapping[str, Any]
    cursors: Cursors
    verdicts: Sequence[Verdict] = ()


def record_tick(conn: Connection, tick: Tick) -> int:
    """Append one row to the decision trace; return its sequence number."""
    seq = int(
        conn.execute(
            select(func.coalesce(func.max(rollout_ticks.c.seq), 0)).where(
                rollout_ticks.c.rollout_id == tick.rollout_id
            )
        ).scalar_one()
        + 1
    )
    conn.execute(rollout_ticks.insert().values(_tick_values(tick, seq)))
    return seq


def record_ticks(conn: Connection, ticks: Sequence[tuple[Tick, int]]) -> None:
    """:func:`record_tick` of many ``(tick, seq)`` pairs (numbered by the caller), at once."""
    if ticks:
        conn.execute(rollout_ticks.insert(), [_tick_values(tick, seq) for tick, seq in ticks])


def _tick_values(tick: Tick, seq: int) -> dict[str, Any]:
    return {
        "rollout_id": tick.rollout_id,
        "seq": seq,
        "at": tick.at,
        "revision": tick.revision,
        "stage_index": tick.stage_index,
        "traffic_bp": tick.traffic_bp,
        "action": tick.action,
        "reason": tick.message,
        "verdicts": dumps([v.to_dict() for v in tick.verdicts]),
        "inputs": dumps(tick.inputs),
        "events_through": tick.cursors.events_through,
        "feedback_through": tick.cursors.feedback_through,
    }


def record_transition(
    store: Store,
    conn: Connection,
    tick: Tick,
    *,
    policy: str,
    actor: str,
    reason: str,
    details: Mapping[str, Any],
) -> int:
    """Write the tail of every transition: its tick, its audit row, the routing epoch bump.

    The audit action is ``rollout.<tick.action>``; the bump makes every SDK reload its
    routing table. Returns the tick's sequence number.
    """
    seq = record_tick(conn, tick)
    record_audit(
        conn,
        at=tick.at,
        actor=actor,
        action=f"rollout.{tick.action}",
        subject=f"{policy}/{tick.rollout_id}",
        reason=reason,
        details=details,
    )
    store.bump_epoch(conn)
    return seq


def record_rejection(
    conn: Connection, *, policy: str, digest: str, rollout_id: str, at: datetime, reason: str
) -> None:
    """Mark version ``digest`` rejected by ``rollout_id``: it is never retried automatically."""
    conn.execute(
        rejections.insert().values(
            policy=policy, digest=digest, rollout_id=rollout_id, at=at, reason=reason
        )
    )


def dumps(value: Any) -> str:
    """Compact, sorted JSON of :func:`jsonable` ``value`` (what the trace columns hold)."""
    return json_text(value, separators=(",", ":"))
