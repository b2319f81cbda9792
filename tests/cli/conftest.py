"""CLI fixtures: run ``policy-canary`` in-process against a fresh store."""

from __future__ import annotations

import pytest
from _cli_support import Cli, make_cli


@pytest.fixture
def cli(db_url: str) -> Cli:
    """Invoke the CLI with ``--db`` pointing at this test's store (both backends)."""
    return make_cli(db_url)
