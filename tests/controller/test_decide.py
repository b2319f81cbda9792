"""decide(): table-driven cases for every rule, and properties over random states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _rollout_support import small_plan
from policy_canary.controller import (
    ActionKind,
    Reason,
    RolloutSnapshot,
    RolloutState,
    decide,
)
from policy_canary.guardrails import GuardrailAction
from policy_canary.monitoring import Verdict, VerdictStatus

PLAN = small_plan()  # canary 1% (10m..1h, 10/arm), validation 10% strict (20m..2h, 20), soak 50%
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NAMES = ("error_rate", "critical", "quality")


def v(
    name: str = "error_rate",
    status: VerdictStatus = VerdictStatus.PASS,
    action: GuardrailAction = GuardrailAction.ROLLBACK,
    *,
    non_inferior: bool | None = None,
    tripwire: bool = False,
) -> Verdict:
    return Verdict(
        guardrail=name,
        metric="error",
        status=status,
        action=action,
        reason=f"{name} is {status.value}",
        non_inferior=status is VerdictStatus.PASS if non_inferior is None else non_inferior,
        tripwire=tripwire,
    )


PASSING = [v(n) for n in NAMES]


def snap(
    state: RolloutState = RolloutState.RUNNING,
    stage: int = 0,
    *,
    candidate: int = 100,
    stable: int = 100,
    alerted: frozenset[str] = frozenset(),
) -> RolloutSnapshot:
    return RolloutSnapshot(state, stage, T0, {"candidate": candidate, "stable": stable}, alerted)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


CASES = [
    # id, snapshot, verdicts, minutes since the stage started, expected kind, expected reason
    ("ready canary advances", snap(), PASSING, 10, ActionKind.ADVANCE, Reason.STAGE_PASSED),
    ("dwell not reached holds", snap(), PASSING, 9.9, ActionKind.HOLD, Reason.DWELL),
    ("too few candidate samples hold", snap(candidate=9), PASSING, 30, ActionKind.HOLD,
     Reason.SAMPLES),
    ("too few stable samples hold", snap(stable=9), PASSING, 30, ActionKind.HOLD, Reason.SAMPLES),
    ("insufficient samples past max pauses", snap(candidate=0), PASSING, 60, ActionKind.PAUSE,
     Reason.TIMED_OUT),
    ("insufficient data holds",
     [v("error_rate", VerdictStatus.INSUFFICIENT_DATA), *PASSING[1:]], None, 15,
     ActionKind.HOLD, Reason.INSUFFICIENT_DATA),
    ("insufficient data past max pauses",
     [v("error_rate", VerdictStatus.INSUFFICIENT_DATA), *PASSING[1:]], None, 61,
     ActionKind.PAUSE, Reason.TIMED_OUT),
    ("rollback breach rolls back before dwell", snap(),
     [v("error_rate", VerdictStatus.BREACH), *PASSING[1:]], 0, ActionKind.ROLLBACK,
     Reason.GUARDRAIL_ROLLBACK),
    ("tripwire rolls back at once", snap(candidate=0, stable=0),
     [v("critical", VerdictStatus.BREACH, tripwire=True)], 0, ActionKind.ROLLBACK,
     Reason.TRIPWIRE),
    ("pause breach pauses", snap(), [v("error_rate", VerdictStatus.BREACH, GuardrailAction.PAUSE)],
     30, ActionKind.PAUSE, Reason.GUARDRAIL_PAUSE),
    ("alert breach holds and blocks promotion", snap(),
     [*PASSING[:2], v("quality", VerdictStatus.BREACH, GuardrailAction.ALERT)], 30,
     ActionKind.HOLD, Reason.GUARDRAIL_ALERT),
    ("alert breach past max pauses", snap(),
     [*PASSING[:2], v("quality", VerdictStatus.BREACH, GuardrailAction.ALERT)], 60,
     ActionKind.PAUSE, Reason.TIMED_OUT),
    ("strict stage without non-inferiority holds", snap(stage=1),
     [v("error_rate", non_inferior=False), *PASSING[1:]], 20, ActionKind.HOLD,
     Reason.NOT_NON_INFERIOR),
    ("strict stage with non-inferiority advances", snap(stage=1), PASSING, 20, ActionKind.ADVANCE,
     Reason.STAGE_PASSED),
    ("non-strict stage ignores non-inferiority", snap(),
     [v(n, non_inferior=False) for n in NAMES], 10, ActionKind.ADVANCE, Reason.STAGE_PASSED),
    ("last stage promotes", snap(stage=2), PASSING, 30, ActionKind.PROMOTE,
     Reason.LAST_STAGE_PASSED),
    ("last stage without max never times out", snap(stage=2, candidate=0), PASSING, 10_000,
     ActionKind.HOLD, Reason.SAMPLES),
    ("paused holds", snap(RolloutState.PAUSED), PASSING, 30, ActionKind.HOLD, Reason.PAUSED),
    ("paused still rolls back on a rollback breach", snap(RolloutState.PAUSED),
     [v("error_rate", VerdictStatus.BREACH)], 30, ActionKind.ROLLBACK, Reason.GUARDRAIL_ROLLBACK),
    ("paused ignores pause breaches", snap(RolloutState.PAUSED),
     [v("error_rate", VerdictStatus.BREACH, GuardrailAction.PAUSE)], 30, ActionKind.HOLD,
     Reason.PAUSED),
    ("promoted is terminal", snap(RolloutState.PROMOTED),
     [v("error_rate", VerdictStatus.BREACH)], 30, ActionKind.HOLD, Reason.TERMINAL),
    ("rolled back is terminal", snap(RolloutState.ROLLED_BACK), PASSING, 30, ActionKind.HOLD,
     Reason.TERMINAL),
    ("aborted is terminal", snap(RolloutState.ABORTED), PASSING, 30, ActionKind.HOLD,
     Reason.TERMINAL),
]  # fmt: skip


@pytest.mark.parametrize(
    ("snapshot", "verdicts", "minutes", "kind", "reason"),
    [
        pytest.param(c[1] if isinstance(c[1], RolloutSnapshot) else snap(), *_rest, id=c[0])
        for c in CASES
        for _rest in [
            (c[2], c[3], c[4], c[5]) if isinstance(c[1], RolloutSnapshot) else (c[1], *c[3:])
        ]
    ],
)
def test_decide_table(
    snapshot: RolloutSnapshot,
    verdicts: list[Verdict],
    minutes: float,
    kind: ActionKind,
    reason: Reason,
) -> None:
    action = decide(PLAN, snapshot, verdicts, at(minutes))
    assert (action.kind, action.reason) == (kind, reason), action.message


def test_rollback_names_the_breached_guardrails_and_their_reasons() -> None:
    verdicts = [v("error_rate", VerdictStatus.BREACH), v("quality", VerdictStatus.BREACH)]
    action = decide(PLAN, snap(), verdicts, at(1))
    assert action.guardrails == ("error_rate", "quality")
    assert action.message == (
        "guardrail error_rate, quality breached: error_rate is breach; quality is breach; "
        "rolling back"
    )


def test_alert_only_breach_is_alerted_once() -> None:
    verdicts = [*PASSING[:2], v("quality", VerdictStatus.BREACH, GuardrailAction.ALERT)]
    first = decide(PLAN, snap(), verdicts, at(1))
    again = decide(PLAN, snap(alerted=frozenset({"quality"})), verdicts, at(2))
    assert first.alerts == ("quality",)
    assert again.alerts == ()
    assert again.kind is ActionKind.HOLD


def test_messages_name_the_stage_and_the_numbers() -> None:
    action = decide(PLAN, snap(candidate=3, stable=50), PASSING, at(12))
    assert action.message == (
        "stage canary has 3 candidate and 50 stable samples; it needs 10 per arm"
    )
    assert decide(PLAN, snap(), PASSING, at(10)).message == (
        "stage canary passed; advancing to validation 10%"
    )


def test_clock_before_stage_start_counts_as_no_dwell() -> None:
    assert decide(PLAN, snap(), PASSING, at(-5)).reason is Reason.DWELL


# -- properties ---------------------------------------------------------------------------

statuses = st.sampled_from(list(VerdictStatus))
actions = st.sampled_from(list(GuardrailAction))
verdict_lists = st.lists(
    st.builds(
        v,
        name=st.sampled_from(NAMES),
        status=statuses,
        action=actions,
        non_inferior=st.booleans(),
        tripwire=st.booleans(),
    ),
    max_size=4,
)
snapshots = st.builds(
    snap,
    state=st.sampled_from(list(RolloutState)),
    stage=st.integers(0, 2),
    candidate=st.integers(0, 50),
    stable=st.integers(0, 50),
    alerted=st.frozensets(st.sampled_from(NAMES)),
)
minutes = st.floats(min_value=-10, max_value=500, allow_nan=False)


@settings(max_examples=400, deadline=None)
@given(snapshots, verdict_lists, minutes)
def test_decide_properties(snapshot: RolloutSnapshot, verdicts: list[Verdict], m: float) -> None:
    action = decide(PLAN, snapshot, verdicts, at(m))
    stage = PLAN.stage(snapshot.stage_index)
    breached = any(x.status.is_breach() for x in verdicts)
    # Terminal states stay terminal: nothing but hold.
    if snapshot.state.is_terminal():
        assert action.kind is ActionKind.HOLD
    # Never promote or advance with a breach, before min_duration, short of samples, or paused.
    if action.kind in (ActionKind.ADVANCE, ActionKind.PROMOTE):
        assert not breached
        assert at(m) - snapshot.stage_started_at >= stage.min_duration
        assert min(snapshot.candidate_samples, snapshot.stable_samples) >= stage.min_samples
        assert snapshot.state is RolloutState.RUNNING
        assert all(x.status is VerdictStatus.PASS for x in verdicts)
        if stage.strict:
            assert all(x.non_inferior for x in verdicts)
        assert (action.kind is ActionKind.PROMOTE) == PLAN.is_last(snapshot.stage_index)
    # A breach whose action is rollback always rolls an active rollout back.
    if snapshot.state.is_active() and any(
        x.status.is_breach() and x.action is GuardrailAction.ROLLBACK for x in verdicts
    ):
        assert action.kind is ActionKind.ROLLBACK
    # Alerts are only for alert-only breaches not yet alerted on.
    assert (
        set(action.alerts)
        <= {
            x.guardrail
            for x in verdicts
            if x.status.is_breach() and x.action is GuardrailAction.ALERT
        }
        - snapshot.alerted
    )
    # decide() is a function: the same inputs give the same action.
    assert decide(PLAN, snapshot, verdicts, at(m)) == action
