"""``policy-canary token``: create, list and revoke the HTTP API's tokens."""

from __future__ import annotations

import typer
from rich.table import Table

from policy_canary.cli._output import JsonOption, console, render, reporting, state
from policy_canary.errors import InputError
from policy_canary.plan import parse_duration
from policy_canary.tokens import Tokens

app = typer.Typer(help="Manage the HTTP API's tokens.", no_args_is_help=True)


def _tokens(ctx: typer.Context) -> Tokens:
    return Tokens(state(ctx).store())


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Token name (the audit log's actor), e.g. ci-deploy."),
    role: str = typer.Option(..., "--role", help="viewer, agent, operator or admin."),
    policy: list[str] = typer.Option(
        [], "--policy", help="Limit evaluating, recording and acting to this policy (repeat)."
    ),
    expires: str | None = typer.Option(None, "--expires", help="Lifetime, e.g. 30d or 12h."),
    actor: str | None = typer.Option(None, "--actor", help="Who (defaults to the OS user)."),
    json_output: bool = JsonOption,
) -> None:
    """Create a token and print its secret (shown this once; only a hash is stored)."""
    with reporting(json_output):
        lifetime = None
        if expires is not None:
            try:
                lifetime = parse_duration(expires)
            except ValueError as exc:
                raise InputError(f"--expires: {exc}") from None
        created = _tokens(ctx).create(
            name, role=role, policies=policy, expires=lifetime, actor=actor
        )
        t = created.token

        def human() -> None:
            limits = f" for {', '.join(t.policies)}" if t.policies else ""
            until = f", expires {t.expires_at:%Y-%m-%d %H:%M} UTC" if t.expires_at else ""
            console.print(f"created token [bold]{t.name}[/] ({t.role.value}{limits}{until})")
            console.print("secret (shown once, store it now):", highlight=False)
            typer.echo(created.secret)

        render(json_output, created.to_dict(), human)


@app.command("list")
def list_command(ctx: typer.Context, json_output: bool = JsonOption) -> None:
    """List tokens with their role, limits and state (never their secrets)."""
    with reporting(json_output):
        tokens = _tokens(ctx)
        found = tokens.list()
        now = tokens.clock.now()

        def human() -> None:
            if not found:
                console.print("no tokens; create one with 'policy-canary token create NAME'")
                return
            table = Table("name", "role", "policies", "state", "created", "expires")
            for t in found:
                table.add_row(
                    t.name,
                    t.role.value,
                    ", ".join(t.policies) or "all",
                    t.state(now),
                    f"{t.created_at:%Y-%m-%d} by {t.created_by}",
                    f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "never",
                )
            console.print(table)

        render(json_output, [t.to_dict(now=now) for t in found], human)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Token name."),
    reason: str = typer.Option("", "--reason", help="Why (recorded in the audit trail)."),
    actor: str | None = typer.Option(None, "--actor", help="Who (defaults to the OS user)."),
    json_output: bool = JsonOption,
) -> None:
    """Revoke a token: requests with it are refused from now on."""
    with reporting(json_output):
        tokens = _tokens(ctx)
        t = tokens.revoke(name, actor=actor, reason=reason)
        render(
            json_output,
            t.to_dict(now=tokens.clock.now()),
            lambda: console.print(f"token {t.name} is revoked", highlight=False),
        )
