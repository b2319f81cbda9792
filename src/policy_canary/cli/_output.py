"""How the CLI talks: rich for people, ``--json`` for programs, and one error→exit-code map."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import typer
from rich.console import Console

from policy_canary.errors import CanaryError, ErrorCode
from policy_canary.settings import Settings
from policy_canary.store import Store

#: The one place error codes become exit codes (0 ok, 1 user error, 2 usage, 3 store down).
EXIT_CODES: dict[ErrorCode, int] = {
    ErrorCode.STORE_UNAVAILABLE: 3,
    ErrorCode.STORE_ERROR: 3,
}
EXIT_USER_ERROR = 1

console = Console()
err_console = Console(stderr=True)


def exit_code_for(error: CanaryError) -> int:
    """The process exit code for an error."""
    return EXIT_CODES.get(error.code, EXIT_USER_ERROR)


@dataclass
class CliState:
    """What the root callback parsed: where the store is, and the settings."""

    settings: Settings
    db_url: str | None
    _store: Store | None = field(default=None, repr=False)

    def store(self) -> Store:
        """Open the store on first use (commands that need none never touch the database)."""
        if self._store is None:
            self._store = Store.open(self.db_url)
        return self._store

    def close(self) -> None:
        """Release the store's connections."""
        if self._store is not None:
            self._store.close()
            self._store = None


def state(ctx: typer.Context) -> CliState:
    """The :class:`CliState` of the running command."""
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState), "the root callback sets ctx.obj"
    return obj


@contextmanager
def reporting(json_output: bool) -> Iterator[None]:
    """Turn a :class:`CanaryError` into one clear stderr line and the mapped exit code."""
    try:
        yield
    except CanaryError as error:
        fail(error, json_output=json_output)


def fail(error: CanaryError, *, json_output: bool) -> NoReturn:
    """Report ``error`` and exit with its code."""
    if json_output:
        emit_json({"error": {"code": error.code.value, "message": error.message}})
    err_console.print(f"[bold red]error:[/] {error.message}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code_for(error))


def emit_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (the stable machine interface)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str))
    sys.stdout.write("\n")


def render(json_output: bool, data: Any, human: Callable[[], None]) -> None:
    """Emit ``data`` as JSON, or call ``human`` to print for people."""
    if json_output:
        emit_json(data)
    else:
        human()


JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
