"""``policy-canary db``: schema migrations."""

from __future__ import annotations

import typer

from policy_canary.cli._output import JsonOption, console, render, reporting, state

app = typer.Typer(help="Manage the database schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(ctx: typer.Context, json_output: bool = JsonOption) -> None:
    """Apply pending schema migrations (the store also does this when it opens)."""
    with reporting(json_output):
        store = state(ctx).store()
        revision = store.upgrade()
        data = {
            "url": store.url,
            "revision": revision,
            "head": store.head_revision(),
            "created": store.created,
        }
        said = f"schema at revision {revision} (head)"
        if store.created:  # first use of a new SQLite path: say so, never create one silently
            said = f"created a new, empty database; {said}"
        render(json_output, data, lambda: console.print(said))
