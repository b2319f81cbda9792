"""``policy-canary serve``: the HTTP API and OFREP (needs the ``[server]`` extra)."""

from __future__ import annotations

import typer

from policy_canary.cli._output import reporting, state
from policy_canary.errors import InputError


def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(8600, "--port", min=1, max=65535, help="Port to bind."),
    db: str | None = typer.Option(
        None,
        "--db",
        help="Database URL or SQLite path (overrides the global --db).",
        show_default=False,
    ),
    rate_limit: float | None = typer.Option(
        None,
        "--rate-limit",
        min=0.001,
        help="Requests per second per token; more get 429 with Retry-After (default: none).",
    ),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Serve without tokens (only on a loopback address)."
    ),
    open_metrics: bool = typer.Option(
        False, "--open-metrics", help="Serve /metrics without a token (e.g. to a scraper)."
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        help="Server processes on the one port, each with its own store connections and "
        "routing watcher (use up to one per core).",
    ),
    access_log: bool = typer.Option(
        False,
        "--access-log/--no-access-log",
        help="Log one line per request (off by default: it costs a fifth of OFREP throughput).",
    ),
) -> None:
    """Serve the HTTP API (/api/v1) and OFREP (/ofrep/v1) until interrupted."""
    with reporting(json_output=False):
        try:
            from policy_canary.server import serve as run
        except ImportError as exc:
            raise InputError(
                f"the server needs the [server] extra ({exc.name} is missing): "
                "pip install 'policy-canary[server]'"
            ) from None
        cli = state(ctx)
        run(
            db_url=db or cli.db_url,
            host=host,
            port=port,
            no_auth=no_auth,
            rate_limit=rate_limit,
            open_metrics=open_metrics,
            workers=workers,
            access_log=access_log,
            settings=cli.settings,
        )
