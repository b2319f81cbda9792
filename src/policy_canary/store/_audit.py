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
from policy_canary.store.schema import ACTOR, audit

#: Longest actor (``--actor``, ``--author``, an import's ``author``) the store accepts.
MAX_ACTOR_CHARS = ACTOR


def default_actor() -> str:
    """The OS user running this process, the default actor of every write."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no passwd entry / no login name in containers
        return "unknown"


def actor_or_default(actor: str | None, *, option: str = "--actor") -> str:
    """Return ``actor`` (or the OS user when it is None or empty), validated for the store.

    PostgreSQL refuses more than :data:`MAX_ACTOR_CHARS` characters and NUL bytes where
    SQLite would store them; checking here gives both backends the same answer, a user error.
    """
    who = default_actor() if actor is None or actor == "" else actor
    return check_short_text(who, what=option)


def check_short_text(value: str, *, what: str, limit: int = MAX_ACTOR_CHARS) -> str:
    """:func:`check_text` plus a length limit, for text stored in a ``varchar`` column."""
    check_text(value, what=what)
    if len(value) > limit:
        raise InputError(
            f"{what} is {len(value):,} characters long; give at most {limit} "
            "(a user or service name)"
        )
    return value


def check_text(value: str, *, what: str) -> str:
    """Return ``value`` if every backend can store it: no NUL byte, no lone surrogate."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be text, not {type(value).__name__}")
    if "\x00" in value:
        raise InputError(f"{what} contains a NUL byte (\\x00); remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = value[exc.start]
        if "\udc80" <= char <= "\udcff":  # an undecodable byte, as Python escapes it
            raise InputError(
                f"{what} is not valid UTF-8 text (byte 0x{ord(char) - 0xDC00:02x}, at "
                f"character {exc.start}); give arguments and files in UTF-8"
            ) from None
        raise InputError(
            f"{what} contains a lone surrogate ({char!r} at {exc.start}); "
            "it is not valid Unicode text"
        ) from None
    return value


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
