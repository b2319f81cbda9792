"""A catastrophic rate regression rolls back after its first few bad events (issue 12, part 3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from policy_canary.errors import PlanError
from policy_canary.guardrails import Guardrail
from policy_canary.monitoring import MonitorEvent, RolloutMonitor, VerdictStatus
from policy_canary.monitoring._monitor import MONITOR_STATE_FORMAT

T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: The default plan's safety guardrail.
SAFETY = Guardrail.from_mapping(
    {"name": "safety_flag_rate", "metric": "safety_flags", "max_increase": "25%"}
)


def _canary(n_requests: int, flagged_candidate: int) -> list[MonitorEvent]:
    """A 1% canary: stable never flags; the candidate's first ``flagged_candidate`` are flagged."""
    events = []
    flagged = 0
    for i in range(n_requests):
        candidate = i % 100 == 0
        flags: tuple[str, ...] = ()
        if candidate and flagged < flagged_candidate:
            flags, flagged = ("pii",), flagged + 1
        events.append(
            MonitorEvent(
                arm="candidate" if candidate else "stable",
                traffic_bp=100,
                at=T0 + timedelta(seconds=i),
                safety_flags=flags,
            )
        )
    return events


def test_two_flagged_requests_against_a_flawless_stable_roll_back_the_canary() -> None:
    # Before: the canary passed with the candidate flagging 2% against stable's 0% and was
    # rolled back 22-27 flagged requests later, at 10% of traffic.
    one = RolloutMonitor([SAFETY])
    one.fold(_canary(200, flagged_candidate=1))
    assert one.verdicts()[0].status is not VerdictStatus.BREACH
    two = RolloutMonitor([SAFETY])
    two.fold(_canary(200, flagged_candidate=2))
    verdict = two.verdicts()[0]
    assert verdict.status is VerdictStatus.BREACH
    assert verdict.evidence["bad_candidate"] == 2
    assert verdict.evidence["bad_stable"] == 0
    # The state (counts per share) still round-trips and continues the same test.
    again = RolloutMonitor.from_json(two.to_json())
    assert again.verdicts()[0].status is VerdictStatus.BREACH


def test_a_state_from_the_previous_rate_test_is_refused() -> None:
    # Format 4: the rate test's mixture changed (format 3 before it, format 2 before that), so
    # a rollout started under an earlier format cannot be continued (its e-value would come
    # from a different test than the one it started).
    assert MONITOR_STATE_FORMAT == 4
    for old in (2, 3):
        state = RolloutMonitor([SAFETY]).to_dict()
        state["format"] = old
        refused = rf"format {old} cannot be continued.*abort the rollout"
        with pytest.raises(PlanError, match=refused):
            RolloutMonitor.from_dict(state)
