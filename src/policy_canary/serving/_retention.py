"""Retention: pruning raw events and feedback that no active rollout needs any more."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select

from policy_canary.serving._routing import SERVING_STATES
from policy_canary.store import Store
from policy_canary.store.schema import events, feedback, policies, rollouts


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What :meth:`Canary.prune` deleted: rows older than ``cutoff``."""

    cutoff: datetime
    events: int
    feedback: int


def prune_rows(store: Store, cutoff: datetime) -> PruneResult:
    """Delete events and feedback older than ``cutoff``, keeping those of active rollouts."""
    active = select(rollouts.c.id).where(rollouts.c.state.in_(SERVING_STATES))
    with store.begin() as conn:
        names = list(conn.execute(select(policies.c.name)).scalars())
        deleted_events = 0
        for name in names:
            # Per policy, so the (policy, at) index bounds each delete.
            result = conn.execute(
                delete(events).where(
                    events.c.policy == name,
                    events.c.at < cutoff,
                    (events.c.rollout_id.is_(None)) | (events.c.rollout_id.not_in(active)),
                )
            )
            deleted_events += result.rowcount
        kept = select(events.c.decision_id).where(events.c.rollout_id.in_(active))
        deleted_feedback = conn.execute(
            delete(feedback).where(feedback.c.at < cutoff, feedback.c.decision_id.not_in(kept))
        ).rowcount
    return PruneResult(cutoff=cutoff, events=deleted_events, feedback=deleted_feedback)
