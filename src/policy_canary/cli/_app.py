"""The root ``policy-canary`` app and its global options."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

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
from policy_canary.cli._output import CliState, emit_usage_error, fail_unexpected


class _RootGroup(TyperGroup):
    """The root command: a usage error (exit 2) also answers in JSON when ``--json`` was asked."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["policy_canary.argv"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as error:
            # A usage error (a subcommand's parser refused its arguments) is the one kind with
            # exit code 2; typer's UsageError class itself is private to its vendored click.
            usage = getattr(error, "exit_code", None) == 2 and hasattr(error, "format_message")
            if usage and "--json" in ctx.meta.get("policy_canary.argv", ()):
                emit_usage_error(error.format_message())
            raise


app = typer.Typer(
    name="policy-canary",
    cls=_RootGroup,
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
