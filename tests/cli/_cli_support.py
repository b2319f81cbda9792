"""Helpers shared by the CLI tests: run ``policy-canary`` in-process and read the outcome."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from typer.testing import CliRunner

from policy_canary.cli import app

#: The user texts issue 10 reported breaking the CLI (markup, bracketed words, escapes).
ISSUE_TEXTS = [
    "[/]rb",
    "wrap in [INST] ... [/INST]",
    "[ops] paged [link] about [self_harm]",
    "\x1b]0;pwned\x07\x1b[2J",
    "fix :warning: handling \\[x]\\",
]


@dataclass
class Run:
    """The outcome of one CLI invocation."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


Cli = Callable[..., Run]


def make_cli(db_url: str, env: dict[str, str] | None = None) -> Cli:
    """A ``cli(*args)`` that runs the app in-process with ``--db db_url``."""
    runner = CliRunner()

    def invoke(*args: str) -> Run:
        result = runner.invoke(app, ["--db", db_url, *args], env=env, catch_exceptions=False)
        return Run(result.exit_code, result.stdout, result.stderr)

    return invoke
