"""The alert value types shared by the outbox, the dispatcher and the sinks.

They live apart from :mod:`policy_canary.alerts` so the sinks (``_sinks.py``) and the outbox
can both import them without a cycle; users import everything from ``policy_canary.alerts``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any, TypeVar

from policy_canary.canonical import jsonable
from policy_canary.errors import InputError

E = TypeVar("E", bound=Enum)

#: Identifies the JSON body a webhook receives; bump the suffix on an incompatible change.
ALERT_FORMAT = "policy-canary.alert/1"


class AlertKind(StrEnum):
    """What happened to a rollout that someone should hear about."""

    ROLLBACK = "rollback"
    PAUSED = "paused"
    PROMOTED = "promoted"
    GUARDRAIL_ALERT = "guardrail_alert"
    STAGE_ADVANCED = "stage_advanced"


class Severity(StrEnum):
    """How urgently a person should look: ``critical`` pages, ``info`` is for the record."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def emoji(self) -> str:
        """The Slack emoji shown in front of the alert (kept here so it stays consistent)."""
        return _EMOJI[self]


_EMOJI = {
    Severity.CRITICAL: ":rotating_light:",
    Severity.WARNING: ":warning:",
    Severity.INFO: ":information_source:",
}


class DeliveryStatus(StrEnum):
    """Where one alert stands with one sink.

    ``pending`` waits for its (next) attempt, ``sending`` is claimed by a dispatcher right now,
    ``failing`` is pending after repeated failures (still retried, shown loudly), and
    ``delivered`` is final. Nothing is ever dropped: only ``delivered`` is settled.
    """

    PENDING = "pending"
    SENDING = "sending"
    FAILING = "failing"
    DELIVERED = "delivered"

    def is_settled(self) -> bool:
        """True once the sink has accepted the alert; no further attempt will be made."""
        return self is DeliveryStatus.DELIVERED


class AlertStatus(StrEnum):
    """An alert's overall state: delivered to every sink it was routed to, or not yet.

    ``failed`` is a filter over pending alerts: some sink's last attempt failed.
    """

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def parse_enum(enum: type[E], value: str, what: str) -> E:
    """Return ``enum(value)`` or raise an :class:`InputError` that lists the allowed values."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(str(member.value) for member in enum)
        raise InputError(f"unknown {what} {value!r}; use one of {allowed}") from None


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert from the outbox, as every sink receives it.

    ``key`` is the idempotency key: the same alert carries the same key on every attempt and
    to every sink, so a receiver can drop a resend that follows a crash.
    """

    id: int
    key: str
    kind: AlertKind
    severity: Severity
    summary: str
    created_at: datetime
    policy: str | None = None
    rollout_id: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form (the webhook body and the ``--json`` output use it)."""
        return {
            "format": ALERT_FORMAT,
            "id": self.id,
            "key": self.key,
            "kind": self.kind.value,
            "severity": self.severity.value,
            "summary": self.summary,
            "created_at": self.created_at.isoformat(),
            "policy": self.policy,
            "rollout_id": self.rollout_id,
            "payload": dict(self.payload),
        }


def dump_payload(payload: Mapping[str, Any]) -> str:
    """Serialise a payload for the ``alerts.payload`` column (sorted keys, finite numbers)."""
    return json.dumps(jsonable(payload), sort_keys=True, ensure_ascii=False, allow_nan=False)
