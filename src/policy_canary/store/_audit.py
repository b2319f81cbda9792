"""The append-only audit trail: every write records who, when, what, on what, and why."""

from __future__ import annotations

import getpass
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

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
