"""``policy-canary demo``: a short walk-through on a fresh embedded SQLite file.

For now it tours the registry (push, idempotent re-push, diff, stable pointer, history,
export/import); the full rollout story arrives with the controller and the simulator.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer
from rich.rule import Rule
from rich.syntax import Syntax

from policy_canary.cli._output import console, reporting
from policy_canary.registry import Registry
from policy_canary.store import Store

_V1 = {
    "model": "gpt-large",
    "prompt": "You are a careful support agent. Cite the help-centre article you used.",
    "tools": {"allowed": ["search_kb", "create_ticket"], "max_calls": 6},
    "memory": {"window_turns": 12},
}
_V2 = {
    **_V1,
    "prompt": "You are a concise support agent. Cite the article you used.",
    "routing": {"simple_questions": "gpt-small"},
}

DEMO_DB = Path("policy-canary-demo.db")


def demo(
    db: str | None = typer.Option(
        None, "--db", help=f"Database URL (default: a fresh ./{DEMO_DB} file)."
    ),
) -> None:
    """Walk through the registry on a fresh embedded SQLite database."""
    with reporting(json_output=False):
        if db is None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{DEMO_DB}{suffix}").unlink(missing_ok=True)
            db = f"sqlite:///{DEMO_DB}"
        store = Store.open(db)
        try:
            _tour(Registry(store))
        finally:
            store.close()


def _tour(registry: Registry) -> None:
    console.print(Rule("policy-canary demo: the policy registry"))
    v1 = registry.register("support-agent", _V1, message="baseline", author="demo").version
    console.print(f"1. pushed support-agent {v1.label}: id {v1.id}")
    console.print("   the first version becomes [bold]stable[/] (release kind 'bootstrap')")
    again = registry.register("support-agent", dict(reversed(_V1.items())), author="demo")
    console.print(
        f"2. pushed the same content with keys reordered: created={again.created}, "
        f"same id {again.version.short_id} (content-addressed)"
    )
    v2 = registry.register("support-agent", _V2, message="cheaper prompt", author="demo").version
    console.print(f"3. pushed {v2.label}: id {v2.short_id}, parent {v1.short_id}")
    diff = registry.diff("support-agent", "v1", "v2")
    console.print(f"4. diff: {diff.summary}", highlight=False)
    console.print(Syntax(diff.unified, "diff"))
    registry.set_stable("support-agent", "v2", reason="demo: promote by hand", actor="demo")
    console.print("5. moved stable to v2; the release history records who, when and why:")
    for entry in registry.history("support-agent"):
        console.print(f"   #{entry.seq} {entry.kind.value:<9} → {entry.to_id[:12]}  {entry.reason}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v2.json"
        registry.export_to_file("support-agent", "v2", path)
        other = Store.open(f"sqlite:///{tmp}/elsewhere.db")
        imported = Registry(other).import_file(path).version
        other.close()
    console.print(
        f"6. exported v2 and imported it into another store: id {imported.short_id} "
        f"reproduced bit for bit ({imported.id == v2.id})"
    )
    console.print(Rule())
    console.print(
        "next: policy-canary --db sqlite:///policy-canary-demo.db policy history support-agent"
    )
