"""The store: migrations, backends, append-only tables, clear errors when unreachable."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from policy_canary.errors import StoreUnavailableError
from policy_canary.registry import Registry
from policy_canary.store import Store, normalize_url, resolve_db_url


def test_open_applies_every_migration(store: Store) -> None:
    assert store.current_revision() == store.head_revision()
    # Opening again is a no-op and keeps the data.
    Registry(store).register("agent", {"prompt": "hi"})
    again = Store.open(store.url)
    assert Registry(again).versions("agent")[0].number == 1
    again.close()


def test_schema_matches_the_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from policy_canary.store import metadata

    with store.read() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


@pytest.mark.parametrize("table", ["versions", "release_history", "audit"])
def test_database_refuses_update_and_delete_of_append_only_rows(store: Store, table: str) -> None:
    Registry(store).register("agent", {"prompt": "v1"})
    for statement in (f"UPDATE {table} SET policy = policy", f"DELETE FROM {table}"):
        if table == "audit":
            statement = statement.replace("policy = policy", "actor = 'mallory'")
        with pytest.raises(DBAPIError, match="immutable"), store.begin() as conn:
            conn.execute(text(statement))
    with store.read() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() >= 1


def test_sqlite_uses_wal_and_foreign_keys(sqlite_url: str) -> None:
    store = Store.open(sqlite_url)
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    store.close()


def test_unreachable_postgres_is_a_clear_store_unavailable_error() -> None:
    with pytest.raises(StoreUnavailableError, match=r"unavailable.*check that the database"):
        Store.open("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(StoreUnavailableError, match="not a policy-canary database"):
        Store.open(f"sqlite:///{path}")
    assert path.read_bytes() == b"this is not sqlite " * 100


def test_missing_folder_and_unknown_scheme_are_explained(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        Store.open(f"sqlite:///{tmp_path}/missing/dir/x.db")
    with pytest.raises(StoreUnavailableError, match="SQLite or PostgreSQL"):
        Store.open("mysql://root@localhost/x")
    with pytest.raises(StoreUnavailableError, match="in-memory"):
        Store.open("sqlite://")


def test_url_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLICY_CANARY_DB", raising=False)
    assert resolve_db_url() == "sqlite:///policy-canary.db"
    monkeypatch.setenv("POLICY_CANARY_DB", "postgresql://u@h/db")
    assert resolve_db_url() == "postgresql+psycopg://u@h/db"
    assert resolve_db_url("x.db") == "sqlite:///x.db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"


def test_routing_epoch_counts_changes(store: Store) -> None:
    with store.read() as conn:
        assert store.read_epoch(conn) == 0
    with store.begin() as conn:
        assert store.bump_epoch(conn) == 1
        assert store.bump_epoch(conn) == 2
    with store.read() as conn:
        assert store.read_epoch(conn) == 2


def test_a_database_without_the_schema_says_to_migrate(db_url: str) -> None:
    import sqlite3

    from policy_canary.errors import StoreError

    if db_url.startswith("sqlite:///"):  # an existing but empty database file
        sqlite3.connect(db_url.removeprefix("sqlite:///")).close()
    bare = Store.open(db_url, migrate=False)
    with pytest.raises(StoreError, match="policy-canary db upgrade"):
        Registry(bare).policies()
    bare.close()


def test_database_refuses_a_second_active_rollout_of_a_policy(store: Store) -> None:
    from datetime import UTC, datetime

    from sqlalchemy.exc import IntegrityError

    from policy_canary.store.schema import rollouts

    registry = Registry(store)
    v1 = registry.register("agent", {"prompt": "a"}).version
    v2 = registry.register("agent", {"prompt": "b"}).version
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def row(rollout_id: str, state: str) -> dict[str, object]:
        return {
            "id": rollout_id, "policy": "agent", "baseline_digest": v1.id,
            "candidate_digest": v2.id, "state": state, "stage_index": 0, "traffic_bp": 100,
            "salt": "ab" * 16, "plan": "{}", "plan_hash": "0" * 64, "revision": 1,
            "actor": "t", "reason": "", "created_at": now, "stage_started_at": now,
        }  # fmt: skip

    with store.begin() as conn:
        conn.execute(rollouts.insert().values(row("r1", "running")))
        conn.execute(rollouts.insert().values(row("r0", "rolled_back")))  # ended: allowed
    with pytest.raises(IntegrityError), store.begin() as conn:
        conn.execute(rollouts.insert().values(row("r2", "paused")))
    with store.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM rollouts")).scalar_one() == 2


def test_schema_head_constant_names_the_newest_migration(store: Store) -> None:
    # Opening a store at SCHEMA_HEAD skips Alembic; a new migration must move the constant.
    from policy_canary.store._engine import SCHEMA_HEAD

    assert store.head_revision() == SCHEMA_HEAD
    assert store.current_revision() == SCHEMA_HEAD


def test_postgres_connections_give_up_on_a_silent_network_unless_the_url_says_otherwise(
    pg_url: str,
) -> None:
    """Given no settings, tcp_user_timeout and connect_timeout are set; the URL's win."""

    def parameters(url: str) -> dict[str, str]:
        store = Store.open(url)
        try:
            with store.engine.connect() as conn:
                params: dict[str, str] = conn.connection.dbapi_connection.info.get_parameters()
                return params
        finally:
            store.close()

    defaults = parameters(pg_url)
    assert (defaults["tcp_user_timeout"], defaults["connect_timeout"]) == ("10000", "5")
    chosen = parameters(f"{pg_url}&tcp_user_timeout=1500&connect_timeout=2")
    assert (chosen["tcp_user_timeout"], chosen["connect_timeout"]) == ("1500", "2")
