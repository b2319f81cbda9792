"""The controller's vocabulary: rollout states, actions, reason codes and decide()'s inputs.

Everything a person reads about a decision (CLI output, alert summaries, incident summaries)
is built from :data:`MESSAGES`, so the wording stays consistent and greppable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class RolloutState(StrEnum):
    """Where a rollout stands; the last three are terminal and final."""

    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    def is_terminal(self) -> bool:
        """True for promoted, rolled_back and aborted: nothing moves a rollout out of these."""
        return self in _TERMINAL

    def is_active(self) -> bool:
        """True for running and paused: the candidate still serves its share."""
        return not self.is_terminal()


_TERMINAL = frozenset({RolloutState.PROMOTED, RolloutState.ROLLED_BACK, RolloutState.ABORTED})
#: The states in which a rollout counts as active (one per policy, design invariant 3).
ACTIVE_STATES = (RolloutState.RUNNING.value, RolloutState.PAUSED.value)


class ActionKind(StrEnum):
    """What :func:`~policy_canary.controller.decide` tells the controller to do."""

    HOLD = "hold"
    ADVANCE = "advance"
    PAUSE = "pause"
    ROLLBACK = "rollback"
    PROMOTE = "promote"

    def is_transition(self) -> bool:
        """True when the action changes the rollout's state or stage (everything but hold)."""
        return self is not ActionKind.HOLD

    def target_state(self) -> RolloutState | None:
        """The state a transition leads to (``None`` for hold and advance, which stay running)."""
        return _TARGET.get(self)


_TARGET = {
    ActionKind.PAUSE: RolloutState.PAUSED,
    ActionKind.ROLLBACK: RolloutState.ROLLED_BACK,
    ActionKind.PROMOTE: RolloutState.PROMOTED,
}


class Reason(StrEnum):
    """Why an action was chosen: a stable code for programs, with a message in MESSAGES."""

    TERMINAL = "terminal"
    PAUSED = "paused"
    TRIPWIRE = "tripwire"
    GUARDRAIL_ROLLBACK = "guardrail_rollback"
    GUARDRAIL_PAUSE = "guardrail_pause"
    GUARDRAIL_ALERT = "guardrail_alert"
    DWELL = "dwell"
    SAMPLES = "samples"
    INSUFFICIENT_DATA = "insufficient_data"
    NOT_NON_INFERIOR = "not_non_inferior"
    TIMED_OUT = "timed_out"
    STAGE_PASSED = "stage_passed"
    LAST_STAGE_PASSED = "last_stage_passed"
    MANUAL = "manual"


#: Every user-facing sentence about a decision, by reason code (``str.format`` fields).
MESSAGES: Mapping[Reason, str] = {
    Reason.TERMINAL: "the rollout is {state}; nothing more to decide",
    Reason.PAUSED: "paused; waiting for a human to resume, promote or roll back",
    Reason.TRIPWIRE: "tripwire {guardrails} fired: {details}; rolling back at once",
    Reason.GUARDRAIL_ROLLBACK: "guardrail {guardrails} breached: {details}; rolling back",
    Reason.GUARDRAIL_PAUSE: "guardrail {guardrails} breached: {details}; pausing for a human",
    Reason.GUARDRAIL_ALERT: "guardrail {guardrails} breached (alert only): {details}; holding",
    Reason.DWELL: "stage {stage} has dwelt {dwell} of its minimum {min_duration}",
    Reason.SAMPLES: (
        "stage {stage} has {candidate} candidate and {stable} stable samples; "
        "it needs {min_samples} per arm"
    ),
    Reason.INSUFFICIENT_DATA: "not enough data yet for guardrail {guardrails}{details}",
    Reason.NOT_NON_INFERIOR: (
        "strict stage {stage} needs positive evidence of non-inferiority; "
        "not yet shown for {guardrails}"
    ),
    Reason.TIMED_OUT: (
        "stage {stage} passed its maximum duration {max_duration} and still cannot pass "
        "({why}); paused for a human"
    ),
    Reason.STAGE_PASSED: "stage {stage} passed; advancing to {next_stage}",
    Reason.LAST_STAGE_PASSED: "last stage {stage} passed; promoting the candidate",
    Reason.MANUAL: "{verb} by {actor}: {reason}",
}


#: Sentences about rollouts outside decide()'s reasons: starts, alert and incident summaries.
NOTICES: Mapping[str, str] = {
    "started": "started {candidate} against {baseline} at {stage}",
    "started_forced": (
        "started {candidate} against {baseline} at {stage} (forced after rejection: {reason})"
    ),
    "alert": "{policy}: {message}",
    "guardrail_alert": "{policy}: guardrail {guardrail} breached (alert only); the rollout holds",
    "incident": "{policy}: {candidate} rolled back to {baseline}: {message}",
    "stable_rollback": "{policy}: rolled back from {current} to {target} by {actor}: {reason}",
}


def notice(key: str, /, **fields: Any) -> str:
    """The user-facing sentence :data:`NOTICES` holds under ``key``, filled in."""
    return NOTICES[key].format(**fields)


def message(code: Reason, /, **fields: Any) -> str:
    """The user-facing sentence for reason ``code``, with its fields filled in."""
    return MESSAGES[code].format(**fields)


@dataclass(frozen=True, slots=True)
class Action:
    """decide()'s answer: what to do, why (a code and a sentence), and which guardrails.

    ``alerts`` names alert-only guardrails that breached and have not been alerted on yet:
    the controller enqueues one alert for each and remembers it (alert once).
    """

    kind: ActionKind
    reason: Reason
    message: str
    guardrails: tuple[str, ...] = ()
    alerts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (decision trace, incidents, ``--json``)."""
        return {
            "kind": self.kind.value,
            "reason": self.reason.value,
            "message": self.message,
            "guardrails": list(self.guardrails),
            "alerts": list(self.alerts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Action:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            kind=ActionKind(data["kind"]),
            reason=Reason(data["reason"]),
            message=str(data["message"]),
            guardrails=tuple(data.get("guardrails", ())),
            alerts=tuple(data.get("alerts", ())),
        )


@dataclass(frozen=True, slots=True)
class RolloutSnapshot:
    """The part of a rollout's stored state that decide() reads.

    ``samples`` counts requests per arm in the current stage; ``alerted`` names the alert-only
    guardrails already alerted on in this rollout.
    """

    state: RolloutState
    stage_index: int
    stage_started_at: datetime
    samples: Mapping[str, int] = field(default_factory=dict)
    alerted: frozenset[str] = frozenset()

    @property
    def candidate_samples(self) -> int:
        """Candidate requests seen in the current stage."""
        return int(self.samples.get("candidate", 0))

    @property
    def stable_samples(self) -> int:
        """Stable requests seen in the current stage."""
        return int(self.samples.get("stable", 0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored with every tick so a replay sees the same inputs."""
        return {
            "state": self.state.value,
            "stage_index": self.stage_index,
            "stage_started_at": self.stage_started_at.isoformat(),
            "samples": {k: int(v) for k, v in sorted(self.samples.items())},
            "alerted": sorted(self.alerted),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutSnapshot:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            state=RolloutState(data["state"]),
            stage_index=int(data["stage_index"]),
            stage_started_at=datetime.fromisoformat(data["stage_started_at"]),
            samples={str(k): int(v) for k, v in data.get("samples", {}).items()},
            alerted=frozenset(data.get("alerted", ())),
        )
