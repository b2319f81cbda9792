"""The append-only audit trail: every write records who, when, what, on what, and why."""

from __future__ import annotations

import getpass
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from policy_canary.errors import InputError
from policy_canary.store import Store
from policy_canary.store.schema import audit


def default_actor() -> str:
    """The OS user running this process, the default actor of every write."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no passwd entry / no login name in containers
        return "unknown"


def record_audit(
    conn: Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    reason: str = "",
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append one audit row inside the caller's transaction."""
    conn.execute(
        audit.insert().values(
            at=at,
            actor=actor,
            action=action,
            subject=subject,
            reason=reason,
            details=json.dumps(dict(details or {}), sort_keys=True, default=str),
        )
    )


def audit_entries(
    store: Store, *, limit: int = 100, actor: str | None = None, subject: str | None = None
) -> list[dict[str, Any]]:
    """The newest ``limit`` audit rows (of ``actor`` / ``subject``), newest first, as JSON."""
    if limit < 1:
        raise InputError(f"limit must be at least 1; got {limit}")
    query = select(audit).order_by(audit.c.id.desc()).limit(limit)
    if actor is not None:
        query = query.where(audit.c.actor == actor)
    if subject is not None:
        query = query.where(audit.c.subject == subject)
    with store.read() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        {
            "id": r["id"],
            "at": r["at"].isoformat(),
            "actor": r["actor"],
            "action": r["action"],
            "subject": r["subject"],
            "reason": r["reason"],
            "details": json.loads(r["details"]),
        }
        for r in rows
    ]
