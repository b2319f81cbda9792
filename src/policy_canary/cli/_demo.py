"""``policy-canary demo``: a complete rollout story on embedded SQLite, in under a minute.

Everything runs through the real SDK, store, monitors, controller and alert dispatcher; a
manual clock makes hours of traffic take seconds (``--realtime`` uses the wall clock).
"""

from __future__ import annotations

import secrets
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from policy_canary.alerts import AlertSink, Dispatcher, LogSink, WebhookSink
from policy_canary.cli._output import JsonOption, console, emit_json, reporting, shown
from policy_canary.clock import Clock, ManualClock, SystemClock
from policy_canary.errors import ConflictError, InputError
from policy_canary.monitoring import VerdictStatus
from policy_canary.registry import Registry
from policy_canary.serving import Canary
from policy_canary.simulate import POLICY, DemoReport, DemoScenario, Progress, WebhookReceiver
from policy_canary.store import Store
from policy_canary.tokens import Tokens

DEMO_DB = Path("policy-canary-demo.db")
ALERT_LOG = Path("policy-canary-demo-alerts.jsonl")
_STATUS_STYLE = {
    VerdictStatus.PASS: "green",
    VerdictStatus.BREACH: "bold red",
    VerdictStatus.INSUFFICIENT_DATA: "yellow",
}


def demo(
    db: str | None = typer.Option(
        None, "--db", help=f"Database URL (default: a fresh ./{DEMO_DB} file)."
    ),
    seed: int = typer.Option(7, "--seed", help="Seed of the simulated traffic."),
    rps: float = typer.Option(10.0, "--rps", min=0.1, help="Simulated requests per second."),
    realtime: bool = typer.Option(
        False, "--realtime", help="Run on the wall clock (the default plan then takes hours)."
    ),
    webhook: bool = typer.Option(
        False, "--webhook", help="Also deliver alerts to a local signed-webhook receiver."
    ),
    serve: bool = typer.Option(
        False,
        "--serve",
        help="Then serve the dashboard on 127.0.0.1 (prints a login token).",
    ),
    port: int = typer.Option(8600, "--port", min=1, max=65535, help="Port for --serve."),
    json_output: bool = JsonOption,
) -> None:
    """Roll out a good change (promoted) and a bad one (rolled back automatically)."""
    if serve:
        _check_server_extra()
    with reporting(json_output):
        url = _fresh_db(db)
        clock: Clock = SystemClock() if realtime else ManualClock(_morning())
        with ExitStack() as stack:
            canary = Canary(Store.open(url), clock=clock, background=realtime, owns_store=True)
            stack.callback(canary.close)
            sinks: list[AlertSink] = [LogSink(stream=stack.enter_context(ALERT_LOG.open("w")))]
            receiver = None
            if webhook:
                receiver = stack.enter_context(WebhookReceiver(secrets.token_hex(16)))
                sinks.append(WebhookSink(receiver.url, secret=receiver.secret, clock=clock))
            dispatcher = Dispatcher(canary.store, sinks, clock=clock)
            view = _LiveView(enabled=not json_output)
            scenario = DemoScenario(
                canary, clock, dispatcher, seed=seed, base_rps=rps, on_progress=view.update
            )
            if not json_output:
                pace = "in real time (hours)" if realtime else "on a manual clock"
                console.print(
                    f"v1 of {POLICY} is stable; serving {rps:g} requests/s {pace}, first 30 "
                    "minutes of stable-only traffic for the baseline snapshot…"
                )
            with view:
                report = scenario.run()
            received = len(receiver.received.alerts) if receiver else None
        if json_output:
            emit_json({**report.to_dict(), "db": url, "webhook_received": received})
        else:
            _summary(report, url, received)
        if serve:
            _serve_dashboard(url, port)


def _check_server_extra() -> None:
    """Refuse ``--serve`` before the story runs when the server cannot start afterwards."""
    with reporting(json_output=False):
        try:
            import policy_canary.server  # noqa: F401 (the optional [server] extra)
        except ImportError as exc:
            raise InputError(
                f"demo --serve needs the [server] extra ({exc.name} is missing): "
                "pip install 'policy-canary[server]'"
            ) from None


def _serve_dashboard(url: str, port: int) -> None:
    """Keep serving the demo's store: the dashboard and API on loopback, with a fresh token."""
    from policy_canary.server import serve as run

    store = Store.open(url)
    try:
        name = f"demo-operator-{secrets.token_hex(3)}"
        created = Tokens(store).create(name, role="operator", actor="demo")
    finally:
        store.close()
    console.print(
        f"\n[bold]dashboard[/]: http://127.0.0.1:{port}/  log in with this operator token "
        f"(shown once):\n  {created.secret}\nCtrl-C stops the server.",
        highlight=False,
    )
    run(db_url=url, host="127.0.0.1", port=port, echo=lambda line: console.print(line))


def _morning() -> datetime:
    today = datetime.now(UTC).date()
    return datetime(today.year, today.month, today.day, 8, 0, tzinfo=UTC)


def _fresh_db(db: str | None) -> str:
    if db is None:
        for suffix in ("", "-wal", "-shm", "-writers"):
            Path(f"{DEMO_DB}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{DEMO_DB}"
    store = Store.open(db)
    try:
        if any(p.name == POLICY for p in Registry(store).policies()):
            raise ConflictError(
                f"the database at --db already has policy {POLICY!r} (from an earlier demo?); "
                "the demo tells its story on a fresh database: omit --db or point it elsewhere"
            )
    finally:
        store.close()
    return db


class _LiveView:
    """Live terminal progress: stage and share, requests per arm, each guardrail's verdict."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.live = Live(console=console, refresh_per_second=8, transient=False)
        self.last = 0.0

    def __enter__(self) -> _LiveView:
        if self.enabled:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.live.__exit__(None, None, None)

    def update(self, progress: Progress) -> None:
        now = time.monotonic()
        done = not progress.status.rollout.state.is_active()
        if not self.enabled or (now - self.last < 0.1 and not done):
            return
        self.last = now
        self.live.update(_render(progress), refresh=done)


def _render(p: Progress) -> Panel:
    status = p.status
    rollout = status.rollout
    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"[bold]{p.chapter}[/]",
        f"simulated {p.sim_time:%H:%M} (+{_hours(p.sim_elapsed)})",
    )
    head.add_row(
        f"stage {rollout.stage_index + 1}/{status.stages} [bold]{status.stage.name}[/] at "
        f"{rollout.traffic_bp / 100:g}%  state [bold]{rollout.state.value}[/]",
        f"requests  stable {p.requests.get('stable', 0):,}  "
        f"candidate {p.requests.get('candidate', 0):,}",
    )
    verdicts = Table("guardrail", "verdict", "non-inferior", "why", expand=True)
    for v in status.verdicts:
        verdicts.add_row(
            v.guardrail,
            f"[{_STATUS_STYLE[v.status]}]{v.status.value}[/]",
            "yes" if v.non_inferior else "—",
            v.reason,
            style=None,
        )
    return Panel(Group(head, verdicts), title=f"policy-canary demo · {POLICY}")


def _hours(delta: object) -> str:
    seconds = int(getattr(delta, "total_seconds", lambda: 0)())
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _summary(report: DemoReport, url: str, received: int | None) -> None:
    table = Table("rollout", "outcome", "stage", "simulated", "stable", "candidate", "incident")
    for chapter in report.chapters:
        style = "green" if chapter.state == "promoted" else "red"
        table.add_row(
            chapter.title,
            f"[{style}]{chapter.state}[/]",
            chapter.stage,
            _hours(chapter.sim_duration),
            f"{chapter.requests['stable']:,}",
            f"{chapter.requests['candidate']:,}",
            chapter.incident_id or "—",
        )
    console.print(table)
    for chapter in report.chapters:
        console.print(f"[bold]{chapter.candidate}[/]: {chapter.reason}", highlight=False)
    delivered = f"{report.alerts_delivered} alert deliveries (log sink: {ALERT_LOG}"
    delivered += f", webhook receiver: {received} signed)" if received is not None else ")"
    console.print(delivered)
    console.print(
        f"{report.requests:,} simulated requests through the SDK in {report.wall_seconds:.1f} s"
    )
    db = f"--db {shown(url)} " if url != f"sqlite:///{DEMO_DB}" else f"--db {DEMO_DB} "
    incident = next((c.incident_id for c in report.chapters if c.incident_id), None)
    console.print("\nnext:")
    if incident:
        console.print(f"  policy-canary {db}incident show {incident}", highlight=False)
    console.print(f"  policy-canary {db}policy history {POLICY}", highlight=False)
    console.print(f"  policy-canary {db}rollout history {POLICY}", highlight=False)
    console.print(f"  policy-canary {db}alerts list", highlight=False)
