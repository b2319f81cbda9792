"""The outbox: alerts written in the caller's transaction, and reading them back.

Public names are re-exported by :mod:`policy_canary.alerts`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, exists, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from policy_canary.alerts._types import (
    Alert,
    AlertKind,
    AlertStatus,
    DeliveryStatus,
    Severity,
    dump_payload,
    parse_enum,
)
from policy_canary.clock import utc
from policy_canary.errors import InputError, StoreError
from policy_canary.limits import check_limit
from policy_canary.store import Store
from policy_canary.store.schema import alert_deliveries, alerts

_KEY_MAX = 200
_d = alert_deliveries


# -- the outbox ----------------------------------------------------------------------------


def enqueue_alert(
    conn: Connection,
    *,
    key: str,
    kind: AlertKind | str,
    severity: Severity | str,
    summary: str,
    payload: Mapping[str, Any],
    at: datetime,
    policy: str | None = None,
    rollout_id: str | None = None,
) -> int | None:
    """Add one alert to the outbox inside the caller's transaction; return its id.

    Idempotent on ``key``: if an alert with this key exists, nothing is inserted and ``None``
    is returned, without disturbing the caller's transaction (``INSERT ... ON CONFLICT DO
    NOTHING``). ``payload`` values JSON cannot hold (``inf``, datetimes) are stored as strings
    rather than failing the caller's transition.
    ``kind`` and ``severity`` are an :class:`AlertKind` and a :class:`Severity` (or their
    values, which are checked).
    """
    alert_kind = parse_enum(AlertKind, kind, "alert kind")
    alert_severity = parse_enum(Severity, severity, "alert severity")
    if not key or len(key) > _KEY_MAX:
        raise InputError(f"an alert key must be 1-{_KEY_MAX} characters; got {len(key)}")
    if not summary.strip():
        raise InputError("an alert needs a non-empty summary")
    if at.tzinfo is None:
        raise InputError("an alert's time must be timezone-aware (UTC); got a naive datetime")
    values = {
        "key": key,
        "created_at": at,
        "policy": policy,
        "rollout_id": rollout_id,
        "kind": alert_kind.value,
        "severity": alert_severity.value,
        "summary": summary,
        "payload": dump_payload(payload),
    }
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(alerts)
    elif dialect == "sqlite":
        stmt = sqlite.insert(alerts)
    else:  # the store supports only these two; say so rather than abort a transition
        raise StoreError(f"alerts need SQLite or PostgreSQL, not {dialect}")
    new_id = conn.execute(
        stmt.values(**values)
        .on_conflict_do_nothing(index_elements=[alerts.c.key])
        .returning(alerts.c.id)
    ).scalar_one_or_none()
    return None if new_id is None else int(new_id)


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """One alert's delivery status with one sink."""

    sink: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form (stable keys; part of ``alerts list --json``)."""
        return {
            "sink": self.sink,
            "status": self.status.value,
            "attempts": self.attempts,
            "next_attempt_at": _iso(self.next_attempt_at),
            "last_error": self.last_error,
            "delivered_at": _iso(self.delivered_at),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class AlertView:
    """An alert with its per-sink deliveries, as :func:`list_alerts` returns it."""

    alert: Alert
    deliveries: tuple[DeliveryView, ...]

    @property
    def status(self) -> AlertStatus:
        """``delivered`` once every sink it was routed to accepted it, else ``pending``."""
        if self.deliveries and all(d.status.is_settled() for d in self.deliveries):
            return AlertStatus.DELIVERED
        return AlertStatus.PENDING

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form (stable keys; part of ``alerts list --json``)."""
        data = self.alert.to_dict()
        del data["format"]
        data["status"] = self.status.value
        data["deliveries"] = [d.to_dict() for d in self.deliveries]
        return data


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def undelivered(alert_id: Any) -> Any:
    """SQL: some sink has a delivery row for this alert that is not delivered yet."""
    return exists().where(_d.c.alert_id == alert_id, _d.c.status != DeliveryStatus.DELIVERED.value)


def routed(alert_id: Any) -> Any:
    """SQL: a dispatcher has routed this alert to at least one sink."""
    return exists().where(_d.c.alert_id == alert_id)


def list_alerts(store: Store, *, status: str | None = None, limit: int = 100) -> list[AlertView]:
    """Return the newest ``limit`` alerts (optionally only ``pending``, ``delivered`` or
    ``failed``: some sink's last attempt failed).

    An alert is pending until every sink it was routed to has accepted it; one that no
    dispatcher has seen yet (no delivery rows) is pending too.
    """
    wanted = None if status is None else parse_enum(AlertStatus, status, "alert status")
    check_limit(limit)
    query = select(alerts).order_by(alerts.c.id.desc()).limit(limit)
    if wanted is AlertStatus.PENDING:
        query = query.where(or_(~routed(alerts.c.id), undelivered(alerts.c.id)))
    elif wanted is AlertStatus.DELIVERED:
        query = query.where(routed(alerts.c.id), ~undelivered(alerts.c.id))
    elif wanted is AlertStatus.FAILED:
        query = query.where(
            exists().where(
                _d.c.alert_id == alerts.c.id, _d.c.status == DeliveryStatus.FAILING.value
            )
        )
    with store.read() as conn:
        rows = conn.execute(query).mappings().all()
        ids = [row["id"] for row in rows]
        by_alert: dict[int, list[DeliveryView]] = {i: [] for i in ids}
        if ids:
            for d in conn.execute(
                select(_d).where(_d.c.alert_id.in_(ids)).order_by(_d.c.alert_id, _d.c.sink)
            ).mappings():
                by_alert[d["alert_id"]].append(_delivery(d))
    return [AlertView(alert_from_row(row), tuple(by_alert[row["id"]])) for row in rows]


def alert_from_row(row: RowMapping) -> Alert:
    """Build the :class:`Alert` that sinks receive from an ``alerts`` row."""
    return Alert(
        id=int(row["id"]),
        key=row["key"],
        kind=AlertKind(row["kind"]),
        severity=Severity(row["severity"]),
        summary=row["summary"],
        created_at=utc(row["created_at"]),
        policy=row["policy"],
        rollout_id=row["rollout_id"],
        payload=json.loads(row["payload"]),
    )


def _delivery(row: RowMapping) -> DeliveryView:
    return DeliveryView(
        sink=row["sink"],
        status=DeliveryStatus(row["status"]),
        attempts=int(row["attempts"]),
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
        updated_at=row["updated_at"],
    )
