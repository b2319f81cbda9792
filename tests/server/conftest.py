"""Server fixtures: the app over a fresh store (both backends), tokens of every role."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _api_support import Api, make_api

from policy_canary.clock import ManualClock
from policy_canary.store import Store


@pytest.fixture
def api(store: Store, clock: ManualClock) -> Iterator[Api]:
    """The app over this test's store (SQLite and PostgreSQL), one token per role."""
    yield from make_api(store, clock)


@pytest.fixture
def sqlite_api(sqlite_url: str, clock: ManualClock) -> Iterator[Api]:
    """The app over an SQLite store only (for the large matrix)."""
    opened = Store.open(sqlite_url)
    yield from make_api(opened, clock)
    opened.close()
