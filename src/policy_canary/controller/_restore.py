"""Rolling back after a promotion: restore the previous stable from the release history."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, RowMapping, select

from policy_canary.alerts import AlertKind, Severity, enqueue_alert
from policy_canary.controller._model import notice
from policy_canary.controller._rows import record_rejection
from policy_canary.errors import ConflictError
from policy_canary.registry import (
    ReleaseEntry,
    ReleaseKind,
    Version,
    lock_policy,
    move_stable,
    require_policy,
    resolve_in,
)
from policy_canary.store import Store
from policy_canary.store.schema import release_history


def restore_previous_stable(
    store: Store, *, policy: str, actor: str, reason: str, now: datetime
) -> tuple[ReleaseEntry, str]:
    """Make the version the current stable replaced stable again (kind ``rollback``).

    The target is the ``from`` version of the newest release-history entry, which is the
    one that made the current version stable. If that entry is itself a rollback the request
    is refused rather than flipping back and forth; a version that came from a rollout is
    marked rejected, so it is never retried automatically. Returns the entry and a summary.
    """
    with store.begin() as conn:
        lock_policy(store, conn, policy)
        current = require_policy(conn, policy)["stable_digest"]
        latest = _latest_release(conn, policy)
        if latest is None or current is None or latest["to_digest"] != current:
            raise ConflictError(f"policy {policy!r} has no release history to roll back")
        label, target = _restore_target(conn, policy, current, latest)
        text = notice(
            "stable_rollback",
            policy=policy,
            current=label,
            target=target.label,
            actor=actor,
            reason=reason,
        )
        rollout_id = latest["rollout_id"]
        entry = move_stable(
            store,
            conn,
            policy=policy,
            to_id=target.id,
            kind=ReleaseKind.ROLLBACK,
            actor=actor,
            reason=reason,
            at=now,
            rollout_id=rollout_id,
        )
        assert entry is not None, "the target differs from the current stable"
        if rollout_id is not None:
            record_rejection(
                conn, policy=policy, digest=current, rollout_id=rollout_id, at=now, reason=text
            )
        enqueue_alert(
            conn,
            key=f"{policy}:stable_rollback:{entry.seq}",
            kind=AlertKind.ROLLBACK,
            severity=Severity.CRITICAL,
            summary=text,
            payload={"release": entry.to_dict()},
            at=now,
            policy=policy,
            rollout_id=rollout_id,
        )
        return entry, text


def _latest_release(conn: Connection, policy: str) -> RowMapping | None:
    """The newest release-history entry of ``policy``: the one that made its stable stable."""
    return (
        conn.execute(
            select(release_history)
            .where(release_history.c.policy == policy)
            .order_by(release_history.c.id.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )


def _restore_target(
    conn: Connection, policy: str, current: str, latest: RowMapping
) -> tuple[str, Version]:
    """The current stable's label and the version to restore; a ConflictError if there is none."""
    label = resolve_in(conn, policy, current).label
    if latest["kind"] == ReleaseKind.ROLLBACK.value:
        raise ConflictError(
            f"{policy}@{label} is stable because of a rollback already; pick the "
            f"version you want with 'policy-canary policy set-stable {policy} REF'"
        )
    if latest["from_digest"] is None:
        raise ConflictError(
            f"{policy}@{label} is the first stable version of {policy!r}; there is "
            "nothing earlier to roll back to"
        )
    return label, resolve_in(conn, policy, latest["from_digest"])
