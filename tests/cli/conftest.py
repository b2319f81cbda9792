"""CLI fixtures: run ``policy-canary`` in-process against a fresh store."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from typer.testing import CliRunner

from policy_canary.cli import app


@dataclass
class Run:
    """The outcome of one CLI invocation."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


Cli = Callable[..., Run]


@pytest.fixture
def cli(db_url: str) -> Cli:
    """Invoke the CLI with ``--db`` pointing at this test's store (both backends)."""
    runner = CliRunner()

    def invoke(*args: str) -> Run:
        result = runner.invoke(app, ["--db", db_url, *args], catch_exceptions=False)
        return Run(result.exit_code, result.stdout, result.stderr)

    return invoke
