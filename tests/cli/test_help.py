"""Every command and group of the CLI has help text (``policy-canary X --help`` is useful)."""

from __future__ import annotations

from policy_canary.cli import app


def test_every_command_has_help() -> None:
    import typer.main

    group = typer.main.get_command(app)

    def walk(command: object, path: list[str]) -> list[tuple[str, object]]:
        found = [(" ".join(path), command)]
        for name, sub in getattr(command, "commands", {}).items():
            found += walk(sub, [*path, name])
        return found

    for name, command in walk(group, []):
        assert getattr(command, "help", None), f"'{name}' has no help text"
