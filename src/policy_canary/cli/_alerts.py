"""``policy-canary alerts``: list the outbox and deliver it (one dispatcher pass)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from policy_canary.alerts import AlertView, DeliveryStatus, Dispatcher, list_alerts, load_sinks
from policy_canary.cli._output import JsonOption, console, render, reporting, shown, state

app = typer.Typer(help="Inspect and deliver rollout alerts.", no_args_is_help=True)

_STYLE = {
    DeliveryStatus.DELIVERED: "green",
    DeliveryStatus.PENDING: "yellow",
    DeliveryStatus.SENDING: "cyan",
    DeliveryStatus.FAILING: "bold red",
}


def _deliveries(view: AlertView) -> str:
    if not view.deliveries:
        return "[yellow]none yet[/]"
    parts = []
    for d in view.deliveries:
        text = f"[{_STYLE[d.status]}]{shown(d.sink)} {d.status.value}[/]"
        if not d.status.is_settled() and d.attempts:
            text += f" after {d.attempts} {'attempt' if d.attempts == 1 else 'attempts'}"
            if d.last_error:
                text += f": {shown(d.last_error)}"
        parts.append(text)
    return "\n".join(parts)


@app.command("list")
def list_command(
    ctx: typer.Context,
    pending: bool = typer.Option(
        False, "--pending", help="Only alerts some sink has not accepted yet."
    ),
    limit: int = typer.Option(100, "--limit", min=1, help="Show at most this many, newest first."),
    json_output: bool = JsonOption,
) -> None:
    """List alerts, newest first, with each sink's delivery status."""
    with reporting(json_output):
        views = list_alerts(state(ctx).store(), status="pending" if pending else None, limit=limit)

        def human() -> None:
            if not views:
                console.print("no pending alerts" if pending else "no alerts yet")
                return
            table = Table("id", "created", "alert", "summary", "deliveries")
            for v in views:
                a = v.alert
                table.add_row(
                    str(a.id),
                    a.created_at.strftime("%Y-%m-%d %H:%M"),
                    f"{a.severity.value}\n{a.kind.value}\n{shown(a.policy or '—')}",
                    shown(a.summary),
                    _deliveries(v),
                )
            console.print(table)

        render(json_output, [v.to_dict() for v in views], human)


@app.command("dispatch")
def dispatch_command(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Alert sinks file (YAML or JSON); default $POLICY_CANARY_ALERTS_CONFIG. "
        "Sinks from POLICY_CANARY_ALERT_* variables are added.",
        show_default=False,
    ),
    json_output: bool = JsonOption,
) -> None:
    """Deliver every due alert once to every configured sink (failures are retried later)."""
    with reporting(json_output):
        sinks = load_sinks(config)
        report = Dispatcher(state(ctx).store(), sinks).dispatch_once()

        def human() -> None:
            names = ", ".join(shown(sink.name) for sink in sinks) or "none configured"
            console.print(
                f"delivered {report.delivered}, failed {report.failed}, "
                f"still pending {report.pending} (sinks: {names})"
            )
            if report.unconfigured:
                console.print(
                    f"[yellow]{report.unconfigured} deliveries are owed to sinks that are not "
                    "configured here; see 'policy-canary alerts list --pending'[/]"
                )

        render(json_output, {**report.to_dict(), "sinks": [s.name for s in sinks]}, human)
