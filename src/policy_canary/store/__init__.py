"""The store: the only layer that talks to a database (SQLite default, PostgreSQL to scale)."""

from __future__ import annotations

from ._engine import DEFAULT_DB_URL, Store, normalize_url, resolve_db_url
from ._schema import metadata

__all__ = ["DEFAULT_DB_URL", "Store", "metadata", "normalize_url", "resolve_db_url"]
