"""decide(): the pure heart of the controller — verdicts and stage clocks in, one action out.

No I/O, no clock reads: the caller hands in ``now``. That is what lets the tests sweep it
exhaustively and lets ``incident replay`` call it again on a bundle's stored inputs.

The order of precedence ("worst wins"):

1. a terminal rollout holds forever;
2. a breached guardrail whose action is ``rollback`` rolls back (a tripwire says so), even
   while paused, because a paused candidate still serves its share;
3. a paused rollout otherwise holds: only a human resumes it;
4. a breached ``pause`` guardrail pauses;
5. the stage is *ready* when no guardrail breaches (alert-only ones included), it has dwelt
   ``min_duration``, each arm has ``min_samples`` in this stage, no guardrail lacks data and,
   if the stage is ``strict``, every guardrail shows non-inferiority; a ready stage advances,
   or promotes when it is the last;
6. a stage that is not ready holds, and once past ``max_duration`` pauses for a human.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from policy_canary.controller._model import (
    Action,
    ActionKind,
    Reason,
    RolloutSnapshot,
    RolloutState,
    message,
)
from policy_canary.guardrails import GuardrailAction
from policy_canary.monitoring import Verdict, VerdictStatus
from policy_canary.plan import RolloutPlan, format_duration


def decide(
    plan: RolloutPlan, state: RolloutSnapshot, verdicts: Sequence[Verdict], now: datetime
) -> Action:
    """Return what the controller should do with this rollout now (see the module docstring)."""
    if state.state.is_terminal():
        return Action(ActionKind.HOLD, Reason.TERMINAL, message(Reason.TERMINAL, state=state.state))
    breaches = [v for v in verdicts if v.status.is_breach()]
    rollbacks = [v for v in breaches if v.action is GuardrailAction.ROLLBACK]
    if rollbacks:
        tripped = [v for v in rollbacks if v.tripwire]
        reason = Reason.TRIPWIRE if tripped else Reason.GUARDRAIL_ROLLBACK
        return _about(ActionKind.ROLLBACK, reason, tripped or rollbacks)
    if state.state is RolloutState.PAUSED:
        return Action(ActionKind.HOLD, Reason.PAUSED, message(Reason.PAUSED))
    pauses = [v for v in breaches if v.action is GuardrailAction.PAUSE]
    alerting = [v for v in breaches if v.action is GuardrailAction.ALERT]
    new_alerts = tuple(sorted({v.guardrail for v in alerting} - state.alerted))
    if pauses:
        paused = _about(ActionKind.PAUSE, Reason.GUARDRAIL_PAUSE, pauses)
        return Action(paused.kind, paused.reason, paused.message, paused.guardrails, new_alerts)

    stage = plan.stage(state.stage_index)
    dwell = max(now - state.stage_started_at, timedelta(0))
    blocker = _blocker(plan, state, verdicts, alerting, dwell)
    if blocker is None:
        if plan.is_last(state.stage_index):
            return Action(
                ActionKind.PROMOTE,
                Reason.LAST_STAGE_PASSED,
                message(Reason.LAST_STAGE_PASSED, stage=stage.name),
            )
        nxt = plan.stage(state.stage_index + 1)
        return Action(
            ActionKind.ADVANCE,
            Reason.STAGE_PASSED,
            message(Reason.STAGE_PASSED, stage=stage.name, next_stage=nxt.describe()),
        )
    if stage.max_duration is not None and dwell >= stage.max_duration:
        return Action(
            ActionKind.PAUSE,
            Reason.TIMED_OUT,
            message(
                Reason.TIMED_OUT,
                stage=stage.name,
                max_duration=format_duration(stage.max_duration),
                why=blocker.message,
            ),
            blocker.guardrails,
            new_alerts,
        )
    return Action(ActionKind.HOLD, blocker.reason, blocker.message, blocker.guardrails, new_alerts)


def _blocker(
    plan: RolloutPlan,
    state: RolloutSnapshot,
    verdicts: Sequence[Verdict],
    alerting: Sequence[Verdict],
    dwell: timedelta,
) -> Action | None:
    """The first reason the current stage cannot pass yet, or ``None`` when it is ready."""
    stage = plan.stage(state.stage_index)
    if alerting:
        return _about(ActionKind.HOLD, Reason.GUARDRAIL_ALERT, alerting)
    if dwell < stage.min_duration:
        return Action(
            ActionKind.HOLD,
            Reason.DWELL,
            message(
                Reason.DWELL,
                stage=stage.name,
                dwell=format_duration(timedelta(seconds=int(dwell.total_seconds()))),
                min_duration=format_duration(stage.min_duration),
            ),
        )
    if min(state.candidate_samples, state.stable_samples) < stage.min_samples:
        return Action(
            ActionKind.HOLD,
            Reason.SAMPLES,
            message(
                Reason.SAMPLES,
                stage=stage.name,
                candidate=state.candidate_samples,
                stable=state.stable_samples,
                min_samples=stage.min_samples,
            ),
        )
    waiting = [v for v in verdicts if v.status is VerdictStatus.INSUFFICIENT_DATA]
    if waiting:
        names = tuple(v.guardrail for v in waiting)
        # A metric nobody records will never arrive: name it and the fix, so the hold (and
        # the pause at max_duration) says why instead of waiting silently.
        blind = [v.reason.rstrip(".") for v in waiting if v.evidence.get("unreported")]
        return Action(
            ActionKind.HOLD,
            Reason.INSUFFICIENT_DATA,
            message(
                Reason.INSUFFICIENT_DATA,
                guardrails=", ".join(names),
                details="".join(f" ({b})" for b in blind),
            ),
            names,
        )
    if stage.strict:
        unproven = tuple(v.guardrail for v in verdicts if not v.non_inferior)
        if unproven:
            return Action(
                ActionKind.HOLD,
                Reason.NOT_NON_INFERIOR,
                message(Reason.NOT_NON_INFERIOR, stage=stage.name, guardrails=", ".join(unproven)),
                unproven,
            )
    return None


def _about(kind: ActionKind, reason: Reason, verdicts: Sequence[Verdict]) -> Action:
    names = tuple(v.guardrail for v in verdicts)
    # Monitors' reasons already name their guardrail; they are joined as written.
    details = "; ".join(v.reason.rstrip(".") for v in verdicts)
    text = message(reason, guardrails=", ".join(names), details=details)
    return Action(kind, reason, text, names)
