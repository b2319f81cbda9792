"""The root ``policy-canary`` app and its global options."""

from __future__ import annotations

import sys

import typer

from policy_canary import __version__
from policy_canary.cli import (
    _alerts,
    _controller,
    _db,
    _demo,
    _incident,
    _plan,
    _policy,
    _rollout,
    _serve,
    _token,
)
from policy_canary.cli._output import CliState, fail_unexpected

app = typer.Typer(
    name="policy-canary",
    help="Ship LLM agent policy changes like production releases.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(_policy.app, name="policy")
app.add_typer(_db.app, name="db")
app.add_typer(_alerts.app, name="alerts")
app.add_typer(_rollout.app, name="rollout")
app.add_typer(_incident.app, name="incident")
app.add_typer(_plan.app, name="plan")
app.add_typer(_token.app, name="token")
app.command("controller")(_controller.controller)
app.command("rollback")(_rollout.rollback_command)
app.command("demo")(_demo.demo)
app.command("serve")(_serve.serve)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"policy-canary {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    db: str | None = typer.Option(
        None,
        "--db",
        help="Database URL or SQLite path (default: $POLICY_CANARY_DB, else ./policy-canary.db).",
        show_default=False,
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Ship LLM agent policy changes like production releases."""
    # The environment is read when a command needs it, inside the command's error reporting,
    # so a bad POLICY_CANARY_* value is reported as JSON under --json like any other error.
    cli_state = CliState(db_option=db)
    ctx.obj = cli_state
    ctx.call_on_close(cli_state.close)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except Exception as error:  # the last resort: no traceback reaches a user
        fail_unexpected(error, json_output="--json" in sys.argv[1:])
