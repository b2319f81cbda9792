"""``policy-canary policy``: push, inspect, diff, export and import policy versions."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.syntax import Syntax
from rich.table import Table

from policy_canary.canonical import canonical_json
from policy_canary.cli._output import (
    JsonOption,
    console,
    printable,
    render,
    reporting,
    shown,
    state,
)
from policy_canary.registry import Registry, Version, split_ref
from policy_canary.registry._specfile import load_spec_file
from policy_canary.reports import import_report, push_report, set_stable_report, versions_report

app = typer.Typer(help="Register and inspect policy versions.", no_args_is_help=True)


def _registry(ctx: typer.Context) -> Registry:
    cli = state(ctx)
    return Registry(cli.store(), max_spec_bytes=cli.settings.max_spec_bytes)


def _when(version: Version) -> str:
    return version.created_at.strftime("%Y-%m-%d %H:%M:%S")


@app.command("push")
def push(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name, e.g. support-agent."),
    file: Path = typer.Argument(..., help="Spec file (.yaml, .yml or .json).", show_default=False),
    message: str = typer.Option("", "-m", "--message", help="What changed and why."),
    author: str | None = typer.Option(None, "--author", help="Defaults to the OS user."),
    no_bootstrap: bool = typer.Option(
        False, "--no-bootstrap", help="Do not make a new policy's first version stable."
    ),
    json_output: bool = JsonOption,
) -> None:
    """Register FILE as a new version of NAME (identical content returns the existing one)."""
    with reporting(json_output):
        registry = _registry(ctx)
        spec = load_spec_file(file, max_bytes=registry.max_spec_bytes)
        result = registry.register(
            name, spec, message=message, author=author, bootstrap=not no_bootstrap
        )
        v = result.version

        def human() -> None:
            verb = "registered" if result.created else "unchanged: already stored as"
            console.print(f"{verb} [bold]{shown(name)}@{v.label}[/] ({v.id})")
            if result.became_stable:
                why = (
                    f"first version of {name}" if v.number == 1 else f"{name} had no stable version"
                )
                console.print(f"{v.label} is now stable ({shown(why)})")

        render(json_output, push_report(result), human)


@app.command("list")
def list_policies(ctx: typer.Context, json_output: bool = JsonOption) -> None:
    """List policies with their stable and newest versions."""
    with reporting(json_output):
        summaries = _registry(ctx).policies()

        def human() -> None:
            if not summaries:
                console.print(
                    "no policies yet; push one with 'policy-canary policy push NAME FILE'"
                )
                return
            table = Table("policy", "stable", "latest", "created")
            for s in summaries:
                stable = f"{s.stable.label} {s.stable.short_id}" if s.stable else "—"
                table.add_row(
                    shown(s.name),
                    stable,
                    f"{s.latest.label} {s.latest.short_id}",
                    s.created_at.strftime("%Y-%m-%d"),
                )
            console.print(table)

        render(json_output, [s.to_dict() for s in summaries], human)


@app.command("versions")
def versions(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name."),
    json_output: bool = JsonOption,
) -> None:
    """List every version of NAME, oldest first."""
    with reporting(json_output):
        registry = _registry(ctx)
        all_versions = registry.versions(name)
        stable = registry.stable(name)

        def human() -> None:
            table = Table("version", "id", "created", "author", "message", "")
            for v in all_versions:
                mark = "stable" if stable and v.id == stable.id else ""
                table.add_row(
                    v.label, v.short_id, _when(v), shown(v.author), shown(v.message), mark
                )
            console.print(table)

        render(json_output, versions_report(all_versions, stable), human)


@app.command("show")
def show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="NAME[@REF]", help="e.g. support-agent@v3."),
    json_output: bool = JsonOption,
) -> None:
    """Show one version's metadata and spec (default: the stable version)."""
    with reporting(json_output):
        name, version_ref = split_ref(ref)
        v = _registry(ctx).resolve(name, version_ref)

        def human() -> None:
            console.print(f"[bold]{shown(name)}@{v.label}[/]  {v.id}")
            console.print(f"author {shown(v.author)}  created {_when(v)}  {v.size_bytes:,} bytes")
            if v.parent_id:
                console.print(f"parent {v.parent_id[:12]}")
            if v.message:
                console.print(f"message: {shown(v.message)}")
            console.print(
                Syntax(printable(canonical_json(v.spec, indent=2)), "json", word_wrap=True)
            )

        render(json_output, v.to_dict(with_spec=True), human)


@app.command("diff")
def diff(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name."),
    ref_a: str = typer.Argument(..., help="Older version (id, prefix, vN, stable, latest)."),
    ref_b: str = typer.Argument(..., help="Newer version."),
    json_output: bool = JsonOption,
) -> None:
    """Show a unified diff of two versions and which top-level sections changed."""
    with reporting(json_output):
        result = _registry(ctx).diff(name, ref_a, ref_b)

        def human() -> None:
            console.print(shown(result.summary), highlight=False)
            if result.unified:
                console.print(Syntax(printable(result.unified), "diff"))

        render(json_output, result.to_dict(), human)


@app.command("history")
def history(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name."),
    json_output: bool = JsonOption,
) -> None:
    """Show every move of NAME's stable pointer: who, when, why, from → to."""
    with reporting(json_output):
        registry = _registry(ctx)
        entries = registry.history(name)
        labels = {v.id: v.label for v in registry.versions(name)}

        def human() -> None:
            table = Table("#", "when", "kind", "from", "to", "actor", "reason")
            for e in entries:
                table.add_row(
                    str(e.seq),
                    e.at.strftime("%Y-%m-%d %H:%M:%S"),
                    e.kind.value,
                    labels.get(e.from_id, "—") if e.from_id else "—",
                    labels[e.to_id],
                    shown(e.actor),
                    shown(e.reason),
                )
            console.print(table)

        render(json_output, [e.to_dict() for e in entries], human)


@app.command("set-stable")
def set_stable(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Policy name."),
    ref: str = typer.Argument(..., help="Version to make stable."),
    reason: str = typer.Option(..., "--reason", help="Why (recorded in the history)."),
    actor: str | None = typer.Option(None, "--actor", help="Defaults to the OS user."),
    json_output: bool = JsonOption,
) -> None:
    """Move NAME's stable pointer by hand (recorded as kind 'manual')."""
    with reporting(json_output):
        registry = _registry(ctx)
        entry = registry.set_stable(name, ref, reason=reason, actor=actor)
        target = registry.resolve(name, ref)

        def human() -> None:
            if entry is None:
                console.print(f"{shown(name)}@{target.label} already is stable; nothing changed")
            else:
                console.print(f"{shown(name)}: stable is now {target.label} ({target.short_id})")

        render(json_output, set_stable_report(entry), human)


@app.command("export")
def export(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="NAME@REF", help="e.g. support-agent@v3."),
    output: Path = typer.Option(..., "-o", "--output", help="File to write."),
    json_output: bool = JsonOption,
) -> None:
    """Write a version (spec, metadata, digest) to a file another store can import."""
    with reporting(json_output):
        name, version_ref = split_ref(ref)
        v = _registry(ctx).export_to_file(name, version_ref, output)
        data = {"path": str(output), "version": v.to_dict()}
        render(
            json_output,
            data,
            lambda: console.print(f"exported {shown(name)}@{v.label} to {shown(output)}"),
        )


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="A file written by 'policy export'."),
    json_output: bool = JsonOption,
) -> None:
    """Import an exported version; its id is verified to reproduce bit for bit."""
    with reporting(json_output):
        result = _registry(ctx).import_file(file)
        v = result.version
        verb = "imported" if result.created else "already present:"

        def human() -> None:
            console.print(f"{verb} {shown(v.policy)}@{v.label} ({v.id}); digest verified")

        render(json_output, import_report(result), human)
