"""User errors the database used to catch (exit 3 on PostgreSQL) are exit 1 on both backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Cli = Callable[..., Any]  # the `cli` fixture of tests/cli/conftest.py

LONG = "a" * 1000


@pytest.fixture
def pushed(cli: Cli, tmp_path: Path) -> Cli:
    for n in (1, 2):
        spec = tmp_path / f"v{n}.yaml"
        spec.write_text(f"prompt: version {n}\n")
        assert cli("policy", "push", "sa", str(spec)).code == 0
    return cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("policy", "show", "sa@v2147483648"), "no version 'v2147483648' of policy 'sa'"),
        (("policy", "show", "sa@v99999999999999999999"), "no version"),
        (("policy", "diff", "sa", "v1", "v" + "9" * 5000), "no version"),
        (("policy", "set-stable", "sa", "v2", "--reason", "r", "--actor", LONG), "at most 200"),
        (("rollout", "start", "sa", "--candidate", "v2", "--actor", LONG), "at most 200"),
        (
            ("incident", "list", "--limit", str(10**20)),
            "limit must be a whole number from 1 to 1,000,000",
        ),
        (
            ("alerts", "list", "--limit", str(10**20)),
            "limit must be a whole number from 1 to 1,000,000",
        ),
    ],
)
def test_out_of_range_input_is_a_user_error_on_both_backends(
    pushed: Cli, args: tuple[str, ...], message: str
) -> None:
    result = pushed(*args, "--json")
    assert result.code == 1, result.stderr
    assert message in result.json()["error"]["message"]


def test_a_long_author_is_refused_on_push(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "v1.yaml"
    spec.write_text("prompt: x\n")
    result = cli("policy", "push", "sa", str(spec), "--author", LONG)
    assert result.code == 1
    assert "--author is 1,000 characters long; give at most 200" in result.stderr
    assert "no policies" in cli("policy", "list").stdout
