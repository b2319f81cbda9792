"""``policy-canary incident``: list, show, export and replay rollback incidents."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from policy_canary.cli._output import JsonOption, console, render, reporting, shown, state
from policy_canary.controller import Incidents, ReplayResult, replay_file

app = typer.Typer(help="Inspect and replay rollback incidents.", no_args_is_help=True)


def _incidents(ctx: typer.Context) -> Incidents:
    return Incidents(state(ctx).store())


@app.command("list")
def list_command(
    ctx: typer.Context,
    policy: str | None = typer.Option(None, "--policy", help="Only this policy's incidents."),
    limit: int = typer.Option(100, "--limit", min=1, help="Show at most this many, newest first."),
    json_output: bool = JsonOption,
) -> None:
    """List incidents, newest first."""
    with reporting(json_output):
        found = _incidents(ctx).list(policy=policy, limit=limit)

        def human() -> None:
            if not found:
                console.print("no incidents")
                return
            table = Table("id", "created", "policy", "kind", "rollout", "summary")
            for i in found:
                table.add_row(
                    i.id,
                    i.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    shown(i.policy),
                    shown(i.kind),
                    shown(i.rollout_id),
                    shown(i.summary),
                )
            console.print(table)

        render(json_output, [i.to_dict() for i in found], human)


@app.command("show")
def show(
    ctx: typer.Context,
    incident_id: str = typer.Argument(..., metavar="ID", help="Incident id or unique prefix."),
    json_output: bool = JsonOption,
) -> None:
    """Show one incident: the decision, the verdicts, the per-stage aggregates and the trace."""
    with reporting(json_output):
        incident = _incidents(ctx).get(incident_id)
        bundle = incident.bundle

        def human() -> None:
            console.print(
                f"[bold]{shown(incident.id)}[/]  {shown(incident.kind)}  {incident.created_at}"
            )
            console.print(shown(incident.summary), highlight=False)
            events = bundle.get("events", {})
            first, last = events.get("first_at"), events.get("last_at")
            console.print(f"events {shown(first)} → {shown(last)}")
            verdicts = Table("guardrail", "verdict", "action", "reason")
            for v in bundle.get("verdicts", []):
                verdicts.add_row(
                    *(shown(v[k]) for k in ("guardrail", "status", "action", "reason"))
                )
            console.print(verdicts)
            stages = Table("stage", "arm", "requests", "error rate", "flag rate", "mean latency")
            for name, arms in bundle.get("stages", {}).items():
                for arm, agg in arms.items():
                    stages.add_row(
                        shown(name),
                        shown(arm),
                        str(agg["requests"]),
                        _pct(agg.get("error_rate")),
                        _pct(agg.get("flag_rate")),
                        _num(agg.get("mean_latency_ms"), " ms"),
                    )
            console.print(stages)
            trace = Table("#", "at", "stage", "traffic", "action", "message")
            for t in bundle.get("trace", []):
                trace.add_row(
                    str(t["seq"]),
                    shown(t["at"]),
                    str(t["stage_index"] + 1),
                    f"{t['traffic_bp'] / 100:g}%",
                    shown(t["action"]),
                    shown(t["message"]),
                )
            console.print(trace)

        render(json_output, incident.to_dict(with_bundle=True), human)


@app.command("export")
def export(
    ctx: typer.Context,
    incident_id: str = typer.Argument(..., metavar="ID", help="Incident id or unique prefix."),
    output: Path = typer.Option(..., "-o", "--output", help="File to write (JSON)."),
    json_output: bool = JsonOption,
) -> None:
    """Write an incident's bundle to a file that 'incident replay' can check."""
    with reporting(json_output):
        key = state(ctx).settings.incident_key
        incident = _incidents(ctx).export(incident_id, output, key=key)
        render(
            json_output,
            {"id": incident.id, "path": str(output), "bundle_hash": incident.bundle_hash},
            lambda: console.print(f"exported {incident.id} to {shown(output)}", highlight=False),
        )


@app.command("replay")
def replay(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="A file written by 'incident export'."),
    json_output: bool = JsonOption,
) -> None:
    """Re-run decide() on an exported incident; exit 1 unless it decides the same, same tick."""
    with reporting(json_output):
        result = replay_file(file, key=state(ctx).settings.incident_key)
        render(json_output, result.to_dict(), lambda: _print_replay(result))
        if not result.ok:
            raise typer.Exit(1)


def _print_replay(result: ReplayResult) -> None:
    table = Table("#", "at", "recorded", "replayed", "")
    for s in result.steps:
        mark = "[green]same[/]" if s.matches else "[bold red]DIFFERENT[/]"
        table.add_row(
            str(s.seq),
            shown(s.at),
            shown(f"{s.recorded} ({s.recorded_reason})"),
            shown(f"{s.replayed} ({s.replayed_reason})"),
            mark,
        )
    console.print(table)
    console.print(escape(result.summary), highlight=False)
    console.print(_SIGNATURE[result.signature], highlight=False)
    if result.ok:
        how = "the manual rollback" if result.manual else "decide() rolls back"
        console.print(
            f"[green]replay matches[/]: {how} at tick {result.decisive_seq}, as recorded",
            highlight=False,
        )
    else:
        for problem in result.problems:
            console.print(f"[bold red]mismatch:[/] {shown(problem)}", highlight=False)


_SIGNATURE = {
    "verified": "[green]signature verified[/] with POLICY_CANARY_INCIDENT_KEY: the file is "
    "what a holder of the key exported",
    "unchecked": "[yellow]signature not checked[/]: set POLICY_CANARY_INCIDENT_KEY to verify "
    "it; the bundle hash alone guards against accidents, not deliberate edits",
    "unsigned": "[yellow]not signed[/]: the bundle hash guards against accidents, not "
    "deliberate edits (export with POLICY_CANARY_INCIDENT_KEY set to sign)",
}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, unit: str) -> str:
    return "—" if value is None else f"{value:.1f}{unit}"
