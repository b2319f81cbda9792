"""The store: the only layer that talks to a database (SQLite default, PostgreSQL to scale)."""

from __future__ import annotations

from policy_canary.store._engine import (
    DEFAULT_DB_URL,
    Store,
    normalize_url,
    resolve_db_url,
    safe_url,
)
from policy_canary.store._visibility import Horizon, claim_floors, visible_through
from policy_canary.store.schema import metadata

__all__ = [
    "DEFAULT_DB_URL",
    "Horizon",
    "Store",
    "claim_floors",
    "metadata",
    "normalize_url",
    "resolve_db_url",
    "safe_url",
    "visible_through",
]
