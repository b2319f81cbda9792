"""Shared fixtures: a fresh store per test on SQLite and on PostgreSQL.

PostgreSQL runs at 127.0.0.1:5432 (database ``test``, trust auth) unless
``POLICY_CANARY_TEST_PG`` says otherwise. Each test gets its own schema, dropped afterwards.
With ``CI=true`` an unreachable PostgreSQL fails the run; locally its tests are skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from policy_canary.store import Store
from policy_canary.testing import ManualClock

PG_URL = os.environ.get(
    "POLICY_CANARY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pg_reachable() -> str | None:
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except OperationalError as exc:
        return str(exc.orig).strip().splitlines()[0]
    return None


_PG_PROBLEM = _pg_reachable()


def pytest_sessionstart(session: pytest.Session) -> None:
    if IN_CI and _PG_PROBLEM is not None:
        pytest.exit(
            f"CI=true but PostgreSQL at {PG_URL} is unreachable ({_PG_PROBLEM}); "
            "the store tests must run on both backends",
            returncode=1,
        )


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    if _PG_PROBLEM is not None:
        pytest.skip(f"PostgreSQL unreachable: {_PG_PROBLEM}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """A URL for an empty database, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A freshly migrated store, once per backend."""
    opened = Store.open(db_url)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """A URL for an empty SQLite file (for tests that only need one backend)."""
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock starting at 2026-01-01T00:00:00Z."""
    return ManualClock()
