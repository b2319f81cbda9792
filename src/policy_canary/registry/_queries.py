"""Registry operations that run inside a caller's transaction (controller, rollouts, gate)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, func, select, text

from policy_canary.errors import AmbiguousReferenceError, NotFoundError
from policy_canary.registry._models import ReleaseEntry, ReleaseKind, Version, validate_policy_name
from policy_canary.registry._specfile import MAX_VERSION_NUMBER
from policy_canary.store import Store
from policy_canary.store._audit import record_audit
from policy_canary.store.schema import policies, release_history, versions

_MIN_PREFIX = 6
_HEX = re.compile(r"[0-9a-f]+")
_NUMBERED = re.compile(r"v([0-9]+)")
#: Version numbers are 32-bit integers on every backend; a larger vN cannot exist.


def lock_policy(store: Store, conn: Connection, policy: str) -> None:
    """Serialise writers of one policy for the rest of the transaction.

    SQLite transactions already hold the database's write lock; PostgreSQL takes an advisory
    lock keyed by the policy name, so concurrent pushes get consecutive numbers, not retries.
    """
    if store.dialect == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"policy:{policy}"}
        )


def lock_policies(store: Store, conn: Connection, names: Iterable[str]) -> None:
    """:func:`lock_policy` of every policy in ``names``, in one statement.

    The locks are taken in sorted order, one after the other: two transactions that lock
    overlapping sets this way cannot each wait for a lock the other holds.
    """
    keys = sorted({f"policy:{name}" for name in names})
    if store.dialect == "postgresql" and keys:
        conn.execute(
            text(
                "SELECT count(pg_advisory_xact_lock(hashtext(k))) FROM ("
                "SELECT k FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS u(k, n) "
                "ORDER BY n) AS ordered"
            ),
            {"keys": keys},
        )


def require_policy(conn: Connection, policy: str) -> RowMapping:
    """Return the policy's row or raise a NotFoundError listing the policies that exist."""
    validate_policy_name(policy)
    row = conn.execute(select(policies).where(policies.c.name == policy)).mappings().first()
    if row is None:
        names = conn.execute(select(policies.c.name).order_by(policies.c.name).limit(20)).scalars()
        known = ", ".join(names) or "none yet"
        raise NotFoundError(
            f"no policy named {policy!r} (policies: {known}); push one with "
            f"'policy-canary policy push {policy} FILE'"
        )
    return row


def resolve_in(conn: Connection, policy: str, ref: str) -> Version:
    """:meth:`Registry.resolve` inside the caller's transaction."""
    pol = require_policy(conn, policy)
    ref = ref.strip()
    span = _span(conn, policy)
    if ref == "stable":
        if not pol["stable_digest"]:
            raise NotFoundError(f"policy {policy!r} has no stable version yet ({span})")
        return version_from_row(version_row(conn, policy, pol["stable_digest"]))
    if ref == "latest":
        latest = latest_version_row(conn, policy)
        assert latest is not None, "a policy row exists only with its first version"
        return version_from_row(latest)
    numbered = _NUMBERED.fullmatch(ref)
    if numbered:
        digits = numbered.group(1)
        # Past the INTEGER column's range no version can exist: say so before the database
        # does ("integer out of range" on PostgreSQL, OverflowError on SQLite).
        if len(digits) > len(str(MAX_VERSION_NUMBER)) or int(digits) > MAX_VERSION_NUMBER:
            shown = ref if len(ref) <= 24 else f"{ref[:20]}...({len(digits)} digits)"
            raise NotFoundError(f"no version {shown!r} of policy {policy!r}; it has {span}")
        found = (
            conn.execute(
                select(versions).where(
                    versions.c.policy == policy, versions.c.number == int(digits)
                )
            )
            .mappings()
            .first()
        )
        if found is None:
            raise NotFoundError(f"no version {ref!r} of policy {policy!r}; it has {span}")
        return version_from_row(found)
    lowered = ref.lower()
    if len(lowered) >= _MIN_PREFIX and _HEX.fullmatch(lowered):
        rows = (
            conn.execute(
                select(versions)
                .where(versions.c.policy == policy, versions.c.digest.startswith(lowered))
                .order_by(versions.c.number)
                .limit(10)
            )
            .mappings()
            .all()
        )
        if len(rows) == 1:
            return version_from_row(rows[0])
        if not rows:
            raise NotFoundError(f"no version of policy {policy!r} has id {ref!r}; it has {span}")
        matches = ", ".join(f"v{r['number']} ({r['digest'][:12]})" for r in rows)
        raise AmbiguousReferenceError(
            f"{ref!r} matches several versions of {policy!r}: {matches}; give more characters"
        )
    raise NotFoundError(
        f"cannot read version reference {ref!r} of {policy!r}: use a version id or a unique "
        f"prefix of at least {_MIN_PREFIX} hex characters, vN, 'stable' or 'latest' ({span})"
    )


def move_stable(
    store: Store,
    conn: Connection,
    *,
    policy: str,
    to_id: str,
    kind: ReleaseKind,
    actor: str,
    reason: str,
    at: datetime,
    rollout_id: str | None = None,
) -> ReleaseEntry | None:
    """Move the stable pointer and append its history entry, in the caller's transaction.

    This is the only code that changes ``policies.stable_digest`` (design invariant 2).
    Returns ``None`` when ``to_id`` already is stable.
    """
    current = conn.execute(
        select(policies.c.stable_digest).where(policies.c.name == policy)
    ).scalar_one()
    if current == to_id:
        return None
    conn.execute(policies.update().where(policies.c.name == policy).values(stable_digest=to_id))
    seq = conn.execute(
        release_history.insert()
        .values(
            policy=policy,
            from_digest=current,
            to_digest=to_id,
            kind=kind.value,
            actor=actor,
            reason=reason,
            at=at,
            rollout_id=rollout_id,
        )
        .returning(release_history.c.id)
    ).scalar_one()
    record_audit(
        conn,
        at=at,
        actor=actor,
        action=f"stable.{kind.value}",
        subject=policy,
        reason=reason,
        details={"from": current, "to": to_id, "rollout_id": rollout_id},
    )
    store.bump_epoch(conn)
    return ReleaseEntry(int(seq), policy, current, to_id, kind, actor, reason, at, rollout_id)


def _span(conn: Connection, policy: str) -> str:
    low, high = conn.execute(
        select(func.min(versions.c.number), func.max(versions.c.number)).where(
            versions.c.policy == policy
        )
    ).one()
    if low is None:
        return "no versions"
    return f"v{low}" if low == high else f"v{low}..v{high}"


def latest_version_row(conn: Connection, policy: str) -> RowMapping | None:
    """The newest version's row of ``policy`` (``None`` before its first version)."""
    return (
        conn.execute(
            select(versions)
            .where(versions.c.policy == policy)
            .order_by(versions.c.number.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )


def version_row(conn: Connection, policy: str, version_id: str) -> RowMapping:
    return (
        conn.execute(
            select(versions).where(versions.c.policy == policy, versions.c.digest == version_id)
        )
        .mappings()
        .one()
    )


def version_from_row(row: Mapping[Any, Any]) -> Version:
    return Version(
        policy=row["policy"],
        id=row["digest"],
        number=row["number"],
        parent_id=row["parent_digest"],
        author=row["author"],
        message=row["message"],
        created_at=row["created_at"],
        canonical=row["spec"],
    )


def entry_from_row(row: Mapping[Any, Any]) -> ReleaseEntry:
    return ReleaseEntry(
        seq=row["id"],
        policy=row["policy"],
        from_id=row["from_digest"],
        to_id=row["to_digest"],
        kind=ReleaseKind(row["kind"]),
        actor=row["actor"],
        reason=row["reason"],
        at=row["at"],
        rollout_id=row["rollout_id"],
    )
