"""Guardrail verdicts: what a monitor concludes, and the evidence behind it.

A verdict is the seam between the monitors (which compute it from events with anytime-valid
statistics) and the controller's pure ``decide()`` (which turns verdicts into an action).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from policy_canary.guardrails import GuardrailAction


class VerdictStatus(StrEnum):
    """A guardrail's current judgement."""

    BREACH = "breach"
    PASS = "pass"
    INSUFFICIENT_DATA = "insufficient_data"

    def is_breach(self) -> bool:
        """True when the guardrail has seen enough evidence of a regression to act."""
        return self is VerdictStatus.BREACH


@dataclass(frozen=True, slots=True)
class Verdict:
    """One guardrail's judgement at one moment, with the evidence that supports it.

    ``non_inferior`` is the positive evidence a ``strict`` stage needs before it may promote:
    the anytime-valid upper confidence bound of the candidate's regression is below the
    guardrail's tolerance. ``reason`` is the one sentence that alerts and incidents reuse.
    """

    guardrail: str
    metric: str
    status: VerdictStatus
    action: GuardrailAction
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    non_inferior: bool = False
    tripwire: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (stable keys; part of ``--json`` and incident bundles)."""
        return {
            "guardrail": self.guardrail,
            "metric": self.metric,
            "status": self.status.value,
            "action": self.action.value,
            "reason": self.reason,
            "evidence": dict(self.evidence),
            "non_inferior": self.non_inferior,
            "tripwire": self.tripwire,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """Rebuild a verdict from :meth:`to_dict` output (incident replay)."""
        return cls(
            guardrail=str(data["guardrail"]),
            metric=str(data["metric"]),
            status=VerdictStatus(data["status"]),
            action=GuardrailAction(data["action"]),
            reason=str(data["reason"]),
            evidence=dict(data.get("evidence", {})),
            non_inferior=bool(data.get("non_inferior", False)),
            tripwire=bool(data.get("tripwire", False)),
        )
