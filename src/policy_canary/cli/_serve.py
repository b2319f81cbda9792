"""``policy-canary serve``: the HTTP API and OFREP (needs the ``[server]`` extra)."""

from __future__ import annotations

from contextlib import nullcontext

import typer

from policy_canary.cli._options import parse_interval
from policy_canary.cli._output import log_lines, reporting, state
from policy_canary.controller import MAX_PROCESSES
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
    controller: bool = typer.Option(
        False,
        "--controller",
        help="Also run the controller loop in this process (with --workers N: once, in the "
        "supervisor); the lease keeps one controller acting across replicas.",
    ),
    controller_interval: str | None = typer.Option(
        None,
        "--controller-interval",
        help="Time between the controller's ticks, e.g. 5s, 1m (default 5s; needs --controller).",
        show_default=False,
    ),
    controller_holder: str | None = typer.Option(
        None,
        "--controller-holder",
        help="The controller's name in the lock (default host:pid; needs --controller).",
        show_default=False,
    ),
    controller_processes: int | None = typer.Option(
        None,
        "--controller-processes",
        min=1,
        max=MAX_PROCESSES,
        help="Tick the rollouts in this many processes at once, like 'policy-canary "
        "controller --processes' (default 1; needs --controller).",
        show_default=False,
    ),
    no_alerts: bool = typer.Option(
        False,
        "--no-alerts",
        help="The controller delivers no alerts: another process runs the dispatcher "
        "(needs --controller).",
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
        given = [
            name
            for name, value in (
                ("--controller-interval", controller_interval is not None),
                ("--controller-holder", controller_holder is not None),
                ("--controller-processes", controller_processes is not None),
                ("--no-alerts", no_alerts),
            )
            if value
        ]
        if given and not controller:
            raise InputError(
                f"{', '.join(given)} only apply to the in-process controller: add --controller "
                "(or run 'policy-canary controller' with the same options)"
            )
        options = None
        if controller:
            from policy_canary.server import ControllerOptions

            options = ControllerOptions(
                interval=parse_interval(
                    controller_interval or "5s", option="--controller-interval"
                ),
                holder=controller_holder,
                alerts=not no_alerts,
                processes=1 if controller_processes is None else controller_processes,
            )
        with log_lines() if controller else nullcontext():
            run(
                db_url=db or cli.db_url,
                host=host,
                port=port,
                no_auth=no_auth,
                rate_limit=rate_limit,
                open_metrics=open_metrics,
                workers=workers,
                access_log=access_log,
                controller=options,
                settings=cli.settings,
            )
