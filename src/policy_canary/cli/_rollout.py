"""``policy-canary rollout``: start a rollout, watch it, and steer it by hand."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import typer
from rich.table import Table

from policy_canary.cli._options import parse_interval
from policy_canary.cli._output import JsonOption, console, render, reporting, shown, state
from policy_canary.controller import RollbackResult, Rollouts, RolloutStatus
from policy_canary.monitoring import MetricCoverage
from policy_canary.plan import format_duration

app = typer.Typer(help="Start, watch and steer rollouts.", no_args_is_help=True)

_STATE_STYLE = {
    "running": "green",
    "paused": "yellow",
    "promoted": "bold green",
    "rolled_back": "bold red",
    "aborted": "dim",
}
_VERDICT_STYLE = {"breach": "bold red", "pass": "green", "insufficient_data": "yellow"}

ReasonOption = typer.Option(..., "--reason", help="Why (recorded in the audit trail).")
ActorOption = typer.Option(None, "--actor", help="Who (defaults to the OS user).")


def _rollouts(ctx: typer.Context) -> Rollouts:
    return Rollouts(state(ctx).store())


def _show(statuses: list[RolloutStatus]) -> None:
    if not statuses:
        console.print("no active rollouts")
        return
    table = Table("policy", "rollout", "state", "stage", "traffic", "dwell", "samples c/s", "last")
    for s in statuses:
        r = s.rollout
        style = _STATE_STYLE.get(r.state.value, "")
        table.add_row(
            shown(r.policy),
            r.id,
            f"[{style}]{r.state.value}[/]",
            f"{r.stage_index + 1}/{s.stages} {shown(s.stage.name)}",
            f"{r.traffic_bp / 100:g}%",
            f"{format_duration(s.dwell)} / {format_duration(s.stage.min_duration)}",
            f"{s.samples.get('candidate', 0)}/{s.samples.get('stable', 0)}"
            f" (≥{s.stage.min_samples})",
            shown((s.last_action or {}).get("message", "—")),
        )
    console.print(table)
    if len(statuses) == 1 and statuses[0].verdicts:
        verdicts = Table("guardrail", "metric", "verdict", "action", "non-inferior", "reason")
        for v in statuses[0].verdicts:
            style = _VERDICT_STYLE.get(v.status.value, "")
            verdicts.add_row(
                shown(v.guardrail),
                shown(v.metric),
                f"[{style}]{v.status.value}[/]",
                v.action.value,
                "yes" if v.non_inferior else "no",
                shown(v.reason),
            )
        console.print(verdicts)
    if len(statuses) == 1 and any(c.get("routed") for c in statuses[0].routed.values()):
        # Missing outcomes at a glance: what the gates routed against what was recorded.
        routed = Table("arm", "routed", "recorded", "recorded share")
        for arm in ("candidate", "stable"):
            counts = statuses[0].routed.get(arm, {})
            n, k = counts.get("routed", 0), counts.get("recorded", 0)
            routed.add_row(arm, f"{n:,}", f"{k:,}", f"{100 * k / n:.2f}%" if n else "—")
        console.print(routed)


def _print_row(json_output: bool, status: RolloutStatus, verb: str) -> None:
    r = status.rollout

    def human() -> None:
        console.print(
            f"{verb} rollout [bold]{r.id}[/] of {shown(r.policy)}: {status.candidate_label} vs "
            f"{status.baseline_label}, {r.state.value} at {shown(status.stage.describe())} "
            f"(revision {r.revision})",
            highlight=False,
        )

    render(json_output, status.to_dict(), human)


@app.command("start")
def start(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name."),
    candidate: str = typer.Option(
        ..., "--candidate", help="Version to roll out (id, prefix, vN, latest)."
    ),
    plan: Path | None = typer.Option(
        None, "--plan", help="Plan file (YAML); default: the built-in plan (see 'plan show')."
    ),
    force: bool = typer.Option(
        False, "--force", help="Start a candidate an earlier rollout rejected (needs --reason)."
    ),
    reason: str = typer.Option("", "--reason", help="Why (recorded with the rollout)."),
    require_metrics: bool = typer.Option(
        False,
        "--require-metrics",
        help="Refuse to start when stable's recent traffic lacks some guardrail's metric.",
    ),
    actor: str | None = ActorOption,
    json_output: bool = JsonOption,
) -> None:
    """Start rolling out a candidate version of NAME under a staged plan.

    Says per guardrail whether stable's recent traffic carries its metric (a guardrail on a
    metric nobody records holds every stage); --require-metrics refuses the start instead.
    """
    with reporting(json_output):
        rollouts = _rollouts(ctx)
        row = rollouts.start(
            name,
            candidate=candidate,
            plan=plan,
            actor=actor,
            reason=reason,
            force=force,
            require_metrics=require_metrics,
        )
        coverage = rollouts.metrics_coverage(name, plan)
        status = rollouts.get(row.id)
        r = status.rollout

        def human() -> None:
            console.print(
                f"started rollout [bold]{r.id}[/] of {shown(r.policy)}: {status.candidate_label} "
                f"vs {status.baseline_label}, {r.state.value} at "
                f"{shown(status.stage.describe())} (revision {r.revision})",
                highlight=False,
            )
            print_coverage(coverage)

        data = {**status.to_dict(), "metrics_coverage": [c.to_dict() for c in coverage]}
        render(json_output, data, human)


def print_coverage(coverage: tuple[MetricCoverage, ...]) -> None:
    """Warn about each guardrail whose metric stable's recent traffic does not carry."""
    for c in coverage:
        if not c.covered:
            console.print(f"[yellow]warning:[/] {shown(c.message())}", highlight=False)


@app.command("status")
def status(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Policy name (default: every active rollout)."),
    watch: bool = typer.Option(False, "--watch", help="Refresh until interrupted (Ctrl-C)."),
    interval: str = typer.Option("2s", "--interval", help="Refresh interval with --watch."),
    refreshes: int = typer.Option(
        0, "--refreshes", hidden=True, help="Stop --watch after N refreshes (tests)."
    ),
    json_output: bool = JsonOption,
) -> None:
    """Show active rollouts (or NAME's latest): stage, traffic, dwell, samples, verdicts."""
    with reporting(json_output):
        rollouts = _rollouts(ctx)
        seconds = parse_interval(interval).total_seconds() if watch else 0.0
        shown = 0
        while True:
            statuses = rollouts.status(name)
            render(json_output, [s.to_dict() for s in statuses], partial(_show, statuses))
            shown += 1
            if not watch or (refreshes and shown >= refreshes):
                return
            try:
                time.sleep(seconds)  # a person is watching: wall-clock pacing is the point
            except KeyboardInterrupt:
                return


@app.command("history")
def history(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name."),
    json_output: bool = JsonOption,
) -> None:
    """List every rollout of NAME, newest first, with how it ended."""
    with reporting(json_output):
        statuses = _rollouts(ctx).history(name)

        def human() -> None:
            if not statuses:
                console.print(f"{shown(name)} has no rollouts yet")
                return
            table = Table("rollout", "started", "candidate", "state", "stage", "ended", "why")
            for s in statuses:
                r = s.rollout
                style = _STATE_STYLE.get(r.state.value, "")
                table.add_row(
                    r.id,
                    r.created_at.strftime("%Y-%m-%d %H:%M"),
                    f"{s.candidate_label} vs {s.baseline_label}",
                    f"[{style}]{r.state.value}[/]",
                    shown(s.stage.describe()),
                    r.ended_at.strftime("%Y-%m-%d %H:%M") if r.ended_at else "—",
                    shown(r.end_reason or ""),
                )
            console.print(table)

        render(json_output, [s.to_dict() for s in statuses], human)


@app.command("pause")
def pause(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name."),
    reason: str = ReasonOption,
    actor: str | None = ActorOption,
    json_output: bool = JsonOption,
) -> None:
    """Hold NAME's candidate at its current share until someone resumes it."""
    with reporting(json_output):
        rollouts = _rollouts(ctx)
        row = rollouts.pause(name, reason=reason, actor=actor)
        _print_row(json_output, rollouts.get(row.id), "paused")


@app.command("resume")
def resume(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name."),
    reason: str = ReasonOption,
    actor: str | None = ActorOption,
    json_output: bool = JsonOption,
) -> None:
    """Resume NAME's paused rollout (the stage's dwell clock starts again)."""
    with reporting(json_output):
        rollouts = _rollouts(ctx)
        row = rollouts.resume(name, reason=reason, actor=actor)
        _print_row(json_output, rollouts.get(row.id), "resumed")


@app.command("promote")
def promote(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name."),
    reason: str = ReasonOption,
    full: bool = typer.Option(
        False, "--full", help="Skip every remaining stage and make the candidate stable now."
    ),
    actor: str | None = ActorOption,
    json_output: bool = JsonOption,
) -> None:
    """Advance NAME's rollout one stage (from the last stage, or with --full: promote)."""
    with reporting(json_output):
        rollouts = _rollouts(ctx)
        row = rollouts.promote(name, reason=reason, actor=actor, full=full)
        _print_row(json_output, rollouts.get(row.id), "promoted" if full else "advanced")


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name."),
    reason: str = ReasonOption,
    actor: str | None = ActorOption,
    json_output: bool = JsonOption,
) -> None:
    """Roll NAME's active rollout back; with none active, restore the previous stable."""
    with reporting(json_output):
        result = _rollouts(ctx).rollback(name, reason=reason, actor=actor)
        _print_rollback(json_output, result)


@app.command("abort")
def abort(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name."),
    reason: str = ReasonOption,
    actor: str | None = ActorOption,
    json_output: bool = JsonOption,
) -> None:
    """Stop NAME's rollout without judging the candidate (no rejection, no incident)."""
    with reporting(json_output):
        rollouts = _rollouts(ctx)
        row = rollouts.abort(name, reason=reason, actor=actor)
        _print_row(json_output, rollouts.get(row.id), "aborted")


def _print_rollback(json_output: bool, result: RollbackResult) -> None:
    def human() -> None:
        if result.rollout is not None:
            console.print(
                f"rolled back rollout [bold]{result.rollout.id}[/] of {shown(result.policy)}; the "
                "candidate is rejected and an incident was recorded",
                highlight=False,
            )
        console.print(shown(result.message), highlight=False)

    render(json_output, result.to_dict(), human)


def rollback_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name."),
    reason: str = ReasonOption,
    actor: str | None = ActorOption,
    json_output: bool = JsonOption,
) -> None:
    """Roll NAME back: its active rollout, or after a promotion the previous stable version."""
    rollback(ctx, name=name, reason=reason, actor=actor, json_output=json_output)
