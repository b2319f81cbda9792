"""``policy-canary plan``: validate a plan file, or print the default plan."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import typer
import yaml
from rich.table import Table

from policy_canary.cli._output import JsonOption, console, render, reporting, shown, state
from policy_canary.controller._rollouts import stable_baseline, stable_coverage
from policy_canary.errors import InputError
from policy_canary.monitoring import PreflightRow
from policy_canary.plan import RolloutPlan, format_duration
from policy_canary.reports import plan_check_report

app = typer.Typer(help="Validate and show rollout plans.", no_args_is_help=True)


def _describe(plan: RolloutPlan) -> None:
    console.print(f"alpha (false-rollback budget) {plan.alpha:g}; plan hash {plan.digest[:12]}")
    stages = Table("#", "stage", "traffic", "min", "max", "min samples/arm", "strict", "overrides")
    for i, s in enumerate(plan.stages, start=1):
        stages.add_row(
            str(i),
            shown(s.name),
            f"{s.traffic_percent:g}%",
            format_duration(s.min_duration),
            format_duration(s.max_duration) if s.max_duration else "—",
            str(s.min_samples),
            "yes" if s.strict else "",
            "\n".join(
                shown(f"{g}: " + ", ".join(f"{k}={v}" for k, v in o.items()))
                for g, o in s.guardrails.items()
            ),
        )
    console.print(stages)
    rules = Table("guardrail", "rule", "action", "min samples")
    for g in plan.guardrails:
        rules.add_row(shown(g.name), shown(g.describe()), g.action.value, str(g.min_samples))
    console.print(rules)
    console.print("passing the last stage promotes the candidate to 100% (it becomes stable)")


def _rates(values: list[str]) -> dict[str, float]:
    rates = {}
    for item in values:
        metric, sep, rate = item.partition("=")
        try:
            rates[metric.strip()] = float(rate)
        except ValueError:
            sep = ""
        if not sep or not 0.0 < rates.get(metric.strip(), 0.0) < 1.0:
            raise InputError(
                f"--baseline-rate {item!r}: write METRIC=RATE with a rate in (0, 1), "
                "e.g. error=0.01"
            )
    return rates


def _preflight(rows: list[PreflightRow]) -> None:
    table = Table("stage", "guardrail", "expected candidate requests", "Wald floor", "time", "note")
    for r in rows:
        table.add_row(
            shown(r.stage),
            shown(r.guardrail),
            f"{r.expected_candidate_requests:,.0f}" if r.expected_candidate_requests else "—",
            f"{r.wald_floor:,.0f}" if r.wald_floor else "—",
            format_duration(timedelta(seconds=round(r.expected_duration.total_seconds())))
            if r.expected_duration
            else "—",
            f"[yellow]{shown(r.warning)}[/]" if r.warning else shown(r.note or ""),
        )
    console.print(table)


@app.command("check")
def check(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Plan file (YAML or JSON)."),
    rps: float | None = typer.Option(
        None, "--rps", min=0.0, help="Requests per second the policy serves (sizes each stage)."
    ),
    baseline_rate: list[str] = typer.Option(
        [], "--baseline-rate", help="Stable's rate of a boolean metric, e.g. error=0.01."
    ),
    policy: str | None = typer.Option(
        None, "--policy", help="Size against this policy's stable traffic in the store."
    ),
    json_output: bool = JsonOption,
) -> None:
    """Validate a plan file (errors name file:line:column) and size its stages (preflight)."""
    with reporting(json_output):
        if rps is not None and not math.isfinite(rps):
            raise InputError(f"--rps {rps}: give a finite number of requests per second, e.g. 20")
        plan = RolloutPlan.load(file)
        baseline = stable_baseline(state(ctx).store(), policy, plan) if policy else None
        coverage = stable_coverage(state(ctx).store(), policy, plan) if policy else None
        rows = plan.preflight(
            requests_per_second=rps, baseline_rates=_rates(baseline_rate), baseline=baseline
        )
        data = plan_check_report(plan, rows, coverage)

        def human() -> None:
            console.print(f"{shown(file)}: ok")
            for warning in plan.warnings():
                console.print(f"[yellow]warning:[/] {shown(warning)}")
            for c in coverage or ():
                if not c.covered:
                    console.print(f"[yellow]warning:[/] {shown(c.message())}", highlight=False)
            _describe(plan)
            _preflight(rows)

        render(json_output, data, human)


@app.command("show-default")
def show_default(
    as_yaml: bool = typer.Option(False, "--yaml", help="Print it as a plan file to start from."),
    json_output: bool = JsonOption,
) -> None:
    """Show the built-in plan: canary 1% → validation 10% (strict) → soak 50% → promote."""
    with reporting(json_output):
        plan = RolloutPlan.default()
        if as_yaml and not json_output:
            typer.echo(yaml.safe_dump(plan.to_dict(), sort_keys=False), nl=False)
            return
        render(json_output, {"plan_hash": plan.digest, "plan": plan.to_dict()},
               lambda: _describe(plan))  # fmt: skip
